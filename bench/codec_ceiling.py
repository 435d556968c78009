"""How much action following a codec leaves for the world model that writes in its tokens.

A world model's frames pass through its codec's decoder, so the real clips' own reconstructions are the
most any model on that codec can show the IDMs. For each codec: encode + decode the held-out test clips
(frame by frame, the evaluation's windows and seed), score the reconstructions like generated videos
(`rlir evaluate --generated`), and write the rows next to the real clips' with bootstrap intervals.

    python bench/codec_ceiling.py --data runs/demo/data --idm runs/demo/idm/checkpoints/best \
        --judge runs/demo/judge/checkpoints/best --codec grid6x8=runs/demo/ar/codec/checkpoints/best \
        --codec grid3x4=runs/g12/codec/checkpoints/best --clips 96 --out bench/results/codec_ceiling.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.data.store import Episode, EpisodeStore  # noqa: E402
from rlir.eval.evaluate import evaluate  # noqa: E402
from rlir.training.tokenizer_trainer import load_tokenizer  # noqa: E402

KEYS = ("idm_f1_macro_shown", "judge_f1_macro_shown", "psnr", "brightness")


def reconstruct(codec_path: str, data: str, out: str, clips: int, frames: int) -> dict:
    codec = load_tokenizer(codec_path).eval()
    src = EpisodeStore(data)
    windows = fixed_clips(src, frames, split="test", max_clips=clips)
    meta = {k: v for k, v in src.metadata.items() if k in ("format", "resolution", "null_groups", "source")}
    dst = EpisodeStore.create(out, metadata=meta)
    t = time.time()
    for b0 in range(0, len(windows), 8):
        win = windows[b0:b0 + 8]
        c = load_clips(src, win, frames)
        real = torch.from_numpy(c["frames"])
        fake = codec.decode(codec.encode(real)).numpy()
        for k, (i, s) in enumerate(win):
            dst.add(f"{i}-{s:05d}", Episode(fake[k], c["actions"][k], c["camera_deg"][k]), split="test",
                    source={"clip": [i, s], "codec": codec_path})
    return {"tokens_per_frame": codec.cfg.tokens_per_frame, "grid": list(codec.cfg.grid),
            "codebook_size": codec.cfg.codebook_size, "seconds": time.time() - t}


def row(m: dict) -> dict:
    """The headline figures of an evaluation's metrics.json, with their intervals."""
    out = {}
    for name, scorer in (("idm", "reward_idm"), ("judge", "judge_idm")):
        for k in ("f1_macro_shown", "f1_macro", "camera_yaw_bin_error"):
            out[f"{name}_{k}"] = {"mean": m[scorer]["metrics"][k], "ci95": m[scorer]["ci95"][k]}
    for k in ("psnr", "ssim"):
        out[k] = {"mean": m[k]["mean"], "ci95": m[k]["ci95"]}
    out["brightness"] = m["brightness"]["generated"]["mean"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--idm", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--codec", action="append", required=True, help="NAME=checkpoint (repeatable)")
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = {"command": " ".join(sys.argv), "seed": a.seed, "clips": a.clips, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ev = dict(idm=a.idm, judge=a.judge, frames=a.frames, seed=a.seed, max_clips=a.clips, progress=False)
        res["rows"]["real clips"] = row(evaluate(a.data, f"{tmp}/real", generated=a.data, role="real", **ev))
        for spec in a.codec:
            name, path = spec.split("=", 1)
            info = reconstruct(path, a.data, f"{tmp}/{name}_store", a.clips, a.frames)
            m = evaluate(a.data, f"{tmp}/{name}", generated=f"{tmp}/{name}_store", label=name, **ev)
            res["rows"][name] = {"checkpoint": path, **info, **row(m)}
            print(name, json.dumps({k: res["rows"][name].get(k) for k in ("tokens_per_frame",) + KEYS}), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["rows"]["real clips"]))


if __name__ == "__main__":
    main()

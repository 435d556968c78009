"""How well generated videos follow their actions, by an IDM, next to its bounds (Contract 3's protocol).

Rows, all on the same held-out clips (16 frames, actions 0..14):
  real clips          the IDM on the real video: the upper bound of post-training
  frozen frame 0      frame 0 repeated: what a model that ignores the actions would score (the floor)
  <generated dir>     each `rlir generate` output given
with bootstrap 95% intervals over clips, written as JSON. Each row also carries the PSNR of frames
1..15 against the real ones, and every generated row after the first its PSNR difference to the
first, paired clip by clip (the same clips and actions, so the interval is much tighter).

    python bench/action_following.py --idm CKPT --data DIR --generated GEN [GEN ...] [--max-clips 160]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.eval.action_metrics import action_metrics  # noqa: E402
from rlir.eval.generate import bootstrap_ci, psnr_per_clip  # noqa: E402
from rlir.training.idm_trainer import load_idm, predict  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--idm", required=True)
    p.add_argument("--data", required=True, help="the real episode store the clips came from")
    p.add_argument("--generated", nargs="*", default=[], help="stores written by `rlir generate` on that data")
    p.add_argument("--split", default="test")
    p.add_argument("--max-clips", type=int, default=160)
    p.add_argument("--out", default="bench/results/action_following.json")
    a = p.parse_args()
    idm, _ = load_idm(a.idm)
    real = EpisodeStore(a.data)
    windows = fixed_clips(real, 16, split=a.split, max_clips=a.max_clips)
    clips = load_clips(real, windows, 16)
    true = clips["actions"][:, :15].astype(np.int64)
    excluded = tuple(real.metadata.get("null_groups", {}))
    rows = {"real clips": clips["frames"], "frozen frame 0": np.repeat(clips["frames"][:, :1], 16, axis=1)}
    for g in a.generated:
        gen = EpisodeStore(g)
        rows[g] = np.stack([gen.load(f"{i}-{s:05d}").frames for i, s in windows])
    report = {"bench": "action_following", "command": " ".join(sys.argv), "idm": a.idm, "data": a.data,
              "split": a.split, "clips": len(windows), "rows": {}}
    print(f"{'video':40s} {'F1 macro (shown)':>24s} {'pitch err':>10s} {'yaw err':>10s} {'PSNR 1..15':>11s}")
    real_t, first = torch.from_numpy(clips["frames"][:, 1:]), None
    for name, frames in rows.items():
        m = action_metrics(predict(idm, frames), true, n_boot=1000, exclude_groups=excluded)
        report["rows"][name] = {"metrics": m["metrics"], "ci95": m["ci95"], "per_group": m["per_group"]}
        h, ci = m["metrics"], m["ci95"]
        f1 = h.get("f1_macro_shown", h["f1_macro"])
        lo, hi = ci.get("f1_macro_shown", ci["f1_macro"])
        psnr = np.array(psnr_per_clip(torch.from_numpy(frames[:, 1:]), real_t)) if name != "real clips" else None
        if psnr is not None:
            report["rows"][name]["psnr_frames_1_15"] = {"mean": float(psnr.mean()), "ci95": bootstrap_ci(psnr)}
        if name in a.generated:
            if first is None:
                first = (name, psnr)
            else:
                diff = psnr - first[1]
                report["rows"][name]["psnr_minus_first_generated"] = {
                    "baseline": first[0], "mean": float(diff.mean()), "ci95": bootstrap_ci(diff),
                    "clips_better": int((diff > 0).sum())}
        print(f"{name:40s} {f1:8.3f} [{lo:.3f}, {hi:.3f}] {h['camera_pitch_bin_error']:10.3f} "
              f"{h['camera_yaw_bin_error']:10.3f} {'' if psnr is None else f'{psnr.mean():11.2f}'}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""Does RLIR post-training make a world model follow actions better? Base vs treatments, paired, in one run.

On held-out test clips (16 frames: frame 0 and the 15 real actions given), spread round-robin over the
test episodes, every model is rolled out with the evaluation sampler (AR: top-p 0.8; DiT: DPM-Solver++,
18 steps) and the same per-clip seeds, so a clip's base and post-trained videos differ only by the
model. Rows: real clips, frame 0 frozen, the base, each treatment. Scored by the reward IDM and by the
judge IDM: 7-group and shown-group macro F1, camera bin errors, the inverse reward (balanced,
per_group); and PSNR / SSIM of frames 1..15, mean brightness. Every treatment gets its **paired**
difference to the base with a 95% bootstrap interval over clips (the same resampled clips for both:
F1 is pooled over the resampled clips' frames, as MineWorld's protocol pools it).

    python bench/rlir_gain.py --data DATA --idm IDM --judge JUDGE --base WM \
        --model rlir=RUN/checkpoints/policy --model control=CTL/checkpoints/policy \
        [--clips 96] [--min-episodes 8] [--seed 0] --out bench/results/rlir_gain_ar.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.actions import GROUPS  # noqa: E402
from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.eval.action_metrics import DISCRETE  # noqa: E402
from rlir.eval.generate import load_world_model, psnr_per_clip  # noqa: E402
from rlir.eval.paired import action_table, boot_indices, scalar  # noqa: E402
from rlir.rl.rewards import per_frame_inverse_reward, shown_groups  # noqa: E402
from rlir.training.idm_trainer import load_idm, load_reward_idm  # noqa: E402
from rlir.utils.rand import GroupGenerators  # noqa: E402

FRAMES = 16


def spread_clips(store: EpisodeStore, n: int, frames: int = FRAMES, split: str = "test") -> list[tuple[str, int]]:
    """n non-overlapping windows of the split, round-robin over its episodes (rlir's evaluation set)."""
    return fixed_clips(store, frames, split, max_clips=n)


@torch.no_grad()
def roll_out(ckpt: str, clips: dict, seed: int, batch_size: int, device: str) -> np.ndarray:
    """The evaluation sampler on every clip; clip k draws from its own generator (seed, k)."""
    wm = load_world_model(ckpt, device, temperature=1.0, top_p=0.8, steps=18, solver="dpm++")
    frames = torch.from_numpy(clips["frames"])
    actions = torch.from_numpy(clips["actions"].astype(np.int64))
    out = []
    for s in range(0, len(frames), batch_size):
        idx = range(s, min(s + batch_size, len(frames)))
        g = GroupGenerators([seed * 1_000_003 + k for k in idx], 1, device)
        v = wm(frames[s:s + batch_size, 0], actions[s:s + batch_size], FRAMES, g)
        v[:, 0] = frames[s:s + batch_size, 0]
        out.append(v.numpy())
    return np.concatenate(out)


@torch.no_grad()
def idm_outputs(idm, videos: np.ndarray, actions: np.ndarray, groups, batch: int = 64) -> dict:
    """Per-clip argmax predictions [N, 15, 9] and per-clip inverse rewards (balanced, per_group)."""
    preds, bal, pg = [], [], []
    for s in range(0, len(videos), batch):
        lg = idm(torch.from_numpy(videos[s:s + batch]))
        a = torch.from_numpy(actions[s:s + batch].astype(np.int64))
        preds.append(torch.stack([x.argmax(-1) for x in lg], -1).numpy())
        bal.append(per_frame_inverse_reward(lg, a, "balanced", groups).mean(-1).numpy())
        pg.append(per_frame_inverse_reward(lg, a, "per_group").mean(-1).numpy())
    return {"pred": np.concatenate(preds), "balanced": np.concatenate(bal), "per_group": np.concatenate(pg)}


def per_clip_stats(videos: np.ndarray, real: np.ndarray) -> dict:
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    g, r = torch.from_numpy(videos[:, 1:]), torch.from_numpy(real[:, 1:])
    N, T = g.shape[:2]
    flat = lambda x: x.reshape(N * T, *x.shape[2:]).permute(0, 3, 1, 2).float() / 255   # noqa: E731
    s = ssim(flat(g), flat(r), data_range=1.0, reduction="none").view(N, T).mean(1).numpy()
    return {"psnr": np.minimum(np.array(psnr_per_clip(g, r)), 100.0), "ssim": s,
            "brightness": g.float().flatten(1).mean(1).numpy()}


def old_sampler(on: bool):
    """The pre-issue-20 AR sampler in place of the package's while on (posttrain_throughput's old path)."""
    import contextlib
    if not on:
        return contextlib.nullcontext()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from posttrain_throughput import old_path
    return old_path(True)


def video_cache(root: str, ckpt: str, windows, seed: int, tag: str = "") -> Path:
    """Where a model's rollouts of these clips are kept: keyed by the checkpoint's weights, the clips, the
    seed, the sampler (tag) and the samplers' source code, so a changed checkpoint or sampler is rolled
    out again (a cache made by an earlier sampler once stood in for the current one's videos)."""
    import hashlib
    h = hashlib.sha256(json.dumps([list(w) for w in windows]).encode() + str(seed).encode() + tag.encode())
    root_dir = Path(__file__).resolve().parents[1] / "rlir"
    for src in ("models/ar_world_model.py", "models/kv_decoder.py", "models/flow_samplers.py", "eval/generate.py"):
        h.update((root_dir / src).read_bytes())
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        h.update(f.name.encode() + f.read_bytes())
    return Path(root) / f"{h.hexdigest()[:20]}.npy"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--idm", required=True, help="the reward IDM")
    p.add_argument("--judge", required=True, help="the judge IDM (independent of the reward)")
    p.add_argument("--base", required=True, help="the base world model checkpoint")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CKPT", help="a treatment (repeatable)")
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--min-episodes", type=int, default=8)
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=None, help="a folder to keep each model's rollouts in (reused when the "
                   "checkpoint, clips and seed are the same)")
    p.add_argument("--old-sampler-row", action="store_true",
                   help="AR: a row of the base rolled out by the pre-issue-20 sampler (transformers' cache, full "
                        "sort, multinomial; bench/ar_sampler_bench.py), paired against the base: is the fast "
                        "sampler's quality unchanged?")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    t0 = time.time()
    store = EpisodeStore(a.data)
    windows = spread_clips(store, a.clips, split=a.split)
    episodes = sorted({i for i, _ in windows})
    if len(windows) < a.clips or len(episodes) < a.min_episodes:
        sys.exit(f"error: {a.data} has {len(windows)} {a.split} clips from {len(episodes)} episodes; "
                 f"need {a.clips} clips from at least {a.min_episodes} episodes")
    clips = load_clips(store, windows, FRAMES)
    real, actions = clips["frames"], clips["actions"]
    true = actions[:, :FRAMES - 1].astype(np.int64)
    null = tuple(store.metadata.get("null_groups", {}))
    groups = shown_groups(null)
    shown = tuple(g for g in DISCRETE if GROUPS[g] not in null)
    models = [("base", a.base)] + [tuple(m.split("=", 1)) for m in a.model]
    old_rows = {"base, old sampler"} if a.old_sampler_row else set()
    models += [(row, a.base) for row in old_rows]
    for name, ckpt in models:
        if not Path(ckpt).exists():
            sys.exit(f"error: model {name}: no checkpoint at {ckpt}")
    videos = {"real clips": real, "frozen frame 0": np.repeat(real[:, :1], FRAMES, axis=1)}
    gen_seconds = {}
    for name, ckpt in models:
        t = time.time()
        cache = video_cache(a.cache, ckpt, windows, a.seed, "old_sampler" if name in old_rows else "") \
            if a.cache else None
        if cache is not None and cache.is_file():
            videos[name] = np.load(cache)
        else:
            with old_sampler(name in old_rows):
                videos[name] = roll_out(ckpt, clips, a.seed, a.batch_size, a.device)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, videos[name])
        gen_seconds[name] = time.time() - t
        print(f"rolled out {name} ({ckpt}): {gen_seconds[name]:.0f} s", flush=True)
    boots = boot_indices(len(windows), a.n_boot, a.seed)
    report = {"bench": "rlir_gain", "command": " ".join(sys.argv), "seed": a.seed, "data": a.data, "split": a.split,
              "clips": len(windows), "episodes": len(episodes), "windows": [list(w) for w in windows],
              "sampler": {"ar": "top-p 0.8, temperature 1", "diffusion": "DPM-Solver++ 18 steps"},
              "idm": a.idm, "judge": a.judge, "models": dict(models), "excluded_groups": list(null),
              "rollout_seconds": gen_seconds, "rows": {}}
    scorers = {"reward_idm": load_reward_idm(a.idm, a.device)[0], "judge": load_idm(a.judge, a.device)[0]}
    outs = {s: {row: idm_outputs(m, v, actions, groups) for row, v in videos.items()} for s, m in scorers.items()}
    stats = {row: per_clip_stats(v, real) for row, v in videos.items()}
    for row in videos:
        base_row = row in dict(models) and row != "base"
        r = {}
        for s in scorers:
            o, ob = outs[s][row], outs[s]["base"]
            r[s] = action_table(o["pred"], true, shown, boots, ob["pred"] if base_row else None)
            for mode in ("balanced", "per_group"):
                r[s][f"inverse_{mode}"] = scalar(o[mode], ob[mode] if base_row else None, a.seed)
        for k in ("psnr", "ssim", "brightness"):
            if row == "real clips" and k != "brightness":
                continue
            r[k] = scalar(stats[row][k], stats["base"][k] if base_row else None, a.seed)
        r["brightness_minus_real"] = scalar(stats[row]["brightness"] - stats["real clips"]["brightness"], None, a.seed)
        report["rows"][row] = r
    report["minutes"] = (time.time() - t0) / 60
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {a.out}")


def print_table(report: dict) -> None:
    def f(d, k="mean", fmt="{:.3f}"):
        return fmt.format(d[k])

    def diff(d, fmt="{:+.3f}"):
        m = d.get("minus_base")
        return "" if not m else f"{fmt.format(m['mean'])} [{fmt.format(m['ci95'][0])}, {fmt.format(m['ci95'][1])}]"
    print(f"{report['clips']} clips from {report['episodes']} {report['split']} episodes, seed {report['seed']}")
    print(f"{'row':16s} {'judge F1 shown':>15s} {'paired vs base':>24s} {'reward-IDM F1 shown':>20s} "
          f"{'paired vs base':>24s} {'PSNR':>6s} {'paired':>22s} {'bright':>7s} {'paired':>22s}")
    for row, r in report["rows"].items():
        j, w = r["judge"]["f1_macro_shown"], r["reward_idm"]["f1_macro_shown"]
        ps, br = r.get("psnr"), r["brightness"]
        print(f"{row:16s} {f(j):>15s} {diff(j):>24s} {f(w):>20s} {diff(w):>24s} "
              f"{f(ps, fmt='{:.2f}') if ps else '':>6s} {diff(ps, '{:+.2f}') if ps else '':>22s} "
              f"{f(br, fmt='{:.1f}'):>7s} {diff(br, '{:+.1f}'):>22s}")
    for row, r in report["rows"].items():
        for s in ("judge", "reward_idm"):
            d = r[s].get("per_group_f1_minus_base")
            if d:
                print(f"  {row} per-group F1 change ({s}): " + ", ".join(f"{g} {v:+.3f}" for g, v in d.items()))


if __name__ == "__main__":
    main()

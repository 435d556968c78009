"""IDM checks on real held-out clips: sensitivity (the paper's Figure 1) and reward throughput.

    python bench/idm_bench.py --idm runs/idm_reward/checkpoints/best --data runs/idm_data [--judge CKPT]

For each IDM: the inverse reward (modes all / per_group) on real clips, and on the same clips
with two frames swapped, frozen (frame 0 repeated) and mirrored left-right; then clips/s scored.
Writes bench/results/idm_bench.json with the command and seed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.rl.rewards import InverseReward  # noqa: E402
from rlir.training.idm_trainer import load_idm  # noqa: E402


def perturb(frames: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    f = frames.copy()
    if kind == "swap_two_frames":        # swap frames i and i+1 somewhere in the middle of each clip
        for b in range(len(f)):
            i = int(rng.integers(4, f.shape[1] - 5))
            f[b, [i, i + 4]] = f[b, [i + 4, i]]
    elif kind == "frozen":
        f[:] = f[:, :1]
    elif kind == "mirrored":
        f = f[:, :, :, ::-1].copy()
    return f


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--idm", required=True)
    p.add_argument("--judge")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-clips", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/idm_bench.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    store = EpisodeStore(a.data, cache_size=1_000_000)
    batch = load_clips(store, fixed_clips(store, 16, a.split, max_clips=a.max_clips), 16)
    frames, actions = batch["frames"], batch["actions"]
    result = {"bench": "idm_bench", "command": " ".join([sys.executable] + sys.argv), "seed": a.seed,
              "data": a.data, "split": a.split, "n_clips": len(frames), "threads": a.threads,
              "machine": platform.platform(), "idms": {}}
    for role, path in (("reward_idm", a.idm), ("judge_idm", a.judge)):
        if not path:
            continue
        model, cfg = load_idm(path)
        out = {"checkpoint": path, "arch": cfg["arch"], "sensitivity": {}}
        for mode in ("all", "per_group"):
            reward = InverseReward(model, mode=mode, batch_size=64)
            row = {}
            for kind in ("real", "swap_two_frames", "frozen", "mirrored"):
                f = frames if kind == "real" else perturb(frames, kind, np.random.default_rng(a.seed))
                r = reward(f, actions).numpy()
                boot = [r[np.random.default_rng(a.seed + k).integers(0, len(r), len(r))].mean() for k in range(1000)]
                row[kind] = {"mean": float(r.mean()), "ci95": [float(np.percentile(boot, 2.5)),
                                                               float(np.percentile(boot, 97.5))]}
            out["sensitivity"][mode] = row
            print(role, mode, {k: round(v["mean"], 3) for k, v in row.items()})
        reward = InverseReward(model, mode="all", batch_size=64)
        reward(frames[:64], actions[:64])                     # warm-up
        t0 = time.perf_counter()
        reward(frames, actions)
        dt = time.perf_counter() - t0
        out["throughput_clips_per_s"] = len(frames) / dt
        print(role, f"reward throughput {len(frames) / dt:.1f} clips/s (16 frames each, batch 64, CPU)")
        result["idms"][role] = out
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""IDM checks on real held-out clips: sensitivity (the paper's Figure 1), shortcuts, reward throughput.

    python bench/idm_bench.py --idm runs/idm_reward/checkpoints/best --data runs/idm_data [--judge CKPT]
                              [--world-model WM_CKPT]

For each IDM, the pooled shown-group macro F1 of each video set (what `f1_gain` climbs), and for
every per-clip reward mode (all, per_group, loglik, balanced): the inverse reward on real
clips, on the base world model's videos of the same clips (`--world-model`, evaluation sampler), and
on shortcut videos that a reward must not pay: two frames swapped, frozen (frame 0 repeated),
mirrored left-right, darkened to half brightness, blurred, Gaussian noise. A reward is fit to
optimise when real > the model's videos > every shortcut; `ranking` says so per mode, with the paired
(per-clip) difference model - best shortcut and its 95% interval. Then clips/s scored.
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
from rlir.eval.generate import bootstrap_ci  # noqa: E402
from rlir.eval.action_metrics import action_metrics  # noqa: E402
from rlir.rl.rewards import MODES, POOLED, InverseReward  # noqa: E402
from rlir.training.idm_trainer import predict  # noqa: E402
from rlir.training.idm_trainer import load_idm, load_reward_idm  # noqa: E402


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
    elif kind == "darkened":             # half brightness from frame 1 on
        f[:, 1:] = (f[:, 1:].astype(np.float32) * 0.5).astype(np.uint8)
    elif kind == "blurred":              # a 5x5 box blur of frames 1..
        import cv2
        for b in range(len(f)):
            for t in range(1, f.shape[1]):
                f[b, t] = cv2.blur(f[b, t], (5, 5))
    elif kind == "noise":                # Gaussian noise, sigma 25 levels, on frames 1..
        n = rng.normal(0, 25, f[:, 1:].shape)
        f[:, 1:] = np.clip(f[:, 1:].astype(np.float32) + n, 0, 255).astype(np.uint8)
    return f


SHORTCUTS = ("swap_two_frames", "frozen", "mirrored", "darkened", "blurred", "noise")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--idm", required=True)
    p.add_argument("--judge")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-clips", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--world-model", help="a base world model: its videos of the same clips are scored too")
    p.add_argument("--out", default="bench/results/idm_bench.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    store = EpisodeStore(a.data, cache_size=1_000_000)
    batch = load_clips(store, fixed_clips(store, 16, a.split, max_clips=a.max_clips), 16)
    frames, actions = batch["frames"], batch["actions"]
    result = {"bench": "idm_bench", "command": " ".join([sys.executable] + sys.argv), "seed": a.seed,
              "data": a.data, "split": a.split, "n_clips": len(frames), "threads": a.threads,
              "machine": platform.platform(), "idms": {}}
    null = tuple(store.metadata.get("null_groups", {}))
    videos = {"real": frames}
    if a.world_model:
        from bench.rlir_gain import roll_out
        videos["world_model"] = roll_out(a.world_model, batch, a.seed, 8, "cpu")
        result["world_model"] = a.world_model
    for kind in SHORTCUTS:
        videos[kind] = perturb(frames, kind, np.random.default_rng(a.seed))
    for role, path in (("reward_idm", a.idm), ("judge_idm", a.judge)):
        if not path:
            continue
        model, cfg = load_reward_idm(path) if role == "reward_idm" else load_idm(path)   # "a,b": an ensemble
        members = getattr(model, "members", [model])        # an ensemble reports each member's input
        out = {"checkpoint": path, "arch": [m.cfg.arch for m in members] if len(members) > 1 else cfg["arch"],
               "flow": [bool(getattr(m.cfg, "flow", False)) for m in members] if len(members) > 1
               else bool(getattr(model.cfg, "flow", False)), "sensitivity": {}, "ranking": {}}
        # f1_gain is a share of a batch's pooled F1: the set's pooled shown-group F1 is what it climbs
        f1 = {}
        for kind, f in videos.items():
            m = action_metrics(predict(model, f), actions[:, :15].astype(np.int64), n_boot=200, seed=a.seed,
                               exclude_groups=null)
            key = "f1_macro_shown" if null else "f1_macro"
            f1[kind] = {"mean": m["metrics"][key], "ci95": m["ci95"][key]}
        out["pooled_f1_shown"] = f1
        print(role, "pooled F1 (shown)", {k: round(v["mean"], 3) for k, v in f1.items()})
        for mode in (m for m in MODES if m not in POOLED):
            reward = InverseReward(model, mode=mode, batch_size=64, null_groups=null)
            row, per = {}, {}
            for kind, f in videos.items():
                r = per[kind] = reward(f, actions).numpy()
                row[kind] = {"mean": float(r.mean()), "ci95": bootstrap_ci(r, seed=a.seed)}
            best = max(SHORTCUTS, key=lambda k: row[k]["mean"])
            rank = {"best_shortcut": best, "real_above_shortcuts": bool(all(row["real"]["mean"] > row[k]["mean"]
                                                                            for k in SHORTCUTS))}
            if "world_model" in videos:
                d = per["world_model"] - per[best]
                rank.update({"real_above_model": bool(row["real"]["mean"] > row["world_model"]["mean"]),
                             "model_minus_best_shortcut": {"mean": float(d.mean()), "ci95": bootstrap_ci(d, seed=a.seed)}})
                rank["ok"] = bool(rank["real_above_model"] and rank["model_minus_best_shortcut"]["ci95"][0] > 0)
            out["sensitivity"][mode], out["ranking"][mode] = row, rank
            print(role, mode, {k: round(v["mean"], 3) for k, v in row.items()}, "best shortcut:", best,
                  "ok" if rank.get("ok") else "")
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

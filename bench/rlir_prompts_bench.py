"""Does RLIR raise the inverse reward? The base model and the post-trained one, measured in one run.

Post-trains a world model on a small fixed set of training clips (`--prompts`), then scores the
base model (before the first step) and the post-trained one (after the last) on the same prompts and
on as many held-out test clips, `--rollouts` rollouts per clip with the same seeds, each score the
inverse reward of the reward IDM (its `--mode`), with 95% bootstrap intervals over rollouts.

    python bench/rlir_prompts_bench.py --world-model runs/ar_tiny/wm/checkpoints/best \
        --idm runs/idm_reward2/checkpoints/best --data runs/d200 --steps 30
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.config import load_config  # noqa: E402
from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.eval.generate import bootstrap_ci  # noqa: E402
from rlir.rl.rewards import InverseReward  # noqa: E402
from rlir.rl.trainer import GRPOConfig, Posttrainer  # noqa: E402
from rlir.utils.io import atomic_write_json  # noqa: E402


@torch.no_grad()
def measure(tr: Posttrainer, clips: dict, rollouts: int, mode: str, seed: int) -> dict:
    scorer = InverseReward(tr.idm, mode)
    vals = []
    for i in range(len(clips["frames"])):
        frame0 = torch.from_numpy(clips["frames"][i:i + 1, 0]).expand(rollouts, -1, -1, -1).contiguous()
        actions = torch.from_numpy(clips["actions"][i:i + 1].astype(np.int64)).expand(rollouts, -1, -1).contiguous()
        tr.model.eval()
        ro = tr.policy.rollout(frame0, actions, torch.Generator().manual_seed(seed + i))
        vals += scorer(ro.video, actions).tolist()
    return {"mean": float(np.mean(vals)), "ci95": bootstrap_ci(np.array(vals), seed=seed), "n": len(vals)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world-model", required=True)
    p.add_argument("--idm", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--config", help="default: configs/posttrain/<paradigm>_tiny.yaml")
    p.add_argument("--out", default="runs/bench_rlir_prompts")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--mode", default="per_group")
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="bench/results/rlir_prompts.json")
    a = p.parse_args()
    from rlir.utils.checkpoint import read_config
    paradigm = read_config(a.world_model, kind="world_model")["paradigm"]
    cfg = load_config(GRPOConfig, a.config or f"configs/posttrain/{paradigm}_tiny.yaml", None,
                      world_model=a.world_model, idm=a.idm, data=a.data, out=a.out, steps=a.steps, lr=a.lr,
                      reward_mode=a.mode, prompt_clips=a.prompts, probe_clips=0, media_every=0, save_every=10 ** 6,
                      eval_every=10 ** 6, seed=a.seed, threads=a.threads, max_minutes=0)
    tr = Posttrainer(cfg)
    train = tr.prompts.clips
    held = load_clips(tr.store, fixed_clips(tr.store, cfg.frames, "test", max_clips=a.prompts), cfg.frames)
    t0 = time.time()
    before = {"train_prompts": measure(tr, train, a.rollouts, a.mode, a.seed),
              "heldout_clips": measure(tr, held, a.rollouts, a.mode, a.seed + 1000)}
    t_measure = time.time() - t0
    rows = []
    t1 = time.time()
    for s in range(cfg.steps):
        rows.append(tr.step(s))
        print(f"step {s + 1}/{cfg.steps} reward {rows[-1]['reward']:.4f} ({rows[-1]['step_time']:.1f} s)", flush=True)
    t_train = time.time() - t1
    after = {"train_prompts": measure(tr, train, a.rollouts, a.mode, a.seed),
             "heldout_clips": measure(tr, held, a.rollouts, a.mode, a.seed + 1000)}
    res = {"bench": "rlir_prompts", "command": " ".join(sys.argv), "seed": a.seed, "paradigm": paradigm,
           "world_model": a.world_model, "idm": a.idm, "reward_mode": a.mode, "prompts": a.prompts,
           "rollouts_per_clip": a.rollouts, "steps": cfg.steps, "lr": cfg.lr,
           "rollouts_per_step": cfg.batch_size * cfg.num_generations, "threads": torch.get_num_threads(),
           "base": before, "posttrained": after, "train_minutes": t_train / 60,
           "seconds_per_step": t_train / cfg.steps, "measure_seconds": t_measure,
           "training_reward_per_step": [r["reward"] for r in rows]}
    atomic_write_json(a.json, res)
    for k in ("train_prompts", "heldout_clips"):
        b, q = before[k], after[k]
        print(f"{k:>14}: base {b['mean']:.4f} [{b['ci95'][0]:.4f}, {b['ci95'][1]:.4f}]  ->  "
              f"post-trained {q['mean']:.4f} [{q['ci95'][0]:.4f}, {q['ci95'][1]:.4f}]  (n={b['n']})")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

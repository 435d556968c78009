"""What the fast SDE rollout schedule does to the videos post-training reads: the DiT's Flow-GRPO rollouts
with MixGRPO's window of W SDE steps, Euler on every grid step outside it (the reference) against
MixGRPO-Flash (at most K DPM-Solver++ steps each side of the window), paired clip by clip.

Both rows use the same clips, first frames, actions, window places and window noises (each clip draws
from its own generator, seeded by (seed, clip)); only how the noise-free stretch outside the window is
integrated differs. Scored as `bench/rlir_gain.py` scores (reward IDM and judge: 7-group and shown-group
macro F1 pooled over clips, inverse rewards; PSNR, SSIM, brightness), with 95% bootstrap intervals over
clips for the paired differences, and the seconds each rollout set took.

    python bench/sde_rollout_quality.py --data DATA --world-model DIT --idm IDM --judge JUDGE \
        [--clips 96] [--outer-steps 2] [--window 2] --out bench/results/sde_rollout_quality.json
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlir.actions import GROUPS  # noqa: E402
from rlir.data.sampler import load_clips  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.eval.action_metrics import DISCRETE  # noqa: E402
from rlir.eval.paired import action_table, boot_indices, scalar  # noqa: E402
from rlir.models.flow_samplers import rollout  # noqa: E402
from rlir.rl.rewards import shown_groups  # noqa: E402
from rlir.training.idm_trainer import load_idm, load_reward_idm  # noqa: E402
from rlir.training.wm_trainer import load_world_model_checkpoint  # noqa: E402
from rlir.utils.rand import GroupGenerators  # noqa: E402
from rlir_gain import FRAMES, idm_outputs, per_clip_stats, spread_clips  # noqa: E402


@torch.no_grad()
def sde_videos(model, codec, clips: dict, starts: torch.Tensor, seed: int, window: int, outer: int, steps: int,
               eta: float, precision: str, batch: int) -> tuple[np.ndarray, float]:
    frames = torch.from_numpy(clips["frames"])
    actions = torch.from_numpy(clips["actions"].astype(np.int64))
    out, t0 = [], time.time()
    for s in range(0, len(frames), batch):
        idx = range(s, min(s + batch, len(frames)))
        g = GroupGenerators([seed * 1_000_003 + k for k in idx], 1, "cpu")
        z0 = codec.encode(frames[s:s + batch, 0])
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            tr = rollout(model, z0, actions[s:s + batch], FRAMES, steps=steps, mode="sde", eta=eta, generator=g,
                         window_start=starts[s:s + batch], window=window, outer_steps=outer)
        v = codec.decode(tr.latents)
        v[:, 0] = frames[s:s + batch, 0]
        out.append(v.numpy())
    return np.concatenate(out), time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--world-model", required=True, help="a diffusion world-model checkpoint")
    p.add_argument("--idm", required=True, help="the reward IDM (or several, comma-separated: an ensemble)")
    p.add_argument("--judge", required=True)
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--outer-steps", type=int, default=2)
    p.add_argument("--sde-steps", type=int, default=10)
    p.add_argument("--noise-level", type=float, default=0.75)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    store = EpisodeStore(a.data)
    windows = spread_clips(store, a.clips)
    clips = load_clips(store, windows, FRAMES)
    real, actions = clips["frames"], clips["actions"]
    true = actions[:, :FRAMES - 1].astype(np.int64)
    null = tuple(store.metadata.get("null_groups", {}))
    groups, shown = shown_groups(null), tuple(g for g in DISCRETE if GROUPS[g] not in null)
    model, _, codec = load_world_model_checkpoint(a.world_model, "cpu", "diffusion")
    n_starts = a.sde_steps - a.window          # the policy's places: 0 .. S - W - 1
    starts = torch.from_numpy(np.random.default_rng(a.seed).integers(0, n_starts, len(windows)))
    rows = {"euler_outside": 0, f"flash{a.outer_steps}": a.outer_steps}
    videos, seconds = {"real clips": real}, {}
    for name, outer in rows.items():
        videos[name], seconds[name] = sde_videos(model, codec, clips, starts, a.seed, a.window, outer, a.sde_steps,
                                                 a.noise_level, a.precision, a.batch_size)
        print(f"rolled out {name}: {seconds[name]:.0f} s", flush=True)
    ref, treat = list(rows)
    boots = boot_indices(len(windows), 1000, a.seed)
    scorers = {"reward_idm": load_reward_idm(a.idm, "cpu")[0], "judge": load_idm(a.judge, "cpu")[0]}
    outs = {s: {r: idm_outputs(m, v, actions, groups) for r, v in videos.items()} for s, m in scorers.items()}
    stats = {r: per_clip_stats(v, real) for r, v in videos.items() if r != "real clips"}
    report = {"bench": "sde_rollout_quality", "command": " ".join(sys.argv), "seed": a.seed, "data": a.data,
              "world_model": a.world_model, "idm": a.idm, "judge": a.judge, "clips": len(windows),
              "episodes": len({e for e, _ in windows}), "window": a.window, "outer_steps": a.outer_steps,
              "sde_steps": a.sde_steps, "noise_level": a.noise_level, "precision": a.precision,
              "window_starts": starts.tolist(), "rollout_seconds": seconds,
              "speedup": seconds[ref] / seconds[treat], "rows": {}}
    for r in videos:
        paired = r == treat
        row = {}
        for s in scorers:
            o, ob = outs[s][r], outs[s][ref]
            row[s] = action_table(o["pred"], true, shown, boots, ob["pred"] if paired else None)
            row[s]["inverse_balanced"] = scalar(o["balanced"], ob["balanced"] if paired else None, a.seed)
        if r in stats:
            for k in ("psnr", "ssim", "brightness"):
                row[k] = scalar(stats[r][k], stats[ref][k] if paired else None, a.seed)
        report["rows"][r] = row
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    for r, row in report["rows"].items():
        line = [f"{r:16s}"]
        for s in scorers:
            f1 = row[s]["f1_macro_shown"]
            line.append(f"{s} F1 shown {f1['mean']:.3f}" + (f" ({f1['minus_base']['mean']:+.3f} "
                        f"[{f1['minus_base']['ci95'][0]:+.3f}, {f1['minus_base']['ci95'][1]:+.3f}])"
                        if "minus_base" in f1 else ""))
        for k in ("psnr", "brightness"):
            if k in row:
                d = row[k]
                line.append(f"{k} {d['mean']:.2f}" + (f" ({d['minus_base']['mean']:+.2f} [{d['minus_base']['ci95'][0]:+.2f}, "
                            f"{d['minus_base']['ci95'][1]:+.2f}])" if "minus_base" in d else ""))
        print("  ".join(line))
    print(f"rollouts: {seconds[ref]:.0f} s -> {seconds[treat]:.0f} s ({report['speedup']:.2f}x); wrote {a.out}")


if __name__ == "__main__":
    main()

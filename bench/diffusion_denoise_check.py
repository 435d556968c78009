"""Is a diffusion world model's poor rollout the sampler's fault or the model's? One run, same clips.

    python bench/diffusion_denoise_check.py --world-model runs/dit_tiny/wm_long/checkpoints/best --data runs/d200

On held-out clips, PSNR of frame 1 against the real frame 1 for:
- the autoencoder's round trip (the codec's ceiling) and frame 0 copied (a model that ignores actions);
- the model's one-step estimate x0 = x_s - s v(x_s, s) from the real frame 1 noised to level s, with the
  clean real frame 0 as context (how well the denoiser was learned at each noise level);
- ODE samples of frame 1 (Euler and DPM-Solver++, 18 steps), and Euler rollouts of frames 1..7 with the
  cached context at noise level 0 (what `rlir generate` does) or re-noised to a small level (`rollout`'s
  `context_sigma`, diffusion forcing's stabilisation), with the mean frame-to-frame change against the
  real clips'.
A denoiser that beats the copy at every level while samples fall below it means the model, not the
sampler, is short of training. Writes JSON with the command and seed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.eval.generate import bootstrap_ci, psnr_per_clip as psnr  # noqa: E402
from rlir.models.flow_samplers import rollout  # noqa: E402
from rlir.training.wm_trainer import load_world_model_checkpoint  # noqa: E402


def summary(x: list[float]) -> dict:
    return {"mean": float(np.mean(x)), "ci95": bootstrap_ci(np.array(x))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--world-model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-clips", type=int, default=40)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/diffusion_denoise_check.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, cfg, codec = load_world_model_checkpoint(a.world_model, "cpu")
    model.eval()
    store = EpisodeStore(a.data)
    clips = load_clips(store, fixed_clips(store, 16, a.split, max_clips=a.max_clips), 16)
    real = torch.from_numpy(clips["frames"])
    actions = torch.from_numpy(clips["actions"].astype(np.int64))
    B = len(real)
    res = {"bench": "diffusion_denoise_check", "command": " ".join([sys.executable] + sys.argv), "seed": a.seed,
           "world_model": a.world_model, "data": a.data, "split": a.split, "clips": B,
           "machine": platform.platform(), "psnr_frame1": {}, "rollout_frames_1_to_%d" % (a.frames - 1): {}}
    torch.manual_seed(a.seed)
    with torch.no_grad():
        z = codec.encode(real)                                          # [B, T, N, C]
        r1 = res["psnr_frame1"]
        r1["autoencoder_round_trip"] = summary(psnr(codec.decode(z[:, 1]), real[:, 1]))
        r1["copy_frame0"] = summary(psnr(real[:, 0], real[:, 1]))
        for s in (0.25, 0.5, 0.75, 1.0):
            g = torch.Generator().manual_seed(a.seed)
            xs = (1 - s) * z[:, 1:2] + s * torch.randn(z[:, 1:2].shape, generator=g)
            v = model.velocity_teacher_forced(z[:, :2], xs, torch.full((B, 1), s), actions)
            r1[f"one_step_x0_from_sigma_{s}"] = summary(psnr(codec.decode(xs - s * v)[:, 0], real[:, 1]))
        rr = res["rollout_frames_1_to_%d" % (a.frames - 1)]
        real_change = (real[:, 2:a.frames].float() - real[:, 1:a.frames - 1].float()).abs().mean().item()
        rr["real_frame_to_frame_change"] = real_change
        for solver, ctx in (("dpm++", 0.0), ("euler", 0.0), ("euler", 0.1), ("euler", 0.3)):
            g = torch.Generator().manual_seed(a.seed)
            out = codec.decode(rollout(model, z[:, 0], actions, a.frames, steps=18, solver=solver, generator=g,
                                       context_sigma=ctx))
            name = f"{solver}_18_context_sigma_{ctx}"
            r1[f"ode_sample_{name}"] = summary(psnr(out[:, 1], real[:, 1]))
            rr[name] = {"psnr": summary(psnr(out[:, 1:].flatten(1), real[:, 1:a.frames].flatten(1))),
                        "frame_to_frame_change": (out[:, 2:].float() - out[:, 1:-1].float()).abs().mean().item()}
            print(name, {k: round(v["mean"], 2) if isinstance(v, dict) else round(v, 2) for k, v in rr[name].items()},
                  flush=True)
    for k, v in res["psnr_frame1"].items():
        print(f"frame 1 PSNR  {k:40s} {v['mean']:6.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

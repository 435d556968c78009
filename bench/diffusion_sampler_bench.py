"""Sampling speed of the diffusion world model: frames per second for a batch of rollouts.

Side by side in one run: the ODE sampler as evaluated (DPM-Solver++, 18 steps), Euler with 18 steps,
DPM-Solver++ with 10 steps, and Flow-GRPO's SDE sampler as used for RL rollouts (10 steps, noise level
0.75), with MixGRPO's window of 2 SDE steps (Euler on the grid elsewhere), and MixGRPO-Flash's (at most 2
DPM-Solver++ steps before and after the window), all frame by frame with the finished frames' keys/values
cached in a pass of their own and concatenated at every call; the `_fold` runs compute them inside the next
frame's first denoiser call (`fold_cache`), `_prealloc` keeps them in preallocated buffers (`KVCache`; both the
samplers' defaults now), `_bf16w` runs a bfloat16 copy of the weights (bf16 runs only). Each in float32 (the old path)
and under bf16 autocast (the SDE step itself stays float32), from the same noise. Frames/s = batch *
(frames - 1) / seconds; `speedup_vs_fp32` is each bf16 path against its own float32 run;
`max_rel_diff_vs_fp32` the largest |bf16 - fp32| of the final latents over their std; SDE runs report
`max_logp_diff_vs_fp32_scorer`, the sampler's log-probs against post-training's float32 scorer.

    python bench/diffusion_sampler_bench.py [--world-model CKPT] [--batch 8] [--device cpu|cuda] [--compile]
        [--old-rev b6060c9] [--out JSON]

`--old-rev REV` also times the samplers of that git revision with its own bench (float32), before and after
this run's paths (the faster of the two kept): b6060c9 is the code before the speed work of issue 20.
The runs are repeated in turn (interleaved), so a drift of the CPU's speed does not favour one of them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.models.dit_world_model import PRESETS, DiTConfig, DiTWorldModel  # noqa: E402
from rlir.models.flow_samplers import rollout, score_steps  # noqa: E402


def logp_vs_scorer(model, traj, actions, kw) -> float:
    """max |log p| difference between the sampler's record and `score_steps` in float32 (what post-training's
    first pass computes as the "old" log-probs) at the first trained step: the window's, or step 3."""
    B = traj.latents.shape[0]
    step = kw["window_start"] if kw.get("window") else torch.full((B,), 3, dtype=torch.long)
    with torch.no_grad(), torch.autocast(traj.latents.device.type, enabled=False):
        lp = score_steps(model, traj, actions.to(traj.latents.device), step.to(traj.latents.device))[0]
    rec = traj.logps.gather(2, step.view(-1, 1, 1).expand(-1, lp.shape[1], 1).to(lp.device))[..., 0]
    return float((lp - rec).abs().max())


def time_old_rev(rev: str, a) -> dict:
    """The samplers as they were at git revision `rev` (before the speed work), timed by that revision's own
    bench in a subprocess on this machine, just before this run's timings: the literal old path."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        cmd = [sys.executable, "bench/diffusion_sampler_bench.py", "--batch", str(a.batch), "--frames", str(a.frames),
               "--repeats", str(a.repeats), "--seed", str(a.seed), "--device", a.device, "--preset", a.preset,
               "--tokens-per-frame", str(a.tokens_per_frame), "--out", "old.json"]
        if a.world_model:
            cmd += ["--world-model", str(Path(a.world_model).resolve())]
        subprocess.run(cmd, cwd=tmp, check=True, env={**os.environ, "PYTHONPATH": tmp})
        return json.loads((Path(tmp) / "old.json").read_text())["results"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--world-model", help="a diffusion world-model checkpoint (default: a preset, random weights)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--tokens-per-frame", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32 and/or bf16 (autocast)")
    p.add_argument("--compile", action="store_true",
                   help="also time the last run's last precision with torch.compile(step_frame): compile time and saving")
    p.add_argument("--old-rev", help="also time the samplers of this git revision (its own bench, float32) first: "
                                      "b6060c9 is the code before the speed work of the issue")
    p.add_argument("--out", default="bench/results/diffusion_sampler.json")
    a = p.parse_args()
    old = time_old_rev(a.old_rev, a) if a.old_rev else {}       # timed before this run's paths and again after
    torch.manual_seed(a.seed)
    if a.world_model:
        from rlir.training.wm_trainer import load_world_model_checkpoint
        model, cfg, _ = load_world_model_checkpoint(a.world_model, a.device, "diffusion")
    else:
        cfg = DiTConfig(tokens_per_frame=a.tokens_per_frame, **PRESETS[a.preset])
        model = DiTWorldModel(cfg).to(a.device).eval()
        for prm in model.parameters():      # AdaLN-Zero's zero init would make every velocity 0 (and every
            if not prm.any():               # log-prob comparison trivial): small random weights instead
                torch.nn.init.normal_(prm, std=0.02)
    B, F = a.batch, a.frames
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    z0 = torch.randn(B, cfg.tokens_per_frame, cfg.latent_dim, generator=g, device=a.device)
    actions = torch.stack([torch.randint(0, 2, (B, F - 1), generator=g, device=a.device) for _ in range(9)], -1)
    starts = torch.arange(B, device=a.device) % 8
    runs = {"ode_dpm++_18": dict(mode="ode", solver="dpm++", steps=18),
            "ode_euler_18": dict(mode="ode", solver="euler", steps=18),
            "ode_dpm++_10": dict(mode="ode", solver="dpm++", steps=10),
            "sde_10_eta0.75": dict(mode="sde", steps=10, eta=0.75),
            # post-training's rollouts with MixGRPO's window of 2 SDE steps (each of the batch's samples at
            # another place, 0..7, so the flash schedule pads as a batch of several groups does): Euler on
            # the 10-step grid outside the window, or (MixGRPO-Flash) at most 2 DPM-Solver++ steps each side
            "sde_10_window2": dict(mode="sde", steps=10, eta=0.75, window=2, window_start=starts),
            "sde_10_window2_flash2": dict(mode="sde", steps=10, eta=0.75, window=2, window_start=starts, outer_steps=2)}
    # the old cache: each finished frame in a pass of its own, the past concatenated at every call
    runs = {k: {**kw, "fold_cache": False, "prealloc_cache": False} for k, kw in runs.items()}
    # fold: a finished frame's keys computed inside the next frame's first denoiser call (a call a frame
    # fewer); prealloc: the past kept in preallocated buffers; both are the samplers' defaults now
    for k in ("ode_dpm++_10", "sde_10_window2_flash2"):
        runs[f"{k}_fold"] = {**runs[k], "fold_cache": True}
        runs[f"{k}_fold_prealloc"] = {**runs[k], "fold_cache": True, "prealloc_cache": True}
        # bf16w: a bfloat16 copy of the weights (post-training's rollouts since 2026-12-05): the residual
        # stream and the elementwise work in bf16 too, not cast back and forth at every op (bf16 runs only)
        runs[f"{k}_fold_prealloc_bf16w"] = {**runs[f"{k}_fold_prealloc"], "bf16_weights": True}
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    precisions = [x for x in a.precisions.split(",") if x]
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        raise SystemExit(f"--precisions takes fp32 and/or bf16, got {a.precisions!r}")
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    # repeat r times every run in turn (not r times one run, then the next): the CPU's speed drifts over
    # minutes on a shared machine, and interleaving spreads the drift over all runs alike
    results, finals, times, firsts = {}, {}, {}, {}
    todo = [(prec, name) for prec in precisions for name in runs
            if prec == "bf16" or not runs[name].get("bf16_weights")]
    dev = a.device.split(":")[0]
    for r in range(a.repeats):
        for prec, name in todo:
            kw = dict(runs[name])
            m = model_bf16 if kw.pop("bf16_weights", False) else model
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=prec == "bf16"):
                if r == 0 and name == list(runs)[0]:
                    rollout(m, z0, actions, 2, steps=2, mode="ode", solver="euler")          # warm-up
                sync()
                t0 = time.perf_counter()
                out = rollout(m, z0, actions, F, generator=torch.Generator(device=a.device).manual_seed(r), **kw)
                sync()
            times.setdefault((name, prec), []).append(time.perf_counter() - t0)
            if r == 0:
                finals[name, prec] = (out.latents if hasattr(out, "latents") else out).float()
                firsts[name, prec] = out
    for prec, name in todo:
        kw, ts = runs[name], times[name, prec]
        key = f"{name}_{prec}"
        results[key] = {"seconds": min(ts), "frames_per_s": B * (F - 1) / min(ts), "all_seconds": ts}
        if kw["mode"] == "sde":    # the sampler's log-probs against post-training's float32 scorer
            results[key]["max_logp_diff_vs_fp32_scorer"] = logp_vs_scorer(model, firsts[name, prec], actions, kw)
        if prec == "bf16" and (name, "fp32") in finals:
            ref = finals[name, "fp32"]
            results[key]["speedup_vs_fp32"] = results[f"{name}_fp32"]["seconds"] / min(ts)
            results[key]["max_rel_diff_vs_fp32"] = float((finals[name, prec] - ref).abs().max() / ref.std())
        print(f"{key:28s} {results[key]['frames_per_s']:8.1f} frames/s ({min(ts):.2f} s, {B} rollouts x {F - 1} frames)"
              + (f"  x{results[key]['speedup_vs_fp32']:.2f} vs fp32" if "speedup_vs_fp32" in results[key] else ""))
    if a.compile:        # is compiling worth it? the first call pays the compile; later ones show the saving
        name, prec = list(runs)[-1], precisions[-1]
        model.step_frame = torch.compile(model.step_frame, dynamic=True)
        ts = []
        with torch.no_grad(), torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=prec == "bf16"):
            for r in range(a.repeats + 1):
                sync()
                t0 = time.perf_counter()
                rollout(model, z0, actions, F, generator=torch.Generator(device=a.device).manual_seed(r), **runs[name])
                sync()
                ts.append(time.perf_counter() - t0)
        eager = results[f"{name}_{prec}"]["seconds"]
        key = f"{name}_{prec}_compiled"
        results[key] = {"seconds": min(ts[1:]), "frames_per_s": B * (F - 1) / min(ts[1:]), "all_seconds": ts[1:],
                        "first_call_s": ts[0], "speedup_vs_eager": eager / min(ts[1:]),
                        "rollouts_to_repay_compile": (ts[0] - min(ts[1:])) / max(eager - min(ts[1:]), 1e-9)}
        print(f"{key}: {results[key]['frames_per_s']:.1f} frames/s, x{results[key]['speedup_vs_eager']:.2f} vs eager, "
              f"first call {ts[0]:.0f} s")
    if "ode_dpm++_18_fp32" in results:
        ref = results["ode_dpm++_18_fp32"]["seconds"]
        for v in results.values():
            v["speedup_vs_ode_dpm18_fp32"] = ref / v["seconds"]
    if a.old_rev:                                  # the old revision's samplers, float32: the faster of the two
        after = time_old_rev(a.old_rev, a)
        for name, v in old.items():
            best = v if v["seconds"] <= after[name]["seconds"] else after[name]
            results[f"old_rev_{name}_fp32"] = {**best, "all_seconds": v["all_seconds"] + after[name]["all_seconds"]}
    for base, prefix in (("old_rev_ode_dpm++_18_fp32", "ode_"), ("old_rev_sde_10_eta0.75_fp32", "sde_")):
        if base in results:
            for k, v in results.items():
                if k.startswith(prefix):
                    v["speedup_vs_old_rev"] = results[base]["seconds"] / v["seconds"]
                    print(f"{k:28s} x{v['speedup_vs_old_rev']:.2f} vs {base}")
    if "sde_10_eta0.75_fp32" in results:          # the SDE baseline: the full SDE in float32
        ref = results["sde_10_eta0.75_fp32"]["seconds"]
        for k, v in results.items():
            if k.startswith("sde_"):
                v["speedup_vs_sde10_fp32"] = ref / v["seconds"]
                print(f"{k:28s} x{v['speedup_vs_sde10_fp32']:.2f} vs the full SDE in fp32")
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else (platform.processor() or platform.machine())
    report = {"bench": "diffusion_sampler", "command": " ".join(sys.argv), "seed": a.seed, "batch": B, "frames": F,
              "tokens_per_frame": cfg.tokens_per_frame, "params": sum(p.numel() for p in model.parameters()),
              "world_model": a.world_model or f"{a.preset} preset, random weights", "device": device_name,
              "precisions": precisions, "old_rev": a.old_rev, "torch_threads": torch.get_num_threads(), "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""`rlir generate` (Contract 4): roll a world model out on real clips and write the videos as episodes.

For each fixed clip of the chosen split: frame 0 is the real frame, frames 1..T-1 are generated under
the clip's real actions, and the episode keeps those actions, so an IDM can be scored on it exactly
as on real data. Resumable: clips already written are skipped.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from rlir.data.sampler import fixed_clips, load_clips
from rlir.data.store import Episode, EpisodeStore
from rlir.errors import DataError
from rlir.utils.checkpoint import read_config
from rlir.utils.io import atomic_write_json

log = logging.getLogger("rlir.generate")


def bootstrap_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of `x` (one value per clip)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return [float(x.mean()), float(x.mean())] if len(x) else [float("nan")] * 2
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def psnr_per_clip(fake: torch.Tensor, real: torch.Tensor) -> list[float]:
    """PSNR of uint8-valued videos or frames [B, ...], one value per clip (MSE pooled over its pixels)."""
    mse = (fake.float() - real.float()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(255.0 ** 2 / mse.clamp(min=1e-10))).tolist()


class WorldModelRollout:
    """Frame 0 + actions -> generated frames, through the world model's codec (tokens or latents)."""

    def __init__(self, path: str | Path, device: str = "cpu", temperature: float = 1.0, top_p: float = 0.8,
                 steps: int = 18, solver: str = "dpm++"):
        from rlir.training.wm_trainer import load_world_model_checkpoint
        self.paradigm = read_config(path, kind="world_model").get("paradigm")
        self.model, self.cfg, self.codec = load_world_model_checkpoint(path, device)
        self.device, self.temperature, self.top_p, self.steps, self.solver = device, temperature, top_p, steps, solver
        self.resolution = tuple(self.codec.cfg.resolution)

    @torch.no_grad()
    def __call__(self, frame0: torch.Tensor, actions: torch.Tensor, frames: int, generator) -> torch.Tensor:
        z0 = self.codec.encode(frame0.to(self.device))
        if self.paradigm == "ar":            # top-p sampling of visual tokens (MineWorld's evaluation setting)
            from rlir.models.ar_world_model import sample, split_frames
            r = sample(self.model, self.cfg, z0, actions, frames=frames, temperature=self.temperature,
                       top_p=self.top_p, generator=generator)
            return self.codec.decode(split_frames(r.tokens, self.cfg)).cpu()
        from rlir.models.flow_samplers import rollout   # the ODE (NFD's evaluation: DPM-Solver++, 18 steps)
        latents = rollout(self.model, z0, actions.to(self.device), frames, steps=self.steps, mode="ode",
                          solver=self.solver, generator=generator)
        return self.codec.decode(latents).cpu()


def load_world_model(path: str | Path, device: str = "cpu", **kw) -> WorldModelRollout:
    return WorldModelRollout(path, device, **kw)


def generate(world_model: str, data: str, out: str, frames: int = 16, seed: int = 0, split: str = "test",
             batch_size: int = 8, max_clips: int | None = None, temperature: float = 1.0, top_p: float = 0.8,
             steps: int = 18, solver: str = "dpm++", device: str = "cpu", progress: bool = True) -> dict:
    from tqdm import tqdm
    wm = load_world_model(world_model, device, temperature=temperature, top_p=top_p, steps=steps, solver=solver)
    src = EpisodeStore(data)
    src.require_resolution(wm.resolution, "world model")
    windows = fixed_clips(src, frames, split=split, max_clips=max_clips)
    if not windows:
        raise DataError(f"{data}: no {split} episode has {frames} frames")
    meta = {k: v for k, v in src.metadata.items() if k in ("format", "resolution", "null_groups", "source")}
    meta["generated"] = {"world_model": str(world_model), "data": str(data), "split": split, "frames": frames,
                         "seed": seed, "paradigm": wm.paradigm}
    meta["generated"].update({"temperature": temperature, "top_p": top_p} if wm.paradigm == "ar" else
                             {"steps": steps, "solver": solver})
    dst = EpisodeStore.create(out, metadata=meta, exist_ok=True)
    done = set(dst.ids())
    psnrs = []
    for b0 in tqdm(range(0, len(windows), batch_size), desc="generate", disable=not progress):
        win = windows[b0:b0 + batch_size]
        names = [f"{i}-{s:05d}" for i, s in win]
        if all(n in done for n in names):
            continue
        clips = load_clips(src, win, frames)
        real = torch.from_numpy(clips["frames"])
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b0)
        fake = wm(real[:, 0], torch.from_numpy(clips["actions"].astype(np.int64)), frames, g)
        fake[:, 0] = real[:, 0]                                   # frame 0 is the given frame
        psnrs += psnr_per_clip(fake[:, 1:], real[:, 1:])
        for k, name in enumerate(names):
            if name not in done:
                dst.add(name, Episode(fake[k].numpy(), clips["actions"][k], clips["camera_deg"][k]), split=split,
                        source={"clip": [win[k][0], win[k][1]], "world_model": str(world_model)})
    summary = {"clips": len(windows), "frames": frames, "out": str(out)}
    if psnrs:
        summary["psnr_frames_1_to_T"] = {"mean": float(np.mean(psnrs)), "ci95": bootstrap_ci(np.array(psnrs)),
                                         "clips": len(psnrs)}
    atomic_write_json(Path(out) / "generate_summary.json", summary)
    return summary

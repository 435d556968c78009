"""`rlir generate` (Contract 4): roll a world model out on real clips and write the videos as episodes.

For each fixed clip of the chosen split: frame 0 is the real frame, frames 1..T-1 are generated under
the clip's real actions, and the episode keeps those actions, so an IDM can be scored on it exactly
as on real data. Resumable: clips already written are skipped, once the store's metadata shows that
the same checkpoint (its sha256), data, settings and seed made them; other clips are refused.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from rlir.data.sampler import fixed_clips, load_clips
from rlir.data.store import MANIFEST, METADATA, Episode, EpisodeStore
from rlir.errors import ConfigError, DataError
from rlir.utils.checkpoint import read_config
from rlir.utils.io import atomic_write_json

log = logging.getLogger("rlir.generate")
SUMMARY = "generate_summary.json"


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
                 steps: int = 18, solver: str = "dpm++", precision: str = "fp32"):
        from rlir.training.wm_trainer import load_world_model_checkpoint
        self.paradigm = read_config(path, kind="world_model").get("paradigm")
        self.model, self.cfg, self.codec = load_world_model_checkpoint(path, device)
        # bf16: AR samples from bfloat16 weights (attention and log-probs float32, as in post-training's
        # rollouts); the DiT's transformer runs under bf16 autocast, the solver's arithmetic in float32
        self.bf16 = precision == "bf16"
        if self.bf16 and self.paradigm == "ar":
            self.model = self.model.to(torch.bfloat16)
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
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
            latents = rollout(self.model, z0, actions.to(self.device), frames, steps=self.steps, mode="ode",
                              solver=self.solver, generator=generator)
        latents = latents.float()
        return self.codec.decode(latents).cpu()


def load_world_model(path: str | Path, device: str = "cpu", **kw) -> WorldModelRollout:
    return WorldModelRollout(path, device, **kw)


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over a checkpoint's config and weight files: the identity of the model, wherever it lies."""
    import hashlib
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted([root / "config.json", *root.glob("*.safetensors")]):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


# what a generated store's clips depend on; a resume must find all of them unchanged
IDENTITY_KEYS = ("world_model_sha256", "data_manifest_sha256", "split", "frames", "seed", "batch_size", "device",
                 "paradigm", "temperature", "top_p", "steps", "solver", "precision")


def check_resumable(out: Path, made: dict, overwrite: bool) -> None:
    """Clips already in `out` are kept only when the same model, data, settings and seed made them;
    otherwise refuse (nothing is touched) or, with overwrite, remove them first."""
    if not (out / MANIFEST).is_file():
        return
    old = EpisodeStore(out)
    before = old.metadata.get("generated")
    if before is None:
        if len(old):
            raise DataError(f"{out} holds a dataset of {len(old)} episodes, not generated clips: rlir generate "
                            f"never writes into a dataset; give another --out")
        return
    diff = [f"{k}: {before.get(k, 'not recorded')!r} there, {made.get(k)!r} now" for k in IDENTITY_KEYS
            if before.get(k) != made.get(k)]
    if not diff:
        return
    if not overwrite:
        raise DataError(f"{out} holds clips made with other settings ({'; '.join(diff[:3])}"
                        f"{' ...' if len(diff) > 3 else ''}); give another --out, or --overwrite to replace them")
    log.warning("--overwrite: removing %d clips made with other settings from %s", len(old), out)
    for e in old.entries:
        (out / e["path"]).unlink(missing_ok=True)
    for name in (MANIFEST, METADATA, SUMMARY):
        (out / name).unlink(missing_ok=True)


def generate(world_model: str, data: str, out: str, frames: int = 16, seed: int = 0, split: str = "test",
             batch_size: int = 8, max_clips: int | None = None, temperature: float = 1.0, top_p: float = 0.8,
             steps: int = 18, solver: str = "dpm++", device: str = "cpu", progress: bool = True,
             overwrite: bool = False, precision: str = "fp32") -> dict:
    from tqdm import tqdm

    from rlir.utils.output_guard import Input, Output, check_output
    check_output(Output(out, "--out"), [Input(data, "--data"), Input(world_model, "--world-model", dataset=False)])
    if frames < 2:
        raise ConfigError(f"--frames must be at least 2 (frame 0 is given, the rest generated), got {frames}")
    from rlir.training.distributed import PRECISIONS
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be fp32 or bf16, got {precision!r}")
    wm = load_world_model(world_model, device, temperature=temperature, top_p=top_p, steps=steps, solver=solver,
                          precision=precision)
    clip_len = getattr(wm.cfg, "clip_len", frames)
    if frames > clip_len:
        raise ConfigError(f"--frames {frames} is longer than the world model's clip length {clip_len} ({world_model})")
    src = EpisodeStore(data)
    src.require_resolution(wm.resolution, "world model")
    windows = fixed_clips(src, frames, split=split, max_clips=max_clips)
    if not windows:
        raise DataError(f"{data}: no {split} episode has {frames} frames")
    meta = {k: v for k, v in src.metadata.items() if k in ("format", "resolution", "null_groups", "source")}
    made = {"world_model": str(world_model), "data": str(data), "split": split, "frames": frames,
            "seed": seed, "paradigm": wm.paradigm, "batch_size": batch_size, "device": device,
            "world_model_sha256": checkpoint_digest(world_model),
            "data_manifest_sha256": hashlib.sha256((Path(data) / MANIFEST).read_bytes()).hexdigest()}
    made.update({"temperature": temperature, "top_p": top_p} if wm.paradigm == "ar" else
                {"steps": steps, "solver": solver})
    if precision != "fp32":          # recorded only when not the default, so older stores still resume
        made["precision"] = precision
    meta["generated"] = made
    out_dir = Path(out)
    check_resumable(out_dir, made, overwrite)
    dst = EpisodeStore.create(out, metadata=meta, exist_ok=True)
    done = set(dst.ids())
    psnrs, new = [], 0
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
                new += 1
    summary = {"clips": len(windows), "new": new, "kept": len(windows) - new, "frames": frames, "out": str(out)}
    if psnrs:
        summary["psnr_frames_1_to_T"] = {"mean": float(np.mean(psnrs)), "ci95": bootstrap_ci(np.array(psnrs)),
                                         "clips": len(psnrs)}
    elif (out_dir / SUMMARY).is_file():          # nothing new: keep what the run that made the clips measured
        import json
        summary["psnr_frames_1_to_T"] = json.loads((out_dir / SUMMARY).read_text()).get("psnr_frames_1_to_T")
    atomic_write_json(out_dir / SUMMARY, summary)
    return summary

"""Checkpoints: a directory with safetensors files and a JSON config naming its kind.

    ckpt/config.json        {"kind": "idm" | "world_model" | ..., ...}
    ckpt/model.safetensors  the weights (never a pickle)
    ckpt/*.safetensors      optional: optimizer state, RNG state

A directory is written under a temporary name and renamed into place, so a kill leaves either the
old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlir.errors import RlirError
from rlir.utils.io import follow_umask


def save_checkpoint(path: str | Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """tensors: file stem -> {name: tensor}, e.g. {"model": model.state_dict()}."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for stem, d in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in d.items()}, str(tmp / f"{stem}.safetensors"))
        follow_umask(tmp / f"{stem}.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def read_config(path: str | Path, kind: str | None = None) -> dict:
    path = Path(path)
    if path.is_file() and path.name == "config.json":
        path = path.parent
    cfg_file = path / "config.json"
    if not path.exists():
        raise RlirError(f"{path}: checkpoint not found")
    if not cfg_file.is_file():
        raise RlirError(f"{path}: not a checkpoint (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError:
        raise RlirError(f"{cfg_file}: damaged checkpoint config (not JSON)") from None
    if kind is not None and cfg.get("kind") != kind:
        found = str(cfg.get("kind", "unknown"))
        raise RlirError(f"{path}: is {'an' if found[:1] in 'aeiou' else 'a'} {found!r} checkpoint, not {kind!r}")
    return cfg


def load_tensors(path: str | Path, stem: str = "model") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{stem}.safetensors"
    if not f.is_file():
        raise RlirError(f"{path}: checkpoint lacks {f.name}")
    try:
        tensors = load_file(str(f))
    except Exception as e:   # safetensors raises its own error types for damaged files
        raise RlirError(f"{f}: damaged checkpoint file ({e})") from None
    check_finite(tensors, f)
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """NaN or inf weights would sample garbage or score a metric that looks like a number: refuse them."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise RlirError(f"{where}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf); "
                            f"the checkpoint is damaged or its training diverged")


def state_mismatch(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    """The first few keys that are missing, unexpected or of another shape, or None when all fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    shape = [f"{k} {list(tensors[k].shape)} vs {list(own[k].shape)} in the model"
             for k in own if k in tensors and tensors[k].shape != own[k].shape]
    parts = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for what, keys in (("missing", missing), ("unexpected", extra), ("other shape", shape)) if keys]
    return "; ".join(parts) or None


def load_state(module: torch.nn.Module, path: str | Path, stem: str = "model") -> None:
    tensors = load_tensors(path, stem)
    problem = state_mismatch(module, tensors)
    if problem:
        raise RlirError(f"{path}: {stem}.safetensors does not fit the model in its config ({problem})")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RlirError(f"{path}: weights do not fit the model in its config ({str(e).splitlines()[0]})") from None

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


def save_checkpoint(path: str | Path, config: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """tensors: file stem -> {name: tensor}, e.g. {"model": model.state_dict()}."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for stem, d in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in d.items()}, str(tmp / f"{stem}.safetensors"))
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
        raise RlirError(f"{path}: is a {cfg.get('kind', 'unknown')!r} checkpoint, not {kind!r}")
    return cfg


def load_tensors(path: str | Path, stem: str = "model") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{stem}.safetensors"
    if not f.is_file():
        raise RlirError(f"{path}: checkpoint lacks {f.name}")
    try:
        return load_file(str(f))
    except Exception as e:   # safetensors raises its own error types for damaged files
        raise RlirError(f"{f}: damaged checkpoint file ({e})") from None


def load_state(module: torch.nn.Module, path: str | Path, stem: str = "model") -> None:
    try:
        module.load_state_dict(load_tensors(path, stem), strict=True)
    except RuntimeError as e:
        raise RlirError(f"{path}: weights do not fit the model in its config ({str(e).splitlines()[0]})") from None

"""Which torch device a user may ask for, checked before any work starts."""
from __future__ import annotations

from rlir.errors import ConfigError


def check_device(device: str | None) -> None:
    """cpu, cuda or cuda:N, and a CUDA device only where torch can see one."""
    if device is None:
        return
    import torch
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device here; use --device cpu")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")

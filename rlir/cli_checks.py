"""Every numeric command-line option, checked in one place before any work starts.

The typed configs check `--set` values (rlir/config.py and each config's validate); the plain options
of every verb are checked here, by their argparse name, so one option means one rule on every verb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlir.errors import ConfigError


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False            # low itself is not allowed (temperature > 0)
    why: str = ""

    def problem(self, value: float) -> str | None:
        if not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            bound = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
            return f"must be {bound}{self.why}"
        if self.high is not None and value > self.high:
            return f"must be at most {self.high:g}{self.why}"
        return None


NUMERIC_OPTIONS: dict[str, Range] = {
    "episodes": Range(1),
    "frames": Range(2, why=" (frame 0 and at least one more)"),
    "seed": Range(0),
    "workers": Range(1),
    "batch_size": Range(1),
    "max_clips": Range(1),
    "temperature": Range(0, low_open=True, why=" (0 would be greedy decoding, which sampling cannot do)"),
    "top_p": Range(0, 1, low_open=True),
    "steps": Range(1),
    "n_boot": Range(1),
    "clip_len": Range(2, why=" (an IDM reads actions between two frames)"),
    "videos": Range(0),
}
MIN_SIDE = 8                          # pixels: the smallest frame side the models take


def check_options(args) -> None:
    """Raise a ConfigError naming the first option out of its range (or a device torch cannot use)."""
    for dest, rule in NUMERIC_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool):
            continue
        problem = rule.problem(float(value))
        if problem:
            raise ConfigError(f"--{dest.replace('_', '-')} {problem}, got {value}")
    res = getattr(args, "resolution", None)
    if res is not None and min(res) < MIN_SIDE:
        raise ConfigError(f"--resolution sides must be at least {MIN_SIDE} pixels, got {res[0]}x{res[1]}")
    if getattr(args, "device", None):
        from rlir.utils.device import check_device
        check_device(args.device)


def add_sampler_args(p) -> None:
    """The evaluation's samplers as options (generate, play, human-eval make): AR top-p 0.8 (MineWorld's),
    diffusion DPM-Solver++ with 18 steps (NFD's)."""
    p.add_argument("--temperature", type=float, default=1.0, help="AR sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=0.8, help="AR nucleus sampling (the evaluation's: 0.8)")
    p.add_argument("--steps", type=int, default=18, help="diffusion: ODE steps (the evaluation's: 18)")
    p.add_argument("--solver", default="dpm++", choices=["dpm++", "euler"], help="diffusion: ODE solver")

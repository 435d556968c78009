"""What every trainer shares: the warmup+cosine schedule, resumable train state, and the run log.

A train state is a checkpoint directory (rlir/utils/checkpoint.py) holding the model, the AdamW
state as safetensors (tensors) plus JSON (the rest), torch's RNG, numpy generators' states and the
scheduler, so a killed run resumes where it stopped and continues as if it had not been killed.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlir.errors import ConfigError, RlirError
from rlir.training.distributed import is_main, load_model_state, load_optim_state, model_state, optim_state
from rlir.utils.checkpoint import load_tensors, read_config, save_checkpoint


@dataclass
class LoopConfig:
    """The optimisation settings every trainer has (each trainer's config adds its own)."""
    seed: int = 0
    batch_size: int = 16
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    eval_every: int = 250
    max_minutes: float = 0.0          # stop early when the wall clock runs out (0: no limit)
    fit_budget: bool = False          # with max_minutes: `steps` is only a first guess; after a few timed steps
                                      # it becomes what the budget holds at the measured rate (BudgetFit)
    threads: int = 0                  # torch threads (0: torch's default)
    device: str = "cpu"               # cpu | cuda (under torchrun: each rank its LOCAL_RANK's GPU)
    parallel: str = "ddp"             # under torchrun: ddp | fsdp (fully_shard, for the large presets)
    precision: str = "fp32"           # fp32 | bf16 (autocast; samplers' float32 steps stay float32)
    activation_checkpointing: bool = False

    def validate(self) -> None:
        if self.batch_size < 1 or self.steps < 1 or self.eval_every < 1:
            raise ConfigError("batch_size, steps and eval_every must be positive")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        for name in ("seed", "warmup", "threads", "max_minutes"):      # counts and budgets are never negative
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        from rlir.training.distributed import PARALLEL, PRECISIONS
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def setup_run(cfg: LoopConfig):
    """Threads, then the process group torchrun describes (if any); cfg.device becomes this rank's device."""
    from rlir.training.distributed import init
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = init(cfg.device, cfg.precision)
    cfg.device = d.device
    return d


def prepare_model(model: torch.nn.Module, cfg: LoopConfig, d, forward_methods: tuple[str, ...] = ()) -> torch.nn.Module:
    """Activation checkpointing if asked for, then DDP or fully_shard under torchrun."""
    from rlir.training.distributed import checkpoint_activations, wrap
    if cfg.activation_checkpointing:
        checkpoint_activations(model)
    return wrap(model, d, cfg.parallel, forward_methods)


def step_stats(d, loss: torch.Tensor, t0: float, max_minutes: float) -> tuple[float, bool]:
    """The global batch's loss and whether the wall-clock budget is spent on any rank: one all-reduce."""
    late = max_minutes > 0 and (time.time() - t0) / 60 > max_minutes
    m = d.mean({"loss": loss.item(), "late": float(late)})
    return m["loss"], m["late"] > 0


def save_model_checkpoint(path: Path, config: dict, model: torch.nn.Module, **more: dict) -> None:
    """A model checkpoint from every rank's call (FSDP gathers the shards); rank 0 writes it."""
    sd = model_state(model)
    if is_main():
        save_checkpoint(path, config, {"model": sd, **more})


LR_SCHEDULES = ("cosine", "constant")


def lr_schedule(opt: torch.optim.Optimizer, kind: str, warmup: int, steps) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine to 0 over `steps` ("cosine") or the full rate ("constant").
    `steps` is a count or a callable that returns it (a horizon BudgetFit may move)."""
    if kind == "cosine":
        return warmup_cosine(opt, warmup, steps)
    if kind != "constant":
        raise ConfigError(f"lr schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps) -> torch.optim.lr_scheduler.LambdaLR:
    horizon = steps if callable(steps) else (lambda: steps)

    def factor(s: int) -> float:
        n = horizon()
        return min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, n) / n))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class BudgetFit:
    """Sizes a run to its wall-clock budget on whatever machine it runs on.

    A schedule fixed from a per-step estimate ends early on a faster CPU and is cut off on a slower
    one. With `cfg.fit_budget` and `cfg.max_minutes`, the rate is timed from step `skip` on (the first
    steps pay for allocations), and after `probe` timed steps `cfg.steps` becomes the steps the rest of
    the budget holds at that rate, less `margin`. The fit is redone every eighth of the run with the
    rate averaged since the probe began (evaluations and any slow moment included), so a busy probe
    does not mis-size the run; `cfg.eval_every` scales with it, and a cosine schedule built on
    `lambda: cfg.steps` ends where the clock does. The fitted length is kept in the train state
    (`state()`), and a resumed run keeps it."""

    def __init__(self, cfg: LoopConfig, d, meta: dict | None, skip: int = 3, probe: int = 12, margin: float = 0.95):
        self.cfg, self.d, self.skip, self.probe, self.margin = cfg, d, skip, probe, margin
        self.active = bool(cfg.fit_budget and cfg.max_minutes > 0)
        self.fitted = (meta or {}).get("fitted_steps")
        self.resumed = bool(self.fitted)
        self.guess = (cfg.steps, cfg.eval_every)        # eval_every keeps its share of the run's length
        if self.resumed:                                  # resumed after the fit: the same length as before
            self._set(self.fitted)
        elif self.active and cfg.steps <= skip + probe:   # a guess too short to time: run long enough to fit
            self._set(skip + probe + 1)
        self.t_budget0 = time.time()                      # max_minutes counts from this start, as step_stats does
        self.t_probe0, self.n0, self.seen, self.next_fit = None, 0, 0, 0

    def _set(self, steps: int) -> None:
        self.cfg.steps = max(1, int(steps))
        self.cfg.eval_every = max(1, round(self.guess[1] * self.cfg.steps / self.guess[0]))

    def after_step(self, step: int, bar=None) -> None:
        if not self.active or self.resumed:
            return
        if self.t_probe0 is None:
            self.seen += 1
            if self.seen == self.skip:
                self.t_probe0, self.n0, self.next_fit = time.time(), step, step + self.probe
            return
        if step < self.next_fit:
            return
        now = time.time()
        per_step = (now - self.t_probe0) / (step - self.n0)
        left = self.cfg.max_minutes * 60 - (now - self.t_budget0)
        fit = step + int(self.margin * max(0.0, left) / per_step)
        fit = int(self.d.mean({"steps": float(fit)})["steps"])          # every rank the same length
        self.fitted = max(step + 1, fit)
        self._set(self.fitted)
        self.next_fit = step + max(self.probe, self.fitted // 8)
        if bar is not None:
            bar.total = self.cfg.steps
            bar.refresh()

    def state(self) -> dict:
        return {"fitted_steps": self.fitted} if self.fitted else {}


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, opt, sched, grad_clip: float = 1.0) -> float:
    """Backward, clip the gradient norm, step the optimizer and the schedule; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss.item()


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state -> flat tensors for safetensors + a JSON layout for the rest (no pickle)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict, layout: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(layout["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": layout["param_groups"]}


def save_train_state(path: Path, kind: str, model: torch.nn.Module, opt, sched, meta: dict,
                     rngs: dict[str, np.random.Generator]) -> None:
    """Every rank calls it (FSDP gathers the shards); rank 0 writes the full, unsharded state."""
    model_sd, opt_sd = model_state(model), optim_state(model, opt)
    if not is_main():
        return
    opt_flat, layout = flatten_optimizer(opt_sd)
    save_checkpoint(path, {"kind": kind, **meta, "sched": sched.state_dict(), "optim_layout": layout,
                           "rngs": {k: g.bit_generator.state for k, g in rngs.items()}},
                    {"model": model_sd, "optim": opt_flat, "rng": {"torch": torch.get_rng_state()}})


def load_train_state(path: Path, kind: str, model: torch.nn.Module, opt, sched,
                     rngs: dict[str, np.random.Generator]) -> dict | None:
    """Restore a train state if one is there; returns its meta (step, history, ...) or None."""
    if not (Path(path) / "config.json").is_file():
        return None
    meta = read_config(path, kind=kind)
    try:
        load_model_state(model, load_tensors(path))
    except RuntimeError as e:
        raise RlirError(f"{path}: weights do not fit the model in its config ({str(e).splitlines()[0]})") from None
    load_optim_state(model, opt, unflatten_optimizer(load_tensors(path, "optim"), meta["optim_layout"]))
    sched.load_state_dict(meta["sched"])
    for k, g in rngs.items():
        g.bit_generator.state = meta["rngs"][k]
    torch.set_rng_state(load_tensors(path, "rng")["torch"])
    return meta


class RunLog:
    """Scalars to TensorBoard and rows to metrics.jsonl (appended, so a resumed run keeps its past).
    On ranks other than 0 it writes nothing."""

    def __new__(cls, out: Path):
        return super().__new__(cls if is_main() else _NoLog)

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(str(Path(out) / "tb"))
        self.f = open(Path(out) / "metrics.jsonl", "a")

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        for k, v in values.items():
            self.tb.add_scalar(f"{prefix}{k}", v, step)

    def row(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()
        self.tb.close()


class _NoLog(RunLog):
    def __init__(self, out: Path):
        self.tb = _Discard()

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        pass

    def row(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _Discard:
    def __getattr__(self, name):
        return lambda *a, **k: None

"""Data parallelism on torch.distributed, launched by `torchrun` (there is no launcher of our own).

With one process nothing changes. Under torchrun (WORLD_SIZE > 1) every rank draws the same global
batch from the same seeded generators and works on its own slice of rows, so N processes compute
what one process computes on the global batch, and a run may resume with a different number of
processes. Gradients are averaged by DistributedDataParallel (`parallel: ddp`) or reduce-scattered
by FSDP2's `fully_shard` (`parallel: fsdp`, parameters and optimizer state sharded, for the large
presets). Checkpoints are always full, unsharded state dicts in the single-process layout; rank 0
writes them and the logs; every rank reads them on resume (the run folder must be shared).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from rlir.errors import ConfigError

PARALLEL = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int, what: str = "batch_size") -> slice:
        """This rank's rows of a global batch of n (n must split evenly: each rank does equal work)."""
        if n % self.world:
            raise ConfigError(f"{what} ({n}) must be divisible by the number of processes ({self.world})")
        b = n // self.world
        return slice(self.rank * b, (self.rank + 1) * b)

    def autocast(self):
        """bf16 autocast where asked for (matmuls in bf16, reductions and the loss stay float32)."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def _reduce(self, values: dict[str, float], op) -> dict[str, float]:
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=op)
        return dict(zip(keys, t.tolist()))

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (the same on every rank afterwards)."""
        return {k: v / self.world for k, v in self._reduce(values, dist.ReduceOp.SUM).items()}

    def max(self, values: dict[str, float]) -> dict[str, float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one (so all ranks stop or skip together)."""
        return self.max({"flag": float(flag)})["flag"] > 0

    def mean_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor averaged over ranks (no gradient flows through it)."""
        if self.world == 1:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.world

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors of all ranks along dim 0, in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t, device=self.comm_device) for _ in range(self.world)]
        dist.all_gather(parts, t.to(self.comm_device).contiguous())
        return torch.cat(parts).to(t.device)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def comm_device(self) -> str:
        return self.device if self.device.startswith("cuda") else "cpu"


def init(device: str = "cpu", precision: str = "fp32") -> Dist:
    """Join the process group torchrun describes (env:// rendezvous), or run as one process."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    from rlir.utils.device import check_device
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=device, precision=precision)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, device, precision)


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes checkpoints, logs and media."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (transformer layers) each model names in `_no_split_modules` (HF's convention)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of keeping them (memory for compute)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    units = set(map(id, shard_units(model)))
    if not units:
        raise ConfigError(f"{type(model).__name__} names no blocks for activation checkpointing")
    apply_activation_checkpointing(model, check_fn=lambda m: id(m) in units)


def wrap(model: nn.Module, d: Dist, parallel: str = "ddp", forward_methods: tuple[str, ...] = ()) -> nn.Module:
    """DDP around the model, or fully_shard on each block and the root. One process: the model itself.

    forward_methods: methods other than forward that run the model (samplers), which FSDP must
    also unshard parameters for."""
    if parallel not in PARALLEL:
        raise ConfigError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if d.world == 1:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    # our models return views (x.view(...)); nothing modifies a model's output in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(torch.device(d.device).type, (d.world,))
    for m in shard_units(model):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    return model.module if isinstance(model, DDP) else model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


_FULL = dict(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict (gathered from the shards under FSDP: every rank must call it)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(**_FULL))
    return unwrap(model).state_dict()


def load_model_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
    else:
        unwrap(model).load_state_dict(sd, strict=True)


def _param_names(model: nn.Module) -> list[str]:
    """Parameter names in optimizer order (the order of model.parameters())."""
    return [n.replace("_checkpoint_wrapped_module.", "") for n, _ in unwrap(model).named_parameters()]


def optim_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """torch's single-process optimizer state dict (params numbered in order), also under FSDP."""
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(**_FULL))
    if not sd:                                     # ranks other than 0 receive nothing (they do not write)
        return {}
    index = {n: i for i, n in enumerate(_param_names(model))}
    groups = [{**g, "params": [index[p] for p in g["params"]]} for g in sd["param_groups"]]
    return {"state": {index[k]: v for k, v in sd["state"].items()}, "param_groups": groups}


def load_optim_state(model: nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
    if not is_sharded(model):
        opt.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = _param_names(model)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    full = {"state": {names[int(i)]: v for i, v in sd["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, opt, full, options=StateDictOptions(full_state_dict=True))


def all_reduce_grads(params, d: Dist, bucket_mb: float = 25.0) -> None:
    """Average gradients over ranks in flat buckets (what DDP does after backward), for loops whose
    ranks run different numbers of backward passes per step or run the model through methods other
    than forward (the RL trainer): DDP's hooks cannot follow those."""
    if d.world == 1:
        return
    params = [p for p in params if p.requires_grad]
    # a parameter with a gradient on any rank gets one on all (zeros where a rank had no rows this
    # step); one with a gradient nowhere stays without, so the optimizer skips it as one process would
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=d.comm_device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    params = [p for p, h in zip(params, has.tolist()) if h]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    bucket, size = [], 0
    for g in grads + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel() * g.element_size()
        if bucket and (g is None or size >= bucket_mb * 2**20):
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            flat /= d.world
            o = 0
            for b in bucket:
                b.copy_(flat[o:o + b.numel()].view_as(b))
                o += b.numel()
            bucket, size = [], 0

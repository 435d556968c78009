"""Random draws for batches made of groups, each group from its own generator.

A GRPO step rolls out `num_generations` videos per prompt. With one generator for the whole batch a
group's rollouts would depend on which other groups share its batch, and so on the number of
processes the batch is split over. `GroupGenerators` gives every group its own seeded generator,
so a group is sampled the same whether it is alone, in a batch of 64, or on rank 3 of 8.

The samplers take either a plain `torch.Generator` (or None) or a `GroupGenerators`.
"""
from __future__ import annotations

import torch


class GroupGenerators:
    def __init__(self, seeds: list[int], group_size: int, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.size = group_size
        self.gens = [torch.Generator(device=self.device).manual_seed(int(s) % 2**63) for s in seeds]

    def regroup(self, group_size: int) -> "GroupGenerators":
        """The same generators (their streams shared, not copied) drawing `group_size` rows per group."""
        view = object.__new__(GroupGenerators)
        view.device, view.size, view.gens = self.device, group_size, self.gens
        return view

    def __len__(self) -> int:          # rows covered
        return self.size * len(self.gens)

    def _check(self, n: int) -> None:
        if n != len(self):
            raise ValueError(f"a batch of {n} rows drawn from {len(self.gens)} groups of {self.size}")

    def draw(self, fn, shape: tuple[int, ...]) -> torch.Tensor:
        self._check(shape[0])
        return torch.cat([fn((self.size, *shape[1:]), generator=g, device=self.device) for g in self.gens])

    def multinomial(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        self._check(len(probs))
        s = self.size
        return torch.cat([torch.multinomial(probs[i * s:(i + 1) * s], n, generator=g) for i, g in enumerate(self.gens)])


def randn(shape, generator, device) -> torch.Tensor:
    if isinstance(generator, GroupGenerators):
        return generator.draw(torch.randn, tuple(shape)).to(device)
    return torch.randn(shape, generator=generator, device=device)


def rand(shape, generator, device) -> torch.Tensor:
    if isinstance(generator, GroupGenerators):
        return generator.draw(torch.rand, tuple(shape)).to(device)
    return torch.rand(shape, generator=generator, device=device)


def multinomial(probs: torch.Tensor, n: int, generator) -> torch.Tensor:
    if isinstance(generator, GroupGenerators):
        return generator.multinomial(probs, n)
    return torch.multinomial(probs, n, generator=generator)


def group_seeds(seed: int, step: int, round_: int, groups: range) -> list[int]:
    """A seed per global group index: the same group of the same step gets the same seed anywhere."""
    return [((seed * 1_000_003 + step) * 1_009 + round_) * 1_000_033 + k for k in groups]

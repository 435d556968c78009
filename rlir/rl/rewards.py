"""The inverse reward (paper Eq. 3) and its variants, on top of an IDM.

    R = (1/n) sum_i 1[a_hat_i == a_i]      over the n = T-1 actions a video of T frames shows

`a_hat` is the IDM's argmax (deterministic). A frame agrees when
  mode "all":        all 9 groups match,
  mode "per_group":  the share of the 9 groups that match (partial credit),
and the soft variant "loglik" is the IDM's mean log-likelihood of the true actions,
(1/n) sum_i sum_g log p_IDM(a_i^g | video).
"""
from __future__ import annotations

import torch

MODES = ("all", "per_group", "loglik")


def inverse_reward(logits: list[torch.Tensor], actions: torch.Tensor, mode: str = "all") -> torch.Tensor:
    """logits: per group [B, n, K_g]; actions [B, >=n, 9] -> reward [B] (float32)."""
    if mode not in MODES:
        raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")
    n = logits[0].shape[1]
    true = actions[:, :n].long()
    if mode == "loglik":
        lp = torch.stack([torch.log_softmax(lg.float(), -1).gather(-1, true[..., g:g + 1]).squeeze(-1)
                          for g, lg in enumerate(logits)], -1)              # [B, n, 9]
        return lp.sum(-1).mean(-1)
    match = torch.stack([lg.argmax(-1) for lg in logits], -1) == true       # [B, n, 9]
    per_frame = match.all(-1).float() if mode == "all" else match.float().mean(-1)
    return per_frame.mean(-1)


class InverseReward:
    """Scores generated videos with a frozen IDM: batched, no gradient, deterministic."""

    def __init__(self, idm: torch.nn.Module, mode: str = "all", batch_size: int = 64, device: str = "cpu"):
        if mode not in MODES:
            raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")
        self.idm, self.mode, self.batch_size, self.device = idm.eval(), mode, batch_size, device
        for p in self.idm.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, frames, actions) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3], actions [B, T, 9] -> reward [B]."""
        frames, actions = torch.as_tensor(frames), torch.as_tensor(actions)
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [B, T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if actions.shape[:2] != frames.shape[:2] or actions.shape[-1] != 9:
            raise ValueError(f"actions must be [B, T, 9] matching frames {list(frames.shape[:2])}, "
                             f"got {list(actions.shape)}")
        out = []
        for s in range(0, len(frames), self.batch_size):
            logits = self.idm(frames[s:s + self.batch_size].to(self.device))
            out.append(inverse_reward(logits, actions[s:s + self.batch_size].to(self.device), self.mode).cpu())
        return torch.cat(out)


# --- Pluggable rewards for post-training ---------------------------------------------------------
# A reward function maps (generated video, real video, actions) to one number per video:
#     fn(generated uint8 [B, T, H, W, 3], real uint8 [B, T, H, W, 3], actions int [B, T, 9]) -> float [B]
# Frame 0 is the given frame in both videos; rewards look at frames 1..T-1 where they compare pixels.

class InverseRewardFn:
    """RLIR's reward (Eq. 3): the share of frames whose actions the IDM recovers from the generated video."""

    def __init__(self, idm: torch.nn.Module, mode: str = "all", batch_size: int = 64, device: str = "cpu"):
        self.name = "inverse"
        self.scorer = InverseReward(idm, mode, batch_size, device)

    def __call__(self, generated, real, actions) -> torch.Tensor:
        return self.scorer(generated, actions)


class PixelReward:
    """RLVR-World's baseline, reward = -(L1 + perceptual term) against the real frames 1..T-1.

    RLVR-World's perceptual term is LPIPS, whose network weights cannot be fetched offline, so the term
    here is (1 - SSIM) (torchmetrics, Gaussian window 11): the reward is named `pixel_l1_ssim`, not LPIPS."""

    def __init__(self):
        self.name = "pixel_l1_ssim"

    @torch.no_grad()
    def __call__(self, generated, real, actions) -> torch.Tensor:
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim
        g = torch.as_tensor(generated)[:, 1:].float() / 255
        r = torch.as_tensor(real)[:, 1:].float() / 255
        B, T = g.shape[:2]
        l1 = (g - r).abs().flatten(1).mean(1)
        flat = lambda x: x.reshape(B * T, *x.shape[2:]).permute(0, 3, 1, 2)      # noqa: E731
        s = ssim(flat(g), flat(r), data_range=1.0, reduction="none").view(B, T).mean(1)
        return -(l1 + (1 - s))


class PreferenceReward:
    """A learned-preference reward (VideoAlign-like): any model that scores a video, [B,T,H,W,3] uint8 -> [B].

    Give it as a callable, or as "package.module:function" (the function may build and cache its model)."""

    def __init__(self, scorer, name: str = "preference"):
        if isinstance(scorer, str):
            import importlib
            mod, _, fn = scorer.partition(":")
            if not mod or not fn:
                from rlir.errors import ConfigError
                raise ConfigError(f"preference reward {scorer!r} must be given as 'module:function'")
            try:
                scorer = getattr(importlib.import_module(mod), fn)
            except (ImportError, AttributeError) as e:
                from rlir.errors import ConfigError
                raise ConfigError(f"preference reward {scorer!r} cannot be loaded: {e}") from None
        self.scorer, self.name = scorer, name

    @torch.no_grad()
    def __call__(self, generated, real, actions) -> torch.Tensor:
        return torch.as_tensor(self.scorer(torch.as_tensor(generated)), dtype=torch.float32)


def combine_rewards(fns: list, weights: list[float], generated, real, actions) -> tuple[torch.Tensor, dict]:
    """Weighted sum of reward functions -> (total [B], {name: [B]}); a function that returns anything
    but B finite numbers is a RewardError that names it."""
    from rlir.errors import RlirError
    B = len(generated)
    total, parts = torch.zeros(B), {}
    for fn, w in zip(fns, weights):
        r = fn(generated, real, actions)
        r = torch.as_tensor(r).detach().float().cpu()
        if r.shape != (B,):
            raise RlirError(f"reward function {getattr(fn, 'name', fn)!r} returned shape {list(r.shape)}, "
                            f"expected [{B}] (one number per video)")
        if not torch.isfinite(r).all():
            raise RlirError(f"reward function {getattr(fn, 'name', fn)!r} returned non-finite values")
        parts[getattr(fn, "name", str(fn))] = r
        total += w * r
    return total, parts

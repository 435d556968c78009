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

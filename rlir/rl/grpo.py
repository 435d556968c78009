"""GRPO's pieces as pure functions: group advantages, the clipped objective, KL, loss aggregation.

Names and defaults follow TRL's GRPOConfig (ANCHORS.md). For a group of G rollouts of one prompt
with rewards r_1..r_G (paper Eq. 2):

    A_i = (r_i - mean(r)) / (std(r) + 1e-4)                         scale_rewards = "group"
    L   = -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta KL,   rho = pi / pi_old
    KL  = exp(ref - logp) - (ref - logp) - 1                          (k3, per token)

Frame-level credit (`advantage: frame`): the IDM gives a verdict r_{i,t} per generated frame, so each
(rollout, frame) gets its own advantage from that frame's reward-to-go,

    R_{i,t} = sum_{k>=t} gamma^(k-t) r_{i,k}         A_{i,t} = (R_{i,t} - mean_j R_{j,t}) / (std_i,t R + 1e-4)

centred per frame over the group and scaled by one std per group (pooled over its rollouts and
frames: a per-frame std amplifies the noise of frames on which the group hardly differs). The tokens
(AR) or denoising steps (diffusion) of generated frame t+1 get A_{i,t}.

The token version (AR world model) weights tokens by a mask (1 on generated visual tokens, 0 on the
forced action tokens and frame 0). The Flow-GRPO version (diffusion world model) has one ratio per
(frame, denoising step), advantages clamped, and a KL on the step's Gaussian mean.
"""
from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """rewards [P*G] (a prompt's G rollouts next to each other) -> advantages [P*G]; each group sums to 0."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    r = rewards.float().view(-1, num_generations)
    adv = r - r.mean(1, keepdim=True)
    if scale_rewards == "group":
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    elif scale_rewards == "batch":
        adv = adv / (r.std() + 1e-4)
    return adv.view(-1)


def rewards_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """[B, n] per-frame rewards -> R_t = sum_{k>=t} gamma^(k-t) r_k (gamma = 0: r_t itself)."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = rewards.float()
    if gamma == 0:
        return r.clone()
    out, acc = torch.empty_like(r), torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        acc = r[:, t] + gamma * acc
        out[:, t] = acc
    return out


def frame_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     gamma: float = 0.0) -> torch.Tensor:
    """Per-frame rewards [P*G, n] -> per-frame advantages [P*G, n]; each group's column sums to 0."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.dim() != 2 or rewards.shape[0] % num_generations:
        raise ValueError(f"rewards {list(rewards.shape)} must be [groups x {num_generations}, frames]")
    R = rewards_to_go(rewards, gamma)
    n = R.shape[1]
    r = R.view(-1, num_generations, n)
    adv = r - r.mean(1, keepdim=True)
    if scale_rewards == "group":
        adv = adv / (r.flatten(1).std(1).view(-1, 1, 1) + 1e-4)
    elif scale_rewards == "batch":
        adv = adv / (R.std() + 1e-4)
    return adv.reshape(-1, n)


def token_advantages(adv: torch.Tensor, seq_len: int, tokens_per_frame: int, block: int) -> torch.Tensor:
    """AR credit: frame advantages [B, n] -> per-token [B, seq_len]; the visual tokens of frame t+1
    (positions (t+1)*block .. +tokens_per_frame) get adv[:, t]; frame 0 and action tokens get 0 (they
    are masked out of the loss anyway). Sequence advantages [B] are returned unchanged (broadcast)."""
    if adv.dim() == 1:
        return adv
    out = adv.new_zeros(adv.shape[0], seq_len)
    for t in range(adv.shape[1]):      # a sequence cut after a frame (branching rollouts) takes the frames it has
        s = (t + 1) * block
        if s >= seq_len:
            break
        if s + tokens_per_frame > seq_len:
            raise ValueError(f"a sequence of {seq_len} tokens ends inside frame {t + 1}")
        out[:, s:s + tokens_per_frame] = adv[:, t:t + 1]
    return out


def zero_std_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """[P] bool: groups whose rewards are all equal (no learning signal)."""
    r = rewards.float().view(-1, num_generations)
    return (r.max(1).values - r.min(1).values) <= 1e-8


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate, >= 0, exactly 0 where logp == ref_logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, epsilon: float,
                      epsilon_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """Per-element -min(rho A, clip(rho) A) (adv broadcast to logp's shape) and which elements clipped."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)
    adv = adv.view(adv.shape + (1,) * (logp.dim() - adv.dim()))
    loss = -torch.min(ratio * adv, ratio.clamp(1 - epsilon, 1 + eps_high) * adv)
    with torch.no_grad():
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
    return loss, {"ratio": ratio.detach(), "low": low, "high": high}


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_tokens: int | None = None
              ) -> torch.Tensor:
    """TRL's loss aggregations over [B, S] with a mask.

    grpo: mean over each sequence's tokens, then over sequences; bnpo/dapo: mean over all tokens of the
    batch (dapo normalises by the global batch's tokens, equal to bnpo in one process);
    dr_grpo: sum over tokens / (B * max_tokens), a constant that removes the length bias."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if loss_type in ("bnpo", "dapo"):
        return (per_token * m).sum() / m.sum().clamp(min=1)
    return (per_token * m).sum() / (per_token.shape[0] * (max_tokens or per_token.shape[-1]))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.to(torch.float32)
    return float((x.float() * m).sum() / m.sum().clamp(min=1))


def token_grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                    ref_logp: torch.Tensor | None = None, loss_type: str = "dapo",
                    max_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """The AR world model's GRPO loss over tokens [B, S]; mask is 0 on action tokens and frame 0,
    so they contribute neither to the loss nor to its gradient."""
    m = mask > 0
    logp = torch.where(m, logp, torch.zeros_like(logp))          # a forced token's log-prob never enters
    old_logp = torch.where(m, old_logp, torch.zeros_like(old_logp))
    per_token, clip = clipped_objective(logp, old_logp, adv, epsilon, epsilon_high)
    metrics = {"clip_ratio/low_mean": masked_mean(clip["low"], m),
               "clip_ratio/high_mean": masked_mean(clip["high"], m),
               "clip_ratio/region_mean": masked_mean(clip["low"] | clip["high"], m),
               "ratio_mean": masked_mean(clip["ratio"], m)}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference model's log-probs")
        kl = k3_kl(logp, torch.where(m, ref_logp, torch.zeros_like(ref_logp)))
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), m)
    return aggregate(per_token, m, loss_type, max_tokens), metrics


def flow_grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_range: float,
                   adv_clip_max: float = 5.0, beta: float = 0.0, mean: torch.Tensor | None = None,
                   ref_mean: torch.Tensor | None = None, std: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict]:
    """Flow-GRPO's loss for one selected denoising step of every generated frame.

    logp/old_logp [B, F] (per-frame Gaussian log-probs, meaned over dimensions), adv [B] clamped to
    +-adv_clip_max; KL on the step mean: mean((mu - mu_ref)^2) / (2 std^2)."""
    adv = adv.clamp(-adv_clip_max, adv_clip_max)
    per, clip = clipped_objective(logp, old_logp, adv, clip_range, clip_range)
    ones = torch.ones_like(logp, dtype=torch.bool)
    metrics = {"clip_ratio/low_mean": masked_mean(clip["low"], ones),
               "clip_ratio/high_mean": masked_mean(clip["high"], ones),
               "clip_ratio/region_mean": masked_mean(clip["low"] | clip["high"], ones),
               "ratio_mean": float(clip["ratio"].mean())}
    loss = per.mean()
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("beta > 0 needs the step means of the policy and the reference and the step std")
        kl = ((mean - ref_mean) ** 2).flatten(2).mean(-1) / (2 * std.flatten(2).squeeze(-1) ** 2)   # [B, F]
        loss = loss + beta * kl.mean()
        metrics["kl"] = float(kl.detach().mean())
    return loss, metrics

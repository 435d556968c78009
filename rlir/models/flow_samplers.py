"""Samplers for the diffusion world model, frame by frame: ODE (Euler, DPM-Solver++) and Flow-GRPO's SDE.

Convention (rectified flow): x_sigma = (1 - sigma) x_0 + sigma * eps, the model predicts v = eps - x_0,
sigma runs 1 -> 0. The SDE step (Flow-GRPO, in float32), with dt = sigma' - sigma < 0:
    std_t = eta * sqrt(sigma / (1 - sigma))            (sigma = 1 in the denominator replaced by sigma_1)
    mean  = x (1 + std_t^2 / (2 sigma) dt) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt
    x'    = mean + std_t sqrt(-dt) * noise
    log p = log N(x' | mean, (std_t sqrt(-dt))^2), meaned over all but the batch dimension.
With eta = 0 it is exactly the Euler ODE step x' = x + v dt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlir.models.dit_world_model import DiTWorldModel, append_cache


def flow_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 noise levels from 1 to 0; shift > 1 spends more steps at high noise (SD3's time shift)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor,
             eta: float, sigma_1: float, noise: torch.Tensor | None = None, x_next: torch.Tensor | None = None):
    """One Flow-GRPO step. Give `noise` to sample x', or `x_next` to score a recorded x'.
    Returns (x_next, mean, std, log_prob [B])."""
    x, v = x.float(), v.float()
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    sigma, sigma_next = sigma.reshape(shape) if sigma.dim() else sigma, \
        sigma_next.reshape(shape) if sigma_next.dim() else sigma_next
    dt = sigma_next - sigma
    std_t = eta * torch.sqrt(sigma / (1 - torch.where(sigma >= 1, torch.full_like(sigma, sigma_1), sigma)))
    mean = x * (1 + std_t ** 2 / (2 * sigma) * dt) + v * (1 + std_t ** 2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * torch.sqrt(-dt)
    if x_next is None:
        x_next = mean if noise is None else mean + std * noise.float()
    x_next = x_next.float()
    if eta == 0:
        return x_next, mean, std, torch.zeros(x.shape[0], device=x.device)
    lp = -((x_next - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return x_next, mean, std, lp.flatten(1).mean(1)


def ode_solve(velocity, x: torch.Tensor, steps: int, solver: str = "dpm++", shift: float = 1.0) -> torch.Tensor:
    """Integrate dx/dsigma = velocity(x, sigma) from sigma 1 to 0. solver: 'euler' or 'dpm++'
    (diffusers' DPMSolverMultistepScheduler, 2nd-order DPM-Solver++ on flow sigmas)."""
    if solver == "euler":
        s = flow_sigmas(steps, shift)
        for i in range(steps):
            x = x + (s[i + 1] - s[i]) * velocity(x, float(s[i]))
        return x
    if solver != "dpm++":
        raise ValueError(f"solver must be 'euler' or 'dpm++', got {solver!r}")
    from diffusers import DPMSolverMultistepScheduler
    sch = DPMSolverMultistepScheduler(num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=shift,
                                      prediction_type="flow_prediction", algorithm_type="dpmsolver++",
                                      solver_order=2, final_sigmas_type="zero")
    sch.set_timesteps(steps, device=x.device)
    for i, t in enumerate(sch.timesteps):
        x = sch.step(velocity(x, float(sch.sigmas[i])), t, x).prev_sample
    return x


@dataclass
class SDETrajectory:
    latents: torch.Tensor    # [B, F, N, C] the rollout's clean frames (frame 0 given)
    steps: torch.Tensor      # [B, F-1, S+1, N, C] x at every noise level of frames 1..F-1 (x_S = the frame)
    logps: torch.Tensor      # [B, F-1, S] log p of each step under the sampling policy
    sigmas: torch.Tensor     # [S+1]
    eta: float


@torch.no_grad()
def rollout(model: DiTWorldModel, z0: torch.Tensor, actions: torch.Tensor, frames: int, steps: int = 18,
            mode: str = "ode", solver: str = "dpm++", eta: float = 0.75, shift: float = 1.0,
            generator=None, context_sigma: float = 0.0, window_start: torch.Tensor | None = None,
            window: int = 0):
    """Generate frames 1..frames-1 from frame 0's latents z0 [B, N, C] under actions [B, >=frames-1, 9].

    mode 'ode': returns latents [B, F, N, C]. mode 'sde' (Flow-GRPO): returns an SDETrajectory.
    With `window` > 0 (MixGRPO's mixed sampler) sample b takes SDE steps only at window_start[b] ..
    window_start[b] + window - 1 and Euler ODE steps elsewhere (log-prob 0 there): all of its
    randomness, and so all the credit, lives in the steps that are trained.
    The finished frames' keys/values are cached, computed once at sigma = 0, or (ODE only) after
    re-noising each frame to `context_sigma` (diffusion forcing's stabilisation; the SDE's scorer
    assumes a clean context, so it refuses this).
    generator: a torch.Generator, or GroupGenerators (rlir/utils/rand.py) for per-group draws."""
    from rlir.utils.rand import randn
    if context_sigma and mode != "ode":
        raise ValueError("context_sigma > 0 is for the ODE sampler only (score_steps assumes a clean context)")
    B, N, C = z0.shape
    ctx_sigma = torch.full((B,), float(context_sigma), device=z0.device)

    def cache_frame(z, a, f, cache):
        if context_sigma:
            z = (1 - context_sigma) * z + context_sigma * randn(z.shape, generator, z0.device)
        return append_cache(cache, model.step_frame(z, ctx_sigma, a, f, cache)[1])

    cache = cache_frame(z0, None, 0, None)
    out, traj, logps = [z0], [], []
    s = flow_sigmas(steps, shift)
    for f in range(1, frames):
        a = actions[:, f - 1]
        x = randn((B, N, C), generator, z0.device)

        def velocity(x_, sigma, a=a, f=f):
            return model.step_frame(x_, torch.full((B,), sigma, device=z0.device), a, f, cache)[0]
        if mode == "ode":
            x = ode_solve(velocity, x, steps, solver, shift)
        elif mode == "sde":
            xs, lps = [x], []
            for i in range(steps):
                noise = randn(x.shape, generator, z0.device)        # drawn at every step: same streams
                v = velocity(x, float(s[i]))
                x_sde, _, _, lp = sde_step(x, v, s[i], s[i + 1], eta, float(s[1]), noise)
                if window:
                    inside = (window_start <= i) & (i < window_start + window)              # [B]
                    x_ode = x.float() + v.float() * (s[i + 1] - s[i])                       # eta = 0
                    x_sde = torch.where(inside.view(-1, 1, 1), x_sde, x_ode)
                    lp = torch.where(inside, lp, torch.zeros_like(lp))
                x = x_sde
                xs.append(x)
                lps.append(lp)
            traj.append(torch.stack(xs, 1))
            logps.append(torch.stack(lps, 1))
        else:
            raise ValueError(f"mode must be 'ode' or 'sde', got {mode!r}")
        cache = cache_frame(x, a, f, cache)
        out.append(x)
    latents = torch.stack(out, 1)
    if mode == "ode":
        return latents
    return SDETrajectory(latents, torch.stack(traj, 1), torch.stack(logps, 1), s, eta)


def score_steps(model: DiTWorldModel, traj: SDETrajectory, actions: torch.Tensor, step_index: torch.Tensor):
    """Recompute, with gradient, the log-prob of step `step_index[b]` for every generated frame of sample b.

    One teacher-forced pass: the clean frames (as the sampler cached them) and, for each frame, its
    latent before the chosen step. Returns (log_prob [B, F-1], mean [B, F-1, N, C], std [B, F-1, 1, 1])."""
    B, Fm1 = traj.steps.shape[:2]
    idx = step_index.long().view(B, 1, 1, 1, 1).expand(B, Fm1, 1, *traj.steps.shape[3:])
    x_i = traj.steps.gather(2, idx)[:, :, 0]
    x_next = traj.steps.gather(2, idx + 1)[:, :, 0]
    sigma = traj.sigmas.to(x_i.device)[step_index.long()]                   # [B]
    sigma_next = traj.sigmas.to(x_i.device)[step_index.long() + 1]
    v = model.velocity_teacher_forced(traj.latents, x_i, sigma[:, None].expand(B, Fm1), actions)
    flat = lambda t: t.reshape(B * Fm1, *t.shape[2:])                          # noqa: E731
    rep = lambda t: t[:, None].expand(B, Fm1).reshape(-1)                      # noqa: E731
    _, mean, std, lp = sde_step(flat(x_i), flat(v), rep(sigma), rep(sigma_next), traj.eta, float(traj.sigmas[1]),
                                x_next=flat(x_next))
    return lp.view(B, Fm1), mean.view(B, Fm1, *mean.shape[1:]), std.view(B, Fm1, 1, 1)

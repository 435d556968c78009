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

from rlir.models.dit_world_model import DiTWorldModel, KVCache, append_cache, split_cache


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


def window_schedule(window_start: torch.Tensor, window: int, steps: int, outer_steps: int):
    """MixGRPO-Flash's per-sample schedule on the grid of `steps` SDE noise levels: at most `outer_steps`
    DPM-Solver++ steps from sigma 1 to the window's start, the window's W SDE steps on the grid, and at
    most `outer_steps` DPM-Solver++ steps from its end to 0 (the ODE steps carry no randomness and are
    never trained, so how finely they are taken is free). Samples are aligned slot by slot: pre-window
    slots are padded at the front, post-window ones at the back; a slot no sample uses is dropped.
    Returns grid indices (from, to) [B, L] (long) and the slot kind [B, L]: 0 pad, 1 ODE, 2 SDE."""
    rows = []
    for w in window_start.tolist():
        n_pre, n_post = min(w, outer_steps), min(steps - w - window, outer_steps)
        pre = torch.linspace(0, w, n_pre + 1).round().long().tolist()
        post = torch.linspace(w + window, steps, n_post + 1).round().long().tolist()
        slots = ([(0, 0, 0)] * (outer_steps - n_pre) + [(pre[j], pre[j + 1], 1) for j in range(n_pre)]
                 + [(w + j, w + j + 1, 2) for j in range(window)]
                 + [(post[j], post[j + 1], 1) for j in range(n_post)] + [(steps, steps, 0)] * (outer_steps - n_post))
        rows.append(slots)
    t = torch.tensor(rows, dtype=torch.long)                       # [B, L, 3]
    used = (t[..., 2] > 0).any(0)
    return t[:, used, 0], t[:, used, 1], t[:, used, 2]


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma), alpha = 1 - sigma: DPM-Solver's time variable."""
    sigma = sigma.clamp(1e-6, 1 - 1e-6)
    return torch.log((1 - sigma) / sigma)


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
            window: int = 0, outer_steps: int = 0, fold_cache: bool = True, prealloc_cache: bool = True):
    """Generate frames 1..frames-1 from frame 0's latents z0 [B, N, C] under actions [B, >=frames-1, 9].

    mode 'ode': returns latents [B, F, N, C]. mode 'sde' (Flow-GRPO): returns an SDETrajectory.
    With `window` > 0 (MixGRPO's mixed sampler) sample b takes SDE steps only at window_start[b] ..
    window_start[b] + window - 1 and Euler ODE steps elsewhere (log-prob 0 there): all of its
    randomness, and so all the credit, lives in the steps that are trained. With `outer_steps` K > 0 as
    well (MixGRPO-Flash) the ODE outside the window takes at most K DPM-Solver++ steps on each side
    instead of every grid step (`window_schedule`): K + W + K denoiser calls a frame instead of S. The
    recorded states are then only those of the window (grid indices window_start .. + W), which is all
    that `score_steps` reads for the trained steps; the others stay zero.
    The finished frames' keys/values are cached, computed once at sigma = 0, or (ODE only) after
    re-noising each frame to `context_sigma` (diffusion forcing's stabilisation; the SDE's scorer
    assumes a clean context, so it refuses this). With `fold_cache` a finished frame's keys are computed
    in the next frame's first denoiser call (`FrameDenoiser`), not in a pass of their own; with
    `prealloc_cache` they are kept in preallocated buffers (`KVCache`), not concatenated at every call.
    generator: a torch.Generator, or GroupGenerators (rlir/utils/rand.py) for per-group draws."""
    from rlir.utils.rand import randn
    if context_sigma and mode != "ode":
        raise ValueError("context_sigma > 0 is for the ODE sampler only (score_steps assumes a clean context)")
    B, N, C = z0.shape
    ctx_sigma = torch.full((B,), float(context_sigma), device=z0.device)

    def finished(z, a):
        """A done frame as the cache will hold it: clean, or re-noised to context_sigma."""
        if context_sigma:
            z = (1 - context_sigma) * z + context_sigma * randn(z.shape, generator, z0.device)
        return z, ctx_sigma, a

    cache = KVCache(len(model.blocks), frames * N) if prealloc_cache else None
    done = finished(z0, None)
    out, traj, logps = [z0], [], []
    s = flow_sigmas(steps, shift)
    flash = mode == "sde" and window and outer_steps
    if flash:
        sched = window_schedule(window_start.cpu(), window, steps, outer_steps)
    for f in range(1, frames):
        a = actions[:, f - 1]
        x = randn((B, N, C), generator, z0.device)
        den = FrameDenoiser(model, cache, done, a, f, fold_cache)
        if flash:
            x, xs, lps = _flash_frame(den, x, s.to(z0.device), sched, window, eta, generator)
            traj.append(xs)
            logps.append(lps)
        elif mode == "ode":
            x = ode_solve(lambda x_, sigma: den(x_, torch.full((B,), sigma, device=z0.device)), x, steps, solver, shift)
        elif mode == "sde":
            xs, lps = [x], []
            for i in range(steps):
                noise = randn(x.shape, generator, z0.device)        # drawn at every step: same streams
                v = den(x, torch.full((B,), float(s[i]), device=z0.device))
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
        cache, done = den.cache, finished(x, a)     # the last frame's keys are never needed: no pass for them
        out.append(x)
    latents = torch.stack(out, 1)
    if mode == "ode":
        return latents
    return SDETrajectory(latents, torch.stack(traj, 1), torch.stack(logps, 1), s, eta)


class FrameDenoiser:
    """The velocity of frame `index` under `action` with the cached past. The frame before it, done but not
    yet cached (`finished` = (z, sigma, its action)), rides along with the first call (fold) or gets a pass
    of its own first: the same keys either way, one call a frame fewer folded. `cache` (a KVCache, or the
    per-layer (k, v) list that append_cache grows) then holds it."""

    def __init__(self, model: DiTWorldModel, cache, finished: tuple, action, index: int, fold: bool = True):
        self.model, self.cache, self.finished, self.action, self.index = model, cache, finished, action, index
        if not fold:
            z, sig, a = finished
            kvs = model.step_frame(z, sig, a, index - 1, cache)[1]
            self._keep(kvs, z.shape[1])
            self.finished = None

    def _keep(self, kvs: list, n: int) -> None:
        if isinstance(self.cache, KVCache):
            self.cache.commit(n)
        else:
            self.cache = append_cache(self.cache, split_cache(kvs, n)[0])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.finished is None:
            return self.model.step_frame(x, sigma, self.action, self.index, self.cache)[0]
        v, kvs = self.model.step_frame(x, sigma, self.action, self.index, self.cache, finished=self.finished)
        self._keep(kvs, x.shape[1])
        self.finished = None
        return v


def _flash_frame(velocity, x, s, sched, window: int, eta: float, generator):
    """One frame of the mixed sampler on a `window_schedule`: DPM-Solver++(2M) outside the window
    (restarted after it: the SDE's noise leaves the ODE's path, so the previous prediction no longer
    applies; the step to sigma 0 is first-order, as diffusers' lower_order_final), Flow-GRPO's SDE in it.
    The window's noises are drawn up front, W per frame whatever the schedule, so a group's draws do not
    depend on which groups share its batch. Returns (x0 [B, N, C], states [B, S+1, N, C], logps [B, S])."""
    from rlir.utils.rand import randn
    i_from, i_to, kind = (t.to(x.device) for t in sched)
    B, S = x.shape[0], len(s) - 1
    noises = torch.stack([randn(x.shape, generator, x.device) for _ in range(window)])     # [W, B, N, C]
    states = torch.zeros(B, S + 1, *x.shape[1:], device=x.device)
    logps = torch.zeros(B, S, device=x.device)
    rows = torch.arange(B, device=x.device)
    x = x.float()
    d_prev = lam_prev = None
    n_sde = torch.zeros(B, dtype=torch.long, device=x.device)
    shape = (B,) + (1,) * (x.dim() - 1)
    for l in range(i_from.shape[1]):
        sig, sig_next, k = s[i_from[:, l]], s[i_to[:, l]], kind[:, l]
        v = velocity(x, sig).float()
        # ODE: DPM-Solver++ in data prediction, D = x - sigma v; x' = (s'/s) x + (a' - a s'/s) D, a = 1 - sigma
        d0 = x - sig.view(shape) * v
        lam, lam_next = _log_snr(sig), _log_snr(sig_next)
        second = (k == 1) & (sig_next > 0)
        if d_prev is not None:
            second &= (kind[:, l - 1] == 1) & (i_to[:, l - 1] == i_from[:, l])      # same ODE stretch
            c = ((lam_next - lam) / (2 * (lam - lam_prev))).where(second, torch.zeros_like(lam))  # 1 / (2r)
            d = d0 + c.view(shape) * (d0 - d_prev)
        else:
            d = d0
        ratio = (sig_next / sig.clamp(min=1e-12)).view(shape)
        x_ode = ratio * x + ((1 - sig_next).view(shape) - (1 - sig).view(shape) * ratio) * d
        # SDE: this sample's next window noise
        noise = noises[n_sde.clamp(max=window - 1), rows]
        x_sde, _, _, lp = sde_step(x, v, sig, sig_next, eta, float(s[1]), noise)
        is_sde = k == 2
        states[rows[is_sde], i_from[is_sde, l]] = x[is_sde]
        states[rows[is_sde], i_to[is_sde, l]] = x_sde[is_sde]
        logps[rows[is_sde], i_from[is_sde, l]] = lp[is_sde]
        x_new = torch.where(is_sde.view(shape), x_sde, torch.where((k == 1).view(shape), x_ode, x))
        n_sde += is_sde.long()
        d_prev, lam_prev, x = d0, lam, x_new
    return x, states, logps


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

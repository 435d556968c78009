"""Rollouts with log-probs, and their GRPO loss, for each world-model paradigm.

A policy wraps a world model and its codec and does two things for the trainer:
  rollout(frame0, actions, generator) -> Rollouts: the decoded videos plus what the loss needs,
      as tensors with the rollout on the first axis (so groups can be selected and concatenated);
  accumulate(rollouts, idx, adv, ...) -> backward of the GRPO loss of rollouts `idx`, scaled.

The AR policy's ratio is per generated visual token (action tokens and frame 0 masked out). The
diffusion policy's ratio is per (frame, denoising step) of Flow-GRPO's SDE, on a random subset of
the steps of each rollout (timestep selection), the last, near-deterministic step left out.
On the first pass over a batch the "old" log-probs are the current model's own (detached), so the
ratio is exactly 1 before the first update (TRL's convention); the sampler's log-probs agree with
them to float precision (logged as `logp_mismatch`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlir.rl.grpo import flow_grpo_loss, token_grpo_loss


@dataclass
class Rollouts:
    video: torch.Tensor                 # uint8 [B, T, H, W, 3], frame 0 the given frame
    actions: torch.Tensor               # int64 [B, T, 9]
    data: dict[str, torch.Tensor]       # paradigm-specific tensors, batch first
    old: dict[str, torch.Tensor] = field(default_factory=dict)   # filled on the first pass (old/ref log-probs)

    def __len__(self) -> int:
        return len(self.video)

    def select(self, idx: torch.Tensor) -> "Rollouts":
        return Rollouts(self.video[idx], self.actions[idx], {k: v[idx] for k, v in self.data.items()},
                        {k: v[idx] for k, v in self.old.items()})

    @staticmethod
    def cat(parts: list["Rollouts"]) -> "Rollouts":
        return Rollouts(torch.cat([p.video for p in parts]), torch.cat([p.actions for p in parts]),
                        {k: torch.cat([p.data[k] for p in parts]) for k in parts[0].data}, {})


def bf16_shadow(model, shadow, rollout_precision: str):
    """A bfloat16 copy of `model` for the training rollouts (created once, refreshed with the current
    weights at every call), or None: float32 rollouts, or an FSDP-sharded model (its DTensors stay put)."""
    if rollout_precision != "bf16" or any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return None
    if shadow is None:
        import copy
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    for a, b in zip(shadow.parameters(), model.parameters()):
        a.data.copy_(b.data)
    return shadow


class BF16Sampler:
    """What both policies share about `rollout_precision: bf16`: the model their training rollouts sample from."""
    model: torch.nn.Module
    rollout_precision: str
    _shadow = None

    def sampler_model(self):
        """bf16: a bfloat16 copy of the current weights (the projections run 3-4x faster on a CPU with
        avx512_bf16; log-probs and the loss stay float32, and the first pass's "old" log-probs are the float32
        model's, so the ratio is still 1). Otherwise, and under FSDP, the float32 model itself."""
        self._shadow = bf16_shadow(self.model, self._shadow, self.rollout_precision)
        return self.model if self._shadow is None else self._shadow


class ARPolicy(BF16Sampler):
    paradigm = "ar"

    def __init__(self, model, cfg, codec, frames: int, temperature: float = 1.0, top_p: float = 1.0,
                 loss_type: str = "dapo", epsilon: float = 0.2, epsilon_high: float | None = None,
                 beta: float = 0.0, rollout_precision: str = "fp32", **_):
        self.model, self.cfg, self.codec, self.frames = model, cfg, codec, frames
        self.temperature, self.top_p = temperature, top_p
        self.loss_kw = dict(epsilon=epsilon, epsilon_high=epsilon_high, beta=beta, loss_type=loss_type)
        self.rollout_precision = rollout_precision

    @torch.no_grad()
    def rollout(self, frame0: torch.Tensor, actions: torch.Tensor, generator: torch.Generator,
                evaluation: bool = False, eval_top_p: float = 0.8) -> Rollouts:
        from rlir.models.ar_world_model import sample, split_frames
        dev = next(self.model.parameters()).device
        codes0 = self.codec.encode(frame0.to(dev))
        r = sample(self.model if evaluation else self.sampler_model(), self.cfg, codes0, actions.to(dev),
                   frames=self.frames, temperature=self.temperature,
                   top_p=eval_top_p if evaluation else self.top_p, generator=generator)
        video = self.codec.decode(split_frames(r.tokens, self.cfg)).cpu()
        video[:, 0] = frame0
        return Rollouts(video, actions, {"tokens": r.tokens, "logps": r.logps, "mask": r.mask})

    @torch.no_grad()
    def rollout_branch(self, frame0: torch.Tensor, actions: torch.Tensor, generator, group_size: int) -> Rollouts:
        """Branching at one frame (AR-CoPO's, WorldCompass's cheaper credit): per group, one rollout of all
        frames is shared; at a branch frame k (one per call, 1..T-1, drawn from the first group's
        generator) the group's G members each draw their own frame k after the shared frames 0..k-1,
        and keep the shared frames after it. Only frame k's tokens are trained (the mask), the
        sequences are cut after frame k, and the alternatives differ in nothing else: a branch costs
        one frame instead of T-1, and the reward differences within a group are frame k's doing."""
        from rlir.models.ar_world_model import sample, sample_frame, split_frames
        from rlir.utils.rand import rand
        dev = next(self.model.parameters()).device
        G, N, blk = group_size, self.cfg.tokens_per_frame, self.cfg.block
        lead = torch.arange(0, len(frame0), G)
        codes0 = self.codec.encode(frame0[lead].to(dev))
        model = self.sampler_model()
        shared = sample(model, self.cfg, codes0, actions[lead].to(dev), frames=self.frames,
                        temperature=self.temperature, top_p=self.top_p, generator=generator.regroup(1))
        k = 1 + int(rand((1,), generator.gens[0], generator.device).item() * (self.frames - 1))
        start = k * blk
        prefix = shared.tokens[:, :start].repeat_interleave(G, 0)
        tok, lp = sample_frame(model, self.cfg, prefix, self.temperature, self.top_p, generator)
        full = shared.tokens.repeat_interleave(G, 0).clone()
        full[:, start:start + N] = tok
        video = self.codec.decode(split_frames(full, self.cfg)).cpu()
        video[:, 0] = frame0
        tokens = full[:, :start + N]
        mask = torch.zeros(tokens.shape, device=dev)
        mask[:, start:] = 1.0
        logps = torch.zeros(tokens.shape, device=dev)
        logps[:, start:] = lp
        return Rollouts(video, actions, {"tokens": tokens, "logps": logps, "mask": mask,
                                         "branch_frame": torch.full((len(video),), k)})

    def rollout_stats(self, ro: Rollouts) -> dict:
        """The policy's token entropy, estimated as -E[log pi] over the sampled visual tokens (its fall with
        any reward, the random control's included, is drift rather than learning)."""
        m = ro.data["mask"] > 0
        return {"entropy": float(-(ro.data["logps"] * m).sum() / m.sum().clamp(min=1))}

    def accumulate(self, ro: Rollouts, adv: torch.Tensor, scale: float, ref_model=None) -> dict:
        from rlir.models.ar_world_model import score
        from rlir.rl.grpo import token_advantages
        d = ro.data
        adv = token_advantages(adv, d["tokens"].shape[1], self.cfg.tokens_per_frame, self.cfg.block)
        logp = score(self.model, self.cfg, d["tokens"], d["mask"], self.temperature, self.top_p)
        m = d["mask"] > 0
        metrics = {}
        if "logp" not in ro.old:                                          # first pass over this batch
            ro.old["logp"] = logp.detach()
            metrics["logp_mismatch"] = float((logp.detach() - d["logps"]).abs().masked_fill(~m, 0).max())
            if self.loss_kw["beta"] > 0:
                with torch.no_grad():
                    ro.old["ref"] = score(ref_model, self.cfg, d["tokens"], d["mask"], self.temperature, self.top_p)
        loss, lm = token_grpo_loss(logp, ro.old["logp"], adv.to(logp.device), d["mask"],
                                   ref_logp=ro.old.get("ref"), max_tokens=d["mask"].shape[1], **self.loss_kw)
        metrics.update(lm)
        (loss * scale).backward()     # even when non-finite: under FSDP every rank must run its backward
        if not torch.isfinite(loss):  # the trainer then drops the whole update
            return {**metrics, "nonfinite": 1.0}
        metrics["loss"] = loss.item()
        return metrics


class DiffusionPolicy(BF16Sampler):
    paradigm = "diffusion"

    def __init__(self, model, cfg, codec, frames: int, sde_steps: int = 10, noise_level: float = 0.75,
                 timestep_fraction: float = 0.6, clip_range: float = 1e-4, adv_clip_max: float = 5.0,
                 beta: float = 0.0, eval_steps: int = 18, sde_window: int = 0, sde_outer_steps: int = 0,
                 rollout_precision: str = "fp32", **_):
        self.model, self.cfg, self.codec, self.frames = model, cfg, codec, frames
        self.rollout_precision = rollout_precision
        self.sde_steps, self.eta, self.eval_steps, self.window = sde_steps, noise_level, eval_steps, sde_window
        self.outer_steps = sde_outer_steps
        self.n_train_steps = sde_window or min(sde_steps - 1, max(1, math.ceil(timestep_fraction * sde_steps - 1e-9)))
        self.clip_range, self.adv_clip_max, self.beta = clip_range, adv_clip_max, beta
        from rlir.models.flow_samplers import flow_sigmas
        self.sigmas = flow_sigmas(sde_steps)          # what rollout(mode="sde") steps through

    @torch.no_grad()
    def rollout(self, frame0: torch.Tensor, actions: torch.Tensor, generator: torch.Generator,
                evaluation: bool = False, **_) -> Rollouts:
        from rlir.models.flow_samplers import rollout
        dev = next(self.model.parameters()).device
        z0 = self.codec.encode(frame0.to(dev))
        if evaluation:      # NFD's evaluation sampler: the ODE, DPM-Solver++
            lat = rollout(self.model, z0, actions.to(dev), self.frames, steps=self.eval_steps, mode="ode",
                          generator=generator)
            video = self.codec.decode(lat).cpu()
            video[:, 0] = frame0
            return Rollouts(video, actions, {})
        from rlir.utils.rand import GroupGenerators, rand
        B, start = len(frame0), None
        if self.window:      # MixGRPO: one window of SDE steps per group, at random in steps 0..S-2
            groups = generator.regroup(1) if isinstance(generator, GroupGenerators) else generator
            u = rand((len(groups) if isinstance(groups, GroupGenerators) else 1,), groups, generator.device)
            n_starts = self.sde_steps - self.window
            start = (u * n_starts).long().clamp(max=n_starts - 1).repeat_interleave(B // len(u)).to(dev)
        # bf16: a bfloat16 copy of the weights (the whole transformer in bf16: no casts of the residual
        # stream at every op), under autocast for the float32 inputs; the SDE step, its noise and log-prob
        # stay float32 (sde_step casts), and the first pass's "old" log-probs are the float32 scorer's, so
        # the ratio is 1 (the sampler's own are logged against them as logp_mismatch)
        with torch.autocast(dev.type, torch.bfloat16, enabled=self.rollout_precision == "bf16"):
            tr = rollout(self.sampler_model(), z0, actions.to(dev), self.frames, steps=self.sde_steps, mode="sde",
                         eta=self.eta, generator=generator, window_start=start, window=self.window,
                         outer_steps=self.outer_steps)
        video = self.codec.decode(tr.latents).cpu()
        video[:, 0] = frame0
        if self.window:      # train every step of the window
            chosen = (start[:, None] + torch.arange(self.window, device=dev)).cpu()
        else:                # timestep selection: a random subset of steps 0..S-2 (the last is near-deterministic)
            keys = rand((B, self.sde_steps - 1), generator, generator.device)
            chosen = keys.argsort(1)[:, : self.n_train_steps]
        return Rollouts(video, actions, {"latents": tr.latents, "steps": tr.steps, "logps": tr.logps,
                                         "chosen": chosen.cpu()})

    def rollout_stats(self, ro: Rollouts) -> dict:
        return {}

    def _traj(self, d):
        from rlir.models.flow_samplers import SDETrajectory
        return SDETrajectory(d["latents"], d["steps"], d["logps"], self.sigmas, self.eta)

    def accumulate(self, ro: Rollouts, adv: torch.Tensor, scale: float, ref_model=None) -> dict:
        from rlir.models.flow_samplers import score_steps
        d, traj = ro.data, self._traj(ro.data)
        dev = d["latents"].device
        acts = ro.actions.to(dev)
        sums: dict[str, float] = {}
        first = "logp" not in ro.old
        olds, refs = [], []
        K = d["chosen"].shape[1]
        for k in range(K):                       # one backward per selected step keeps activations small
            step_index = d["chosen"][:, k].to(dev)
            logp, mean, std = score_steps(self.model, traj, acts, step_index)
            if first:
                olds.append(logp.detach())
                sampler = d["logps"].gather(2, step_index.view(-1, 1, 1).expand(-1, logp.shape[1], 1))[..., 0]
                sums["logp_mismatch"] = max(sums.get("logp_mismatch", 0.0), float((logp.detach() - sampler).abs().max()))
                if self.beta > 0:
                    with torch.no_grad():
                        refs.append(score_steps(ref_model, traj, acts, step_index)[1])
            old = olds[k] if first else ro.old["logp"][:, k]
            ref = (refs[k] if first else ro.old["ref"][:, k]) if self.beta > 0 else None
            loss, lm = flow_grpo_loss(logp, old, adv.to(dev), self.clip_range, self.adv_clip_max, self.beta,
                                      mean, ref, std)
            (loss * scale / K).backward()            # even when non-finite (FSDP: every rank runs it)
            if not torch.isfinite(loss):
                sums["nonfinite"] = 1.0
            for key, v in {**lm, "loss": loss.item()}.items():
                if key not in ("logp_mismatch", "nonfinite"):
                    sums[key] = sums.get(key, 0.0) + v / K
        if first:
            ro.old["logp"] = torch.stack(olds, 1)
            if self.beta > 0:
                ro.old["ref"] = torch.stack(refs, 1)
        return sums


def make_policy(paradigm: str, model, cfg, codec, frames: int, **kw):
    return (ARPolicy if paradigm == "ar" else DiffusionPolicy)(model, cfg, codec, frames, **kw)

"""Diffusion world model (NFD-style): a block-causal DiT over continuous frame latents, flow matching.

    latents [B, T, N, C] (a frame = N tokens from the autoencoder) and per-frame noise levels sigma [B, T]
      -> linear patch embedding + learned position (within frame) and frame-index embeddings
      -> DiT blocks: block-causal attention (a token sees its own frame and every earlier frame),
         SwiGLU MLP; AdaLN-Zero from c_f = embed(sigma_f) + Linear(one-hot a_{f-1}) (frame 0: a learned start)
      -> velocity v [B, T, N, C]

Flow matching (rectified flow): x_sigma = (1 - sigma) x_0 + sigma * eps, target v = eps - x_0, so
d x / d sigma = v and the ODE runs sigma 1 -> 0. Diffusion forcing: each frame draws its own sigma in
training, so a clean past conditions a noisy present (Chen et al. 2024); sampling denoises frame by
frame with the finished frames' keys and values cached (they are computed once, at sigma = 0).
With independent sigmas a frame almost never sees its whole past clean, which is how the sampler
runs; the teacher-forced objective (clean past | noisy present, `context=`) trains exactly that case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlir.actions import N_CLASSES

# d_model / mlp / heads / layers: the paper's Table 5 (NFD's configurations).
PRESETS = {
    "tiny": dict(d_model=256, mlp=683, n_heads=4, n_layers=6),
    "310M": dict(d_model=1024, mlp=2730, n_heads=16, n_layers=16),
    "774M": dict(d_model=1536, mlp=4096, n_heads=24, n_layers=18),
}


@dataclass
class DiTConfig:
    latent_dim: int = 16             # C: channels of one latent token (the autoencoder's)
    tokens_per_frame: int = 48       # N: the autoencoder's grid, h*w
    clip_len: int = 16
    d_model: int = 256
    mlp: int = 683                   # SwiGLU hidden size (8/3 d, as NFD's 2730 for d 1024)
    n_heads: int = 4
    n_layers: int = 6

    def validate(self) -> None:
        from rlir.errors import ConfigError
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


def block_causal_mask(frames: int, n: int, device=None) -> torch.Tensor:
    """[frames*n, frames*n] bool, True where attention is allowed: key frame <= query frame."""
    f = torch.arange(frames, device=device).repeat_interleave(n)
    return f[None, :] <= f[:, None]


def timestep_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of sigma in [0, 1] (scaled to 0..1000 like DiT's timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    a = sigma.float()[..., None] * 1000.0 * freqs
    return torch.cat([a.cos(), a.sin()], -1)


def modulate(x, shift, scale):
    """x * (1 + scale) + shift in one elementwise pass over x (scale and shift are per frame, small)."""
    return torch.addcmul(shift, x, 1 + scale)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, mask=None, past=None):
        """x [B, L, d]; past: (k, v) of earlier frames [B, h, Lp, dh] prepended to this call's keys/values."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        kv = (k, v)
        if isinstance(past, LayerKV):           # preallocated: written after the cached tokens, no copy of them
            k, v = past.extend(k, v)
        elif past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, d)), kv


class DiTBlock(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.w12 = nn.Linear(d, 2 * mlp)                       # SwiGLU: silu(x W1) * (x W2), then W3
        self.w3 = nn.Linear(mlp, d)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))   # AdaLN-Zero: shift, scale, gate x 2

    def forward(self, x, c, mask=None, past=None):
        """x [B, F, N, d] tokens of F frames, c [B, F, 1, d] each frame's conditioning: the modulation is
        computed once per frame and broadcast over its N tokens (not once per token)."""
        B, Fr, N, d = x.shape
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, -1)
        a, kv = self.attn(modulate(self.norm1(x), s1, sc1).reshape(B, Fr * N, d), mask, past)
        x = torch.addcmul(x, g1, a.view(B, Fr, N, d))                 # x + g1 * attn: one pass over x
        u, g = self.w12(modulate(self.norm2(x), s2, sc2)).chunk(2, -1)
        return torch.addcmul(x, g2, self.w3(F.silu(u) * g)), kv


class DiTWorldModel(nn.Module):
    _no_split_modules = ["DiTBlock"]       # FSDP shards and activation checkpointing act per block

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.patch = nn.Linear(cfg.latent_dim, d)
        self.pos = nn.Parameter(torch.zeros(1, 1, cfg.tokens_per_frame, d))
        self.frame_pos = nn.Parameter(torch.zeros(1, cfg.clip_len, 1, d))
        self.t_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.a_embed = nn.Linear(sum(N_CLASSES), d)            # the action of each frame: a linear layer
        self.a_start = nn.Parameter(torch.zeros(d))            # frame 0 follows no action
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.n_heads, cfg.mlp) for _ in range(cfg.n_layers))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, cfg.latent_dim)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.frame_pos, std=0.02)
        for blk in self.blocks:                                # zero-init: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for m in (self.ada_out[-1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def action_embedding(self, prev_actions: torch.Tensor) -> torch.Tensor:
        """Class ids [B, F, 9] of the action leading into each frame -> [B, F, d]."""
        one_hot = torch.cat([F.one_hot(prev_actions[..., g].long(), k) for g, k in enumerate(N_CLASSES)], -1)
        return self.a_embed(one_hot.float())

    def cond(self, sigma: torch.Tensor, prev_actions: torch.Tensor, first_is_start: bool) -> torch.Tensor:
        """Per-frame conditioning c_f = t_emb(sigma_f) + a_emb(a_{f-1}) -> [B, F, 1, d]."""
        a = self.action_embedding(prev_actions)
        if first_is_start:
            a = torch.cat([self.a_start.expand(a.shape[0], 1, -1), a[:, 1:]], 1)
        return (self.t_mlp(timestep_embedding(sigma, 256)) + a)[:, :, None]

    def embed(self, x: torch.Tensor, frame0: int) -> torch.Tensor:
        Fr = x.shape[1]
        return self.patch(x) + self.pos + self.frame_pos[:, frame0:frame0 + Fr]

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_out(c).chunk(2, -1)
        return self.out(modulate(self.norm_out(h), shift, scale))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Training. Diffusion forcing: x [B, T, N, C] noisy latents, sigma [B, T], actions [B, >=T-1, 9]
        (actions[t] leads from frame t to t+1) -> velocity [B, T, N, C]. With `context` (clean latents
        [B, T, N, C]): x and sigma are frames 1..T-1 only, each seeing the clean frames before it, as in
        `velocity_teacher_forced` (one entry point, so DDP syncs the gradients of both objectives)."""
        if context is not None:
            return self.velocity_teacher_forced(context, x, sigma, actions)
        B, T, N, C = x.shape
        prev = torch.cat([actions[:, :1], actions[:, : T - 1]], 1)      # frame f is conditioned on a_{f-1}
        c, h = self.cond(sigma, prev, first_is_start=True), self.embed(x, 0)      # [B, T, 1, d], [B, T, N, d]
        mask = block_causal_mask(T, N, x.device)
        for blk in self.blocks:
            h, _ = blk(h, c, mask)
        return self.head(h, c)

    def velocity_teacher_forced(self, clean: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor,
                                actions: torch.Tensor) -> torch.Tensor:
        """The velocity of noisy frames 1..F-1 [B, F-1, N, C] at noise levels sigma [B, F-1], each seeing the
        clean frames before it exactly as the frame-by-frame sampler does: one pass over [clean | noisy]."""
        B, Fr, N, C = clean.shape
        prev = torch.cat([actions[:, :1], actions[:, : Fr - 1]], 1)
        c_clean = self.cond(torch.zeros(B, Fr, device=clean.device), prev, first_is_start=True)
        c_noisy = self.cond(sigma, actions[:, : Fr - 1], first_is_start=False)
        c = torch.cat([c_clean, c_noisy], 1)                                     # [B, 2F-1, 1, d]
        h = torch.cat([self.embed(clean, 0), self.embed(noisy, 1)], 1)           # [B, 2F-1, N, d]
        fc = torch.arange(Fr, device=clean.device).repeat_interleave(N)            # frame of each clean token
        fn = torch.arange(1, Fr, device=clean.device).repeat_interleave(N)         # frame of each noisy token
        mask = torch.cat([torch.cat([fc[None] <= fc[:, None], torch.zeros(len(fc), len(fn), dtype=torch.bool,
                                                                          device=clean.device)], 1),
                          torch.cat([fc[None] < fn[:, None], fn[None] == fn[:, None]], 1)], 0)
        for blk in self.blocks:
            h, _ = blk(h, c, mask)
        return self.head(h[:, Fr:], c[:, Fr:])

    def step_frame(self, x: torch.Tensor, sigma: torch.Tensor, prev_action: torch.Tensor | None, index: int,
                   cache: list | None, finished: tuple | None = None) -> tuple[torch.Tensor, list]:
        """One frame with the cached past: x [B, N, C], sigma [B], prev_action [B, 9] (None for frame 0)
        -> (velocity [B, N, C], this call's per-layer (k, v)).

        finished = (z [B, N, C], sigma [B], its prev_action): the frame before, done but not yet cached,
        rides along in the same pass (its tokens see the cache and themselves, this frame's see it too),
        so the sampler needs no separate pass at sigma 0 per frame; the (k, v) returned then hold its N
        tokens first (`split_cache`)."""
        B, N, C = x.shape
        frames = ([] if finished is None else [(finished[0], finished[1], finished[2], index - 1)]) + \
            [(x, sigma, prev_action, index)]
        hs, cs = [], []
        for z, sig, act, i in frames:
            a = self.a_start.expand(B, -1) if act is None else self.action_embedding(act[:, None])[:, 0]
            cs.append((self.t_mlp(timestep_embedding(sig, 256)) + a)[:, None, None])     # [B, 1, 1, d]
            hs.append(self.embed(z[:, None], i))                                         # [B, 1, N, d]
        h, c = torch.cat(hs, 1), torch.cat(cs, 1)
        mask = None
        if finished is not None:          # the finished frame does not see the one being denoised
            past = 0 if cache is None else len(cache) if isinstance(cache, KVCache) else cache[0][0].shape[2]
            mask = torch.ones(2 * N, past + 2 * N, dtype=torch.bool, device=x.device)
            mask[:N, past + N:] = False
        kvs = []
        for layer, blk in enumerate(self.blocks):
            h, kv = blk(h, c, mask, None if cache is None else cache.layer(layer) if isinstance(cache, KVCache)
                        else cache[layer])
            kvs.append(kv)
        return self.head(h[:, -1], c[:, -1]), kvs


class KVCache:
    """The finished frames' keys and values, per layer, in buffers preallocated for `capacity` tokens.
    A call writes its own tokens right after the cached ones and attends to that prefix (no per-call
    concatenation of the whole past); `commit(n)` keeps the first n tokens of the last call's."""

    def __init__(self, n_layers: int, capacity: int):
        self.k: list = [None] * n_layers
        self.v: list = [None] * n_layers
        self.n, self.capacity = 0, capacity

    def __len__(self) -> int:
        return self.n

    def layer(self, i: int) -> "LayerKV":
        return LayerKV(self, i)

    def commit(self, n: int) -> None:
        self.n += n


class LayerKV:
    def __init__(self, cache: KVCache, i: int):
        self.cache, self.i = cache, i

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, i, end = self.cache, self.i, self.cache.n + k.shape[2]
        if end > c.capacity:
            raise ValueError(f"KVCache holds {c.capacity} tokens, a call needs {end}")
        if c.k[i] is None:
            c.k[i] = k.new_empty(*k.shape[:2], c.capacity, k.shape[3])
            c.v[i] = v.new_empty(*v.shape[:2], c.capacity, v.shape[3])
        c.k[i][:, :, c.n:end] = k
        c.v[i][:, :, c.n:end] = v
        return c.k[i][:, :, :end], c.v[i][:, :, :end]


def split_cache(kvs: list, n: int) -> tuple[list, list]:
    """Per-layer (k, v) of a call that carried a finished frame -> (its first n tokens', the rest's)."""
    return [(k[:, :, :n], v[:, :, :n]) for k, v in kvs], [(k[:, :, n:], v[:, :, n:]) for k, v in kvs]


def append_cache(cache: list | None, kvs: list) -> list:
    if cache is None:
        return kvs
    return [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(cache, kvs)]


def flow_matching_loss(model: DiTWorldModel, x0: torch.Tensor, actions: torch.Tensor,
                       generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                       eps: torch.Tensor | None = None, clean_context: bool = False) -> torch.Tensor:
    """Flow matching with per-frame sigma ~ U(0, 1), x_s = (1-s) x0 + s eps, target eps - x0.
    Diffusion forcing: every frame noisy, each at its own sigma. clean_context: frames 1..T-1 noisy,
    each conditioned on the clean frames before it (the sampler's situation; frame 0 is given there).
    sigma [B, T] and eps may be given (drawn for a global batch of which x0 is a slice)."""
    B, T = x0.shape[:2]
    if sigma is None:
        sigma = torch.rand(B, T, generator=generator, device=x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    s = sigma[..., None, None]
    x_s, target = (1 - s) * x0 + s * eps, eps - x0
    if clean_context:
        v = model(x_s[:, 1:], sigma[:, 1:], actions, context=x0)
        return F.mse_loss(v.float(), target[:, 1:].float())
    v = model(x_s, sigma, actions)
    return F.mse_loss(v.float(), target.float())

"""Incremental decoding of the AR world model's LLaMA backbone with a preallocated (static) KV cache.

`transformers`' dynamic cache concatenates every layer's keys and values at every new token, so a
rollout of S tokens copies O(S^2) memory: on a CPU that is most of a rollout's time (80% in
`aten::cat` for the tiny preset at batch 64). Here each layer's K and V live in one buffer
[B, heads, max_len, head_dim], written in place at the token's position; attention reads the
filled prefix. The forward is LLaMA's, computed from the same modules (so the weights, RMSNorm, MLP
and rotary embedding are `transformers`' own):

    h = x + W_o SDPA(RoPE(W_q n(x)), RoPE(W_k n(x)), W_v n(x))      n = input RMSNorm
    x' = h + MLP(n'(h))                                             n' = post-attention RMSNorm

It depends only on the module layout of `LlamaForCausalLM` (model.embed_tokens, model.layers[i].
{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp}, model.norm,
model.rotary_emb, lm_head), not on the cache API, which `transformers` keeps changing.
A test holds its logits to the full teacher-forced forward within float tolerance.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@contextmanager
def gathered(model: torch.nn.Module):
    """Under FSDP (fully_shard) the parameters are shards: gather them once for a whole rollout
    (instead of once per token), and shard them again after. A no-op otherwise."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:           # pragma: no cover - torch without FSDP2
        FSDPModule = ()
    mods = [m for m in model.modules() if FSDPModule and isinstance(m, FSDPModule)]
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()


class KVDecoder:
    """Feeds tokens to a `LlamaForCausalLM` a few at a time; returns the logits of the last one."""

    def __init__(self, model, batch: int, max_len: int):
        self.model, lm = model, model.model
        attn = lm.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        p = next(model.parameters())
        # float32 whatever the weights (bf16 rollouts: the projections in bf16, attention in float32);
        # keys stored transposed, [.., head_dim, max_len], so q @ K^T reads a prefix without a copy
        shape = (len(lm.layers), batch, self.kv_heads, max_len, self.head_dim)
        self.kt = torch.zeros(shape[:3] + (self.head_dim, max_len), dtype=torch.float32, device=p.device)
        self.v = torch.zeros(shape, dtype=torch.float32, device=p.device)
        self.pos, self.max_len, self.batch = 0, max_len, batch

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, n] at positions pos..pos+n-1 -> logits of the last position [B, V] (float32).

        Runs in the weights' own dtype, outside any autocast: autocast would cast the float32 attention
        to bf16, whose CPU kernels copy the cache at every token (bf16 rollouts use a bf16 copy instead)."""
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            return self._forward(ids)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        lm, B, n = self.model.model, ids.shape[0], ids.shape[1]
        s, e = self.pos, self.pos + ids.shape[1]
        if e > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions is full ({e} requested)")
        x = lm.embed_tokens(ids)
        position_ids = torch.arange(s, e, device=ids.device).unsqueeze(0).expand(B, -1)
        cos, sin = lm.rotary_emb(x, position_ids)                     # [B, n, head_dim]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # query i (position s+i) sees keys 0..s+i; a single token sees the whole prefix
        mask = None
        if n > 1:
            mask = torch.ones(n, e, dtype=torch.bool, device=ids.device).tril(s)
        rep = self.heads // self.kv_heads
        for li, layer in enumerate(lm.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, n, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(B, n, self.kv_heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, n, self.kv_heads, self.head_dim).transpose(1, 2)
            q = (q * cos + _rotate_half(q) * sin).float()                  # RoPE
            k = k * cos + _rotate_half(k) * sin
            self.kt[li, :, :, :, s:e] = k.transpose(-1, -2)
            self.v[li, :, :, s:e] = v
            Kt, V = self.kt[li, :, :, :, :e], self.v[li, :, :, :e]
            if rep > 1:
                Kt, V = Kt.repeat_interleave(rep, 1), V.repeat_interleave(rep, 1)
            if n == 1:     # decoding one token: a plain matrix-vector attention beats the CPU's flash kernel
                o = torch.softmax((q @ Kt) * self.scaling, dim=-1) @ V
            else:
                o = F.scaled_dot_product_attention(q, Kt.transpose(-1, -2), V, attn_mask=mask, scale=self.scaling)
            x = x + a.o_proj(o.to(x.dtype).transpose(1, 2).reshape(B, n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.pos = e
        return self.model.lm_head(lm.norm(x[:, -1])).float()

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
    """Feeds tokens to a `LlamaForCausalLM` a few at a time; returns the logits of the last one.

    Built per rollout from the live modules (the policy changes between rollouts). The per-token forward
    is many small ops; on a CPU at batch 8 their time is per-op overhead plus reading the weights and
    cache from memory. The decoder cuts the op count (304 -> 168 a token with sampling, tiny preset;
    3.6 against 4.1 ms a token). RoPE's tables for
    every position are computed once and applied to q and k together; RMSNorm is one fused op; each
    layer's cache is its own buffer; and on a CPU the q/k/v projections and the MLP's gate/up are each
    one matmul on weights concatenated here, the attention scale folded into W_q (a copy of the layer
    weights, small at the CPU presets; on a GPU the projections stay separate, so FSDP's memory saving
    holds)."""

    def __init__(self, model, batch: int, max_len: int, fuse: bool | None = None):
        self.model, lm = model, model.model
        attn = lm.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = hd = attn.head_dim
        p = next(model.parameters())
        fuse = p.device.type == "cpu" if fuse is None else fuse
        self.layers = []
        for layer in lm.layers:
            a, mlp = layer.self_attn, layer.mlp
            if getattr(mlp, "act_fn", None) is None or any(
                    m.bias is not None for m in (a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
                raise ValueError("KVDecoder expects LLaMA's bias-free MLP and output projections")
            # the attention scale 1/sqrt(hd) folded into W_q (and b_q) where the weights are copied anyway
            w_qkv = [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
            b_qkv = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            if fuse:
                w_qkv[0] = w_qkv[0] * a.scaling
                b_qkv[0] = None if b_qkv[0] is None else b_qkv[0] * a.scaling
            gu = [mlp.gate_proj.weight, mlp.up_proj.weight]
            self.layers.append(dict(
                n1=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                qkv=_fused(w_qkv, fuse), qkv_b=_fused(b_qkv, fuse), q_scale=1.0 if fuse else a.scaling,
                o=a.o_proj.weight,
                n2=(layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                gu=_fused(gu, fuse), down=mlp.down_proj.weight, act=mlp.act_fn))
        # RoPE for all positions: rot(x) = x*cos + roll(x, hd/2)*sin', sin' = sin with its first half negated
        # (roll swaps the halves: that is rotate_half up to the sign)
        cos, sin = lm.rotary_emb(torch.zeros(1, dtype=p.dtype, device=p.device),
                                 torch.arange(max_len, device=p.device)[None])
        sign = torch.cat([-torch.ones(hd // 2), torch.ones(hd - hd // 2)]).to(device=p.device, dtype=sin.dtype)
        self.cos, self.sin = cos[0, :, None], (sin[0] * sign)[:, None]          # [max_len, 1, hd]
        # float32 whatever the weights (bf16 rollouts: the projections in bf16, attention in float32);
        # keys stored transposed, [.., head_dim, max_len], so q @ K^T reads a prefix without a copy
        self.kt = [torch.zeros(batch, self.kv_heads, hd, max_len, dtype=torch.float32, device=p.device)
                   for _ in lm.layers]
        self.v = [torch.zeros(batch, self.kv_heads, max_len, hd, dtype=torch.float32, device=p.device)
                  for _ in lm.layers]
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
        H, KH, hd = self.heads, self.kv_heads, self.head_dim
        cos, sin = self.cos[s:e], self.sin[s:e]                              # [n, 1, hd]
        # query i (position s+i) sees keys 0..s+i; a single token sees the whole prefix
        mask = None
        if n > 1:
            mask = torch.ones(n, e, dtype=torch.bool, device=ids.device).tril(s)
        rep = H // KH
        x = lm.embed_tokens(ids)
        for L, kt, vc in zip(self.layers, self.kt, self.v):
            h = F.rms_norm(x, x.shape[-1:], *L["n1"])
            qk, v = _linear(h, L["qkv"], L["qkv_b"]).view(B, n, H + 2 * KH, hd).split([H + KH, KH], dim=2)
            qk = qk * cos + qk.roll(hd // 2, -1) * sin                                      # RoPE on q and k
            q, k = qk.split([H, KH], dim=2)                                                 # [B, n, heads, hd]
            q = q.float().transpose(1, 2)
            if L["q_scale"] != 1.0:       # folded into the fused weight on a CPU
                q = q * L["q_scale"]
            kt.narrow(-1, s, n).copy_(k.permute(0, 2, 3, 1))
            vc.narrow(2, s, n).copy_(v.transpose(1, 2))
            Kt, V = kt.narrow(-1, 0, e), vc.narrow(2, 0, e)
            if rep > 1:
                Kt, V = Kt.repeat_interleave(rep, 1), V.repeat_interleave(rep, 1)
            if n == 1:     # decoding one token: a plain matrix-vector attention beats the CPU's flash kernel
                o = torch.softmax(q @ Kt, dim=-1) @ V
            else:
                o = F.scaled_dot_product_attention(q, Kt.transpose(-1, -2), V, attn_mask=mask, scale=1.0)
            x = x + F.linear(o.to(x.dtype).transpose(1, 2).reshape(B, n, -1), L["o"])
            gate, up = _linear(F.rms_norm(x, x.shape[-1:], *L["n2"]), L["gu"]).chunk(2, dim=-1)
            x = x + F.linear(L["act"](gate) * up, L["down"])
        self.pos = e
        return self.model.lm_head(lm.norm(x[:, -1])).float()


def _fused(ws: list, fuse: bool):
    """Weights (or biases) of projections applied to the same input: one tensor on a CPU, else the list."""
    if all(w is None for w in ws):
        return None
    if any(w is None for w in ws):
        raise ValueError("KVDecoder expects q/k/v projections all with or all without bias")
    return torch.cat(ws) if fuse else list(ws)


def _linear(x: torch.Tensor, w, b=None) -> torch.Tensor:
    """x @ w^T (+ b) for one fused weight, or for a list of weights side by side."""
    if isinstance(w, list):
        return torch.cat([F.linear(x, wi, bi) for wi, bi in zip(w, b or [None] * len(w))], -1)
    return F.linear(x, w, b)

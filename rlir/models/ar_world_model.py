"""Autoregressive world model (MineWorld-style): a LLaMA decoder over interleaved frame and action tokens.

    sequence = [frame 0 codes][aBOS a_0 ... aEOS][frame 1 codes][aBOS a_1 ... aEOS] ... [frame T-1 codes]
               |<- N visual ->||<- 11 action ->|

Visual tokens are the VQ tokenizer's codes 0..n_codes-1; action tokens (Contract 1's 9 groups plus
aBOS/aEOS, rlir/actions.py) follow them at n_codes + id, so the two vocabularies are disjoint.
The backbone is `transformers`' LlamaForCausalLM. The model learns p(frame t+1 | frames <= t, a_<=t),
token by token; action tokens are inputs only: they are never sampled and never get a loss.

Sampling (`sample`) and scoring (`score`) refer to the same distribution, for GRPO's ratio:
    pi(x) = softmax(logits[visual] / temperature) truncated to its top-p nucleus and renormalised,
the nucleus being the smallest set of most likely tokens whose mass reaches top_p (the token taken
is always in it). With top_p = 1 it is the plain tempered softmax over the visual vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlir.actions import ACTION_VOCAB_SIZE, TOKENS_PER_ACTION, actions_to_tokens

# d_model / mlp / heads / layers: the paper's Table 4 (MineWorld's configurations).
PRESETS = {
    "tiny": dict(d_model=256, mlp=768, n_heads=4, n_layers=4),
    "300M": dict(d_model=1024, mlp=4096, n_heads=16, n_layers=20),
    "700M": dict(d_model=2048, mlp=4096, n_heads=32, n_layers=20),
    "1.2B": dict(d_model=2048, mlp=8192, n_heads=32, n_layers=20),
}


@dataclass
class ARConfig:
    n_codes: int = 1024              # the tokenizer's codebook size
    tokens_per_frame: int = 48       # the tokenizer's grid, h*w
    clip_len: int = 16               # frames per training sequence (and the most a rollout makes)
    d_model: int = 256
    mlp: int = 768
    n_heads: int = 4
    n_layers: int = 4
    rope_theta: float = 10000.0

    def validate(self) -> None:
        from rlir.errors import ConfigError
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.clip_len < 2:
            raise ConfigError("clip_len must be at least 2")

    @property
    def block(self) -> int:           # tokens per frame step: a frame's codes and its action
        return self.tokens_per_frame + TOKENS_PER_ACTION

    @property
    def vocab_size(self) -> int:
        return self.n_codes + ACTION_VOCAB_SIZE

    def seq_len(self, frames: int) -> int:   # T frames and the T-1 actions between them
        return frames * self.tokens_per_frame + (frames - 1) * TOKENS_PER_ACTION


def build_llama(cfg: ARConfig):
    from transformers import LlamaConfig, LlamaForCausalLM
    lc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp,
                     num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                     num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.seq_len(cfg.clip_len),
                     rope_theta=cfg.rope_theta, attention_dropout=0.0, tie_word_embeddings=False,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
    lc._attn_implementation = "sdpa"
    return LlamaForCausalLM(lc)


def action_tokens(actions, n_codes: int, device) -> torch.Tensor:
    """Class ids [..., 9] -> token ids [..., 11] of the model's vocabulary (after the visual codes)."""
    a = actions.cpu().numpy() if torch.is_tensor(actions) else actions
    return torch.from_numpy(actions_to_tokens(a, offset=n_codes)).to(device)


def interleave(codes: torch.Tensor, actions: torch.Tensor, n_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [B, T, N], actions [B, >=T-1, 9] -> (tokens [B, S], is_visual [B, S] bool)."""
    B, T, N = codes.shape
    act = action_tokens(actions[:, : T - 1], n_codes, codes.device)      # [B, T-1, 11]
    parts, vis = [], []
    for t in range(T):
        parts.append(codes[:, t].long())
        vis.append(torch.ones(B, N, dtype=torch.bool, device=codes.device))
        if t < T - 1:
            parts.append(act[:, t])
            vis.append(torch.zeros(B, TOKENS_PER_ACTION, dtype=torch.bool, device=codes.device))
    return torch.cat(parts, 1), torch.cat(vis, 1)


def split_frames(tokens: torch.Tensor, cfg: ARConfig) -> torch.Tensor:
    """tokens [B, S] (interleaved) -> codes [B, T, N]."""
    B, S = tokens.shape
    T = (S + TOKENS_PER_ACTION) // cfg.block
    padded = torch.cat([tokens, tokens.new_zeros(B, TOKENS_PER_ACTION)], 1).view(B, T, cfg.block)
    return padded[:, :, : cfg.tokens_per_frame]


def _visual_logprobs(logits: torch.Tensor, n_codes: int, temperature: float) -> torch.Tensor:
    """log softmax(logits[visual] / temperature), float32."""
    x = logits[..., :n_codes].float()
    return torch.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)


NUCLEUS_HEAD = 128      # on a CPU the nucleus is looked for among the top 128 tokens first (see _sorted_nuclei)


def _sorted_nuclei(flat: torch.Tensor, top_p: float) -> list:
    """The top-p nucleus of each row of log-probs [R, V], in descending order of probability: parts
    (rows, log-probs, their ids, kept), rows None for all rows, a later part replacing an earlier one on
    its rows. A token is kept while the mass before it is below top_p (the most likely one always is).

    On a CPU a top-k of NUCLEUS_HEAD tokens (a third of a sort's time over 1024 codes) settles every row
    whose head already holds top_p, since nothing after it can be kept; only the rows it does not
    settle (a flat distribution) are sorted in full. Elsewhere every row is sorted."""
    parts, rows, sub = [], None, flat
    if flat.device.type == "cpu" and flat.shape[-1] > NUCLEUS_HEAD:
        head, order = flat.topk(NUCLEUS_HEAD, dim=-1)
        p = head.exp()
        c = p.cumsum(-1)
        parts.append((None, head, order, (c - p) < top_p))
        short = c[:, -1] < top_p                                # rows whose nucleus reaches past the head
        if not bool(short.any()):
            return parts
        rows = short.nonzero().squeeze(-1)
        sub = flat[rows]
    srt, order = sub.sort(dim=-1, descending=True)
    p = srt.exp()
    return parts + [(rows, srt, order, (p.cumsum(-1) - p) < top_p)]


def _nucleus_keep(lp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens the top-p nucleus keeps, [..., V] bool."""
    flat = lp.reshape(-1, lp.shape[-1])
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=lp.device)
    for rows, _, order, kept in _sorted_nuclei(flat, top_p):
        if rows is None:
            keep.scatter_(-1, order, kept)
        else:
            keep.index_copy_(0, rows, torch.zeros_like(keep[rows]).scatter_(-1, order, kept))
    return keep.view(lp.shape)


def policy_logprobs(logits: torch.Tensor, n_codes: int, temperature: float, top_p: float,
                    taken: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs over the visual vocabulary of the distribution sampled from (see the module doc).

    logits [..., V] -> [..., n_codes]; tokens outside the nucleus get -inf. `taken` (optional,
    [...]) is kept in the nucleus whatever the rounding, so a rollout's own token never scores -inf.
    """
    lp = _visual_logprobs(logits, n_codes, temperature)
    if top_p >= 1.0:
        return lp
    with torch.no_grad():   # which tokens are in the nucleus: a selection, not a function to differentiate
        keep = _nucleus_keep(lp, top_p)
        if taken is not None:
            keep.scatter_(-1, taken.unsqueeze(-1).long(), True)
    lp = lp.masked_fill(~keep, float("-inf"))
    return lp - torch.logsumexp(lp, dim=-1, keepdim=True)   # renormalised over the nucleus


def taken_logprobs(logits: torch.Tensor, n_codes: int, temperature: float, top_p: float,
                   taken: torch.Tensor) -> torch.Tensor:
    """log pi(taken) [...] for logits [..., V] and tokens [...]: policy_logprobs(...).gather(taken), each
    token kept in its nucleus K, without an [..., V] tensor on the gradient path. Within K the softmax's
    normaliser cancels, log pi(t) = x_t - logsumexp_{k in K} x_k (x = logits / temperature), so the
    gradient reaches only the nucleus' logits, which the sorted head (_sorted_nuclei) already lists."""
    x = logits[..., :n_codes].float()
    x = (x if temperature == 1.0 else x / temperature).reshape(-1, n_codes)
    t = taken.reshape(-1, 1).long()
    xt = x.gather(-1, t)[:, 0]
    if top_p >= 1.0:
        return (xt - torch.logsumexp(x, -1)).view(taken.shape)
    with torch.no_grad():   # which tokens are in the nucleus: a selection, not a function to differentiate
        parts = _sorted_nuclei(torch.log_softmax(x, -1), top_p)
    lse = None
    for rows, _, order, kept in parts:
        xs, ts, xts = (x, t, xt) if rows is None else (x[rows], t[rows], xt[rows])
        inside = ((order == ts) & kept).any(-1, keepdim=True)        # else the taken token joins its nucleus
        part = torch.cat([xs.gather(-1, order).masked_fill(~kept, float("-inf")),
                          xts[:, None].masked_fill(inside, float("-inf"))], -1).logsumexp(-1)
        lse = part if rows is None else lse.index_put((rows,), part)
    return (xt - lse).view(taken.shape)


def _draw_sorted(head: torch.Tensor, order: torch.Tensor, keep: torch.Tensor, u: torch.Tensor):
    """Inverse CDF over a nucleus given in descending order (head log-probs, their ids, which are kept):
    (tokens [R, 1], their log-probs renormalised over the nucleus [R, 1]) for uniforms u [R, 1]."""
    p = head.exp().masked_fill(~keep, 0.0)
    c = p.cumsum(-1)
    last = keep.sum(-1, keepdim=True) - 1            # the nucleus is a prefix of the sorted head
    i = torch.minimum(torch.searchsorted(c, u * c[:, -1:], right=True), last)
    return order.gather(-1, i), head.gather(-1, i) - c[:, -1:].log()


def sample_token(logits: torch.Tensor, n_codes: int, temperature: float, top_p: float,
                 generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row of logits [B, V] from the distribution `policy_logprobs` describes, and its
    log-prob: (tokens [B, 1], log-probs [B, 1]). By inverse CDF over the sorted nucleus, one uniform per
    row from `generator` (a torch.Generator or GroupGenerators): on a CPU a top-k and a searchsorted cost
    a fraction of a full sort and a multinomial, per token of every rollout; only the rows whose nucleus
    reaches past the top-k head are sorted in full (`_sorted_nuclei`)."""
    from rlir.utils.rand import rand
    lp = _visual_logprobs(logits, n_codes, temperature)
    u = rand((len(lp), 1), generator, lp.device)
    if top_p >= 1.0:                                 # no nucleus: the CDF in vocabulary order
        c = lp.exp().cumsum(-1)
        i = torch.searchsorted(c, u * c[:, -1:], right=True).clamp(max=lp.shape[-1] - 1)
        return i, lp.gather(-1, i) - c[:, -1:].log()
    (_, head, order, kept), *rest = _sorted_nuclei(lp, top_p)          # the first part covers every row
    tok, tok_lp = _draw_sorted(head, order, kept, u)
    for rows, head, order, kept in rest:                               # rows the top-k head did not settle
        t, t_lp = _draw_sorted(head, order, kept, u[rows])
        tok, tok_lp = tok.index_copy(0, rows, t), tok_lp.index_copy(0, rows, t_lp)
    return tok, tok_lp


@dataclass
class Rollout:
    tokens: torch.Tensor     # [B, S] the whole interleaved sequence, frame 0 and actions included
    logps: torch.Tensor      # [B, S] log pi(token) where generated, 0 elsewhere
    mask: torch.Tensor       # [B, S] 1.0 on generated visual tokens, 0.0 on frame 0 and all action tokens


@torch.no_grad()
def sample(model, cfg: ARConfig, codes0: torch.Tensor, actions: torch.Tensor, frames: int | None = None,
           temperature: float = 1.0, top_p: float = 0.8, generator=None) -> Rollout:
    """Roll the world model out from frame 0's codes [B, N] under actions [B, >=frames-1, 9].

    Token by token with a preallocated KV cache (rlir/models/kv_decoder.py); the real action tokens
    are forced in after each frame.
    generator: a torch.Generator, or GroupGenerators (rlir/utils/rand.py) for per-group draws.
    """
    from rlir.models.kv_decoder import KVDecoder, gathered
    frames = frames or cfg.clip_len
    B, N, dev = codes0.shape[0], cfg.tokens_per_frame, codes0.device
    act = action_tokens(actions[:, : frames - 1], cfg.n_codes, dev)     # [B, frames-1, 11]
    zero_a = torch.zeros(B, TOKENS_PER_ACTION, device=dev)
    toks, logps, mask = [codes0.long(), act[:, 0]], [torch.zeros(B, N, device=dev), zero_a], \
        [torch.zeros(B, N, device=dev), zero_a]
    feed = torch.cat([codes0.long(), act[:, 0]], 1)
    with gathered(model):
        dec = KVDecoder(model, B, cfg.seq_len(frames))
        for t in range(1, frames):
            frame_toks, frame_lp = [], []
            for j in range(N):
                tok, lp = sample_token(dec(feed), cfg.n_codes, temperature, top_p, generator)   # [B, 1]
                frame_toks.append(tok)
                frame_lp.append(lp)
                feed = tok if j < N - 1 else (torch.cat([tok, act[:, t]], 1) if t < frames - 1 else None)
            toks.append(torch.cat(frame_toks, 1))
            logps.append(torch.cat(frame_lp, 1))
            mask.append(torch.ones(B, N, device=dev))
            if t < frames - 1:
                toks.append(act[:, t])
                logps.append(zero_a)
                mask.append(zero_a)
    return Rollout(torch.cat(toks, 1), torch.cat(logps, 1), torch.cat(mask, 1))


@torch.no_grad()
def sample_frame(model, cfg: ARConfig, prefix: torch.Tensor, temperature: float = 1.0, top_p: float = 0.8,
                 generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame's visual tokens after `prefix` [B, L] (which ends with the action leading into it):
    (tokens [B, N], their log-probs [B, N]); the branching rollouts of RL draw G of these per prefix."""
    from rlir.models.kv_decoder import KVDecoder, gathered
    feed, toks, lps = prefix.long(), [], []
    with gathered(model):
        dec = KVDecoder(model, len(prefix), prefix.shape[1] + cfg.tokens_per_frame)
        for _ in range(cfg.tokens_per_frame):
            tok, lp = sample_token(dec(feed), cfg.n_codes, temperature, top_p, generator)
            toks.append(tok)
            lps.append(lp)
            feed = tok
    return torch.cat(toks, 1), torch.cat(lps, 1)


def score(model, cfg: ARConfig, tokens: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
          top_p: float = 0.8) -> torch.Tensor:
    """Teacher-forced log pi(token) [B, S] of a rollout in one forward pass, with gradient; 0 where mask is 0.
    The head runs only at positions some rollout generated (frame 0 and the actions are context only)."""
    m = mask[:, 1:] > 0                                               # position i predicts token i+1
    pos = m.any(0).nonzero().squeeze(-1)
    logits = model(input_ids=tokens[:, :-1], logits_to_keep=pos, use_cache=False).logits    # [B, P, V]
    target = tokens[:, 1:][:, pos].clamp(max=cfg.n_codes - 1)
    lp = taken_logprobs(logits, cfg.n_codes, temperature, top_p, target)
    lp = torch.where(m[:, pos], lp, torch.zeros_like(lp))             # action tokens: no log-prob, no gradient
    return torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device).index_copy(1, pos + 1, lp)


def next_token_loss(model, tokens: torch.Tensor, is_visual: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Pretraining: cross-entropy of the visual tokens of frames 1.. given everything before them."""
    logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
    target, m = tokens[:, 1:], is_visual[:, 1:].clone()
    m[:, : tokens_per_frame - 1] = False                                # frame 0 is the prompt, not a target
    return F.cross_entropy(logits[m].float(), target[m])

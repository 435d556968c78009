"""Sampling speed of the AR world model, side by side in one run (issue 20):

  - old_hf_cache_fp32: the sampler before issue 20 (transformers' `past_key_values` cache, grown by
    concatenation at every token; kept here as the baseline, it is gone from the package);
  - ours_kv_fp32: the new sampler (rlir/models/kv_decoder.py: preallocated cache, keys stored transposed,
    fused projections; the token drawn by inverse CDF over a top-k nucleus, `sample_token`);
  - ours_kv_bf16: the same with bfloat16 weights (posttrain's `rollout_precision: bf16`);
  - hf_generate: transformers' generate() with a logits processor that forces the action tokens and
    keeps every other position in the visual vocabulary, so all make the same kind of rollout.

Same model, same inputs (frame 0's codes + 15 actions), batch 8, top-p 0.8. Frames/s = B * 15 / time.
`max_logp_diff`: each path's sampled log-probs against the float32 teacher-forced scorer of the
training loss, on that path's own tokens (what the GRPO ratio at its first pass depends on).

    python bench/ar_sampler_bench.py [--world-model CKPT] [--batch 8] [--repeats 3] [--out JSON]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.models.ar_world_model import ARConfig, action_tokens, build_llama, sample  # noqa: E402


class ForceActions:
    """A transformers LogitsProcessor: at action positions only the real action token; elsewhere only visual codes."""

    def __init__(self, cfg: ARConfig, prompt_len: int, act_tokens: torch.Tensor):
        self.cfg, self.prompt_len, self.act = cfg, prompt_len, act_tokens   # act [B, frames-1, 11]

    def __call__(self, input_ids, scores):
        pos = input_ids.shape[1]                     # index of the token being chosen
        t, j = divmod(pos, self.cfg.block)           # frame step t, offset j inside it
        out = torch.full_like(scores, float("-inf"))
        if j >= self.cfg.tokens_per_frame:           # an action token: force the real one
            tok = self.act[:, t, j - self.cfg.tokens_per_frame]
            out.scatter_(1, tok[:, None], 0.0)
            return out
        out[:, : self.cfg.n_codes] = scores[:, : self.cfg.n_codes]
        return out


def old_policy_logprobs(logits, n_codes: int, top_p: float, temperature: float = 1.0, taken=None) -> torch.Tensor:
    """The pre-issue-20 nucleus: a full sort of the visual vocabulary at every token (`taken`, as the
    scorer gives it, is kept in the nucleus)."""
    lp = torch.log_softmax(logits[..., :n_codes].float() / temperature, dim=-1)
    if top_p >= 1.0:
        return lp
    with torch.no_grad():
        sorted_lp, order = lp.sort(dim=-1, descending=True)
        keep = torch.zeros_like(sorted_lp, dtype=torch.bool).scatter(
            -1, order, sorted_lp.exp().cumsum(-1) - sorted_lp.exp() < top_p)
        if taken is not None:
            keep.scatter_(-1, taken.unsqueeze(-1), True)
    lp = lp.masked_fill(~keep, float("-inf"))
    return lp - torch.logsumexp(lp, dim=-1, keepdim=True)


def old_score(model, cfg: ARConfig, tokens, mask, temperature: float = 1.0, top_p: float = 0.8) -> torch.Tensor:
    """The pre-issue-20 scorer: logits at every position, the nucleus by a full sort of every row
    (the rollout's own token kept in it), log-probs over the whole vocabulary, then masked."""
    logits = model(input_ids=tokens[:, :-1]).logits
    target = tokens[:, 1:].clamp(max=cfg.n_codes - 1)
    lp = old_policy_logprobs(logits, cfg.n_codes, top_p, temperature, taken=target)
    taken = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    taken = torch.where(mask[:, 1:] > 0, taken, torch.zeros_like(taken))
    return torch.cat([torch.zeros_like(taken[:, :1]), taken], 1)


@torch.no_grad()
def old_sample(model, cfg: ARConfig, codes0, actions, frames, top_p=0.8, generator=None):
    """The pre-issue-20 sampler: transformers' DynamicCache through `past_key_values`, one token a call."""
    from rlir.models.ar_world_model import TOKENS_PER_ACTION, Rollout
    from rlir.utils.rand import multinomial
    B, N = codes0.shape[0], cfg.tokens_per_frame
    act = action_tokens(actions[:, : frames - 1], cfg.n_codes, codes0.device)
    zero_a = torch.zeros(B, TOKENS_PER_ACTION)
    toks, logps, mask = [codes0.long(), act[:, 0]], [torch.zeros(B, N), zero_a], [torch.zeros(B, N), zero_a]
    feed, cache = torch.cat([codes0.long(), act[:, 0]], 1), None
    for t in range(1, frames):
        ft, fl = [], []
        for j in range(N):
            out = model(input_ids=feed, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            lp = old_policy_logprobs(out.logits[:, -1], cfg.n_codes, top_p)
            tok = multinomial(lp.exp(), 1, generator)
            ft.append(tok)
            fl.append(lp.gather(-1, tok))
            feed = tok if j < N - 1 else (torch.cat([tok, act[:, t]], 1) if t < frames - 1 else None)
        toks += [torch.cat(ft, 1)] + ([act[:, t]] if t < frames - 1 else [])
        logps += [torch.cat(fl, 1)] + ([zero_a] if t < frames - 1 else [])
        mask += [torch.ones(B, N)] + ([zero_a] if t < frames - 1 else [])
    return Rollout(torch.cat(toks, 1), torch.cat(logps, 1), torch.cat(mask, 1))


def main() -> None:
    import copy
    import warnings
    from rlir.models.ar_world_model import score
    p = argparse.ArgumentParser()
    p.add_argument("--world-model", help="an AR world-model checkpoint (default: a tiny preset, random weights)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="bench/results/ar_sampler.json")
    a = p.parse_args()
    from transformers import LogitsProcessorList
    warnings.filterwarnings("ignore", message=".*past_key_values.*")     # the old path's deprecation notice
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.world_model:
        from rlir.training.wm_trainer import load_ar_world_model
        model, cfg, _ = load_ar_world_model(a.world_model)
    else:
        cfg = ARConfig()
        model = build_llama(cfg).eval()
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    B, F = a.batch, a.frames
    g = torch.Generator().manual_seed(a.seed)
    codes0 = torch.randint(0, cfg.n_codes, (B, cfg.tokens_per_frame), generator=g)
    actions = torch.stack([torch.randint(0, 2, (B, F - 1), generator=g) for _ in range(9)], -1)
    act = action_tokens(actions, cfg.n_codes, "cpu")
    prompt = torch.cat([codes0, act[:, 0]], 1)
    new_tokens = cfg.seq_len(F) - prompt.shape[1]
    processors = LogitsProcessorList([ForceActions(cfg, prompt.shape[1], act)])
    gen_kw = dict(attention_mask=torch.ones_like(prompt), do_sample=True, top_p=0.8, top_k=0, temperature=1.0,
                  logits_processor=processors, pad_token_id=0)
    paths = {
        "old_hf_cache_fp32": lambda gen, n: old_sample(model, cfg, codes0, actions, n, 0.8, gen),
        "ours_kv_fp32": lambda gen, n: sample(model, cfg, codes0, actions, frames=n, top_p=0.8, generator=gen),
        "ours_kv_bf16": lambda gen, n: sample(model_bf16, cfg, codes0, actions, frames=n, top_p=0.8, generator=gen),
        "hf_generate": lambda gen, n: model.generate(prompt, max_new_tokens=cfg.seq_len(n) - prompt.shape[1],
                                                     min_new_tokens=cfg.seq_len(n) - prompt.shape[1], **gen_kw),
    }
    res, logp_diff = {k: [] for k in paths}, {}
    with torch.no_grad():   # warm-up: first calls pay for lazy initialisation in torch and transformers
        for fn in paths.values():
            fn(torch.Generator().manual_seed(0), 2)
    for r in range(a.repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                out = fn(torch.Generator().manual_seed(r), F)
            res[name].append(time.perf_counter() - t0)
            if name != "hf_generate" and r == 0:
                with torch.no_grad():
                    ref = score(model, cfg, out.tokens, out.mask, 1.0, 0.8)
                m = out.mask > 0
                logp_diff[name] = float((ref - out.logps)[m].abs().max())
            elif name == "hf_generate":
                assert out.shape[1] == cfg.seq_len(F)
    frames_made = B * (F - 1)
    summary = {name: {"seconds": min(ts), "frames_per_s": frames_made / min(ts), "all_seconds": ts,
                      "max_logp_diff": logp_diff.get(name)} for name, ts in res.items()}
    base = summary["old_hf_cache_fp32"]["seconds"]
    report = {"bench": "ar_sampler", "command": " ".join(sys.argv), "seed": a.seed, "batch": B, "frames": F,
              "tokens_per_frame": cfg.tokens_per_frame, "params": sum(p.numel() for p in model.parameters()),
              "world_model": a.world_model or "tiny preset, random weights", "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "results": summary,
              "speedup_vs_old": {k: base / v["seconds"] for k, v in summary.items()},
              "speedup_vs_generate": {k: summary["hf_generate"]["seconds"] / v["seconds"] for k, v in summary.items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'path':18s} {'frames/s':>9s} {'x old':>6s} {'x generate':>10s} {'max |dlogp|':>11s}")
    for name, s_ in summary.items():
        d = "" if s_["max_logp_diff"] is None else f"{s_['max_logp_diff']:.1e}"
        print(f"{name:18s} {s_['frames_per_s']:9.1f} {report['speedup_vs_old'][name]:6.2f} "
              f"{report['speedup_vs_generate'][name]:10.2f} {d:>11s}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

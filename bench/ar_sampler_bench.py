"""Sampling speed of the AR world model: our KV-cache rollout sampler vs transformers' generate().

Same model, same inputs (frame 0's codes + 15 real actions), batch of 8 rollouts, top-p 0.8, in one
run. generate() gets a logits processor that forces the action tokens and restricts every other
position to the visual vocabulary, so both make the same kind of rollout. Frames/s = B * 15 / time.

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


def main() -> None:
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
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.world_model:
        from rlir.training.wm_trainer import load_ar_world_model
        model, cfg, _ = load_ar_world_model(a.world_model)
    else:
        cfg = ARConfig()
        model = build_llama(cfg).eval()
    B, F = a.batch, a.frames
    g = torch.Generator().manual_seed(a.seed)
    codes0 = torch.randint(0, cfg.n_codes, (B, cfg.tokens_per_frame), generator=g)
    actions = torch.stack([torch.randint(0, 2, (B, F - 1), generator=g) for _ in range(9)], -1)
    act = action_tokens(actions, cfg.n_codes, "cpu")
    prompt = torch.cat([codes0, act[:, 0]], 1)
    new_tokens = cfg.seq_len(F) - prompt.shape[1]
    res = {"ours_kv_cache": [], "hf_generate": []}
    processors = LogitsProcessorList([ForceActions(cfg, prompt.shape[1], act)])
    gen_kw = dict(attention_mask=torch.ones_like(prompt), do_sample=True, top_p=0.8, top_k=0, temperature=1.0,
                  logits_processor=processors, pad_token_id=0)
    with torch.no_grad():   # warm-up: first calls pay for lazy initialisation in torch and transformers
        sample(model, cfg, codes0, actions, frames=2, top_p=0.8)
        model.generate(prompt, max_new_tokens=cfg.block, **gen_kw)
    for r in range(a.repeats):
        t0 = time.perf_counter()
        sample(model, cfg, codes0, actions, frames=F, top_p=0.8, generator=torch.Generator().manual_seed(r))
        res["ours_kv_cache"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **gen_kw)
        res["hf_generate"].append(time.perf_counter() - t0)
        assert out.shape[1] == cfg.seq_len(F)
    frames_made = B * (F - 1)
    summary = {name: {"seconds": min(ts), "frames_per_s": frames_made / min(ts), "all_seconds": ts}
               for name, ts in res.items()}
    report = {"bench": "ar_sampler", "command": " ".join(sys.argv), "seed": a.seed, "batch": B, "frames": F,
              "tokens_per_frame": cfg.tokens_per_frame, "params": sum(p.numel() for p in model.parameters()),
              "world_model": a.world_model or "tiny preset, random weights", "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "results": summary,
              "speedup": summary["hf_generate"]["seconds"] / summary["ours_kv_cache"]["seconds"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, s in summary.items():
        print(f"{name:14s} {s['frames_per_s']:7.1f} frames/s  ({s['seconds']:.2f} s for {B} rollouts of {F - 1} frames)")
    print(f"speedup {report['speedup']:.2f}x; wrote {a.out}")


if __name__ == "__main__":
    main()

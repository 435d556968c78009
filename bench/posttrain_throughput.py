"""Throughput of one RLIR post-training step: rollout frames/s, training tokens/s and model FLOPs
utilisation against this device's own measured matmul rate (same dtype, same run).

The world model and IDM are randomly initialised at the chosen sizes and prompts come from a
synthetic episode store at the codec's resolution, so nothing needs training first. `--world-model
CKPT` times a trained world model instead: the AR sampler's nucleus head (top-128 codes, a full sort
only when they hold less than top_p) is fast on a trained model's peaked distribution and falls back
on a random model's flat one, so AR rollout figures depend on the weights.

`--old-sampler` (AR) makes the baseline the path before the speed work of issue 20: the
pre-issue-20 sampler (transformers' growing `past_key_values` cache, a full sort of the vocabulary at
every token; `bench/ar_sampler_bench.py`'s `old_sample`) and scorer (logits at every position, a full
sort of every row; `old_score`) with float32 rollouts and training, so a
`--variant` is timed against the old path in the same run. Works under torchrun (each rank rolls out its share of the groups; figures are
for the whole job):

    python bench/posttrain_throughput.py --paradigm ar --preset tiny                       # CPU
    python bench/posttrain_throughput.py --paradigm ar --preset 300M --codec paper --device cuda --precision bf16
    torchrun --standalone --nproc_per_node=8 bench/posttrain_throughput.py --paradigm ar --preset 300M \\
        --codec paper --device cuda --precision bf16 --parallel fsdp

FLOPs are counted as 2 x parameters per token for a forward pass and 6 x for forward and backward
(attention's own FLOPs left out, so MFU is slightly understated).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))          # ar_sampler_bench's old path

from rlir.config import from_dict, load_config  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.models.idm import IDMConfig, build_idm  # noqa: E402
from rlir.models.tokenizer import TokenizerConfig, VQTokenizer  # noqa: E402
from rlir.rl.trainer import GRPOConfig, Posttrainer  # noqa: E402
from rlir.training.distributed import is_main  # noqa: E402
from rlir.training.wm_trainer import (WMTrainConfig, build_world_model, load_world_model_checkpoint,  # noqa: E402
                                      resolve_model_config, wm_checkpoint_config)
from rlir.utils.checkpoint import save_checkpoint  # noqa: E402
from rlir.utils.io import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def matmul_rate(device: str, dtype: torch.dtype, n: int) -> float:
    """Measured dense matmul FLOP/s of this device in this dtype (the MFU denominator)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        a @ b
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


@contextlib.contextmanager
def old_path(on: bool):
    """AR rollouts and training through the pre-issue-20 sampler and scorer while on (the package's
    `sample` and `score` swapped for them)."""
    if not on:
        yield
        return
    import warnings
    import rlir.models.ar_world_model as arwm
    from ar_sampler_bench import old_sample, old_score
    new, new_score = arwm.sample, arwm.score

    def sample(model, cfg, codes0, actions, frames, temperature=1.0, top_p=1.0, generator=None):
        assert temperature == 1.0, "the old sampler drew at temperature 1"
        return old_sample(model, cfg, codes0, actions, frames, top_p, generator)
    arwm.sample, arwm.score = sample, old_score
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*past_key_values.*")
            yield
    finally:
        arwm.sample, arwm.score = new, new_score


def synthetic_store(root: Path, resolution, episodes: int = 8, frames: int = 24) -> str:
    from rlir.actions import N_CLASSES
    from rlir.data.store import Episode
    rng = np.random.default_rng(0)
    s = EpisodeStore.create(root, metadata={"resolution": list(resolution)})
    for i in range(episodes):
        T = frames
        ep = Episode(frames=rng.integers(0, 256, (T, *resolution, 3), dtype=np.uint8),
                     actions=np.stack([rng.integers(0, k, T) for k in N_CLASSES], 1).astype(np.int16),
                     camera_deg=np.zeros((T, 2), np.float32))
        s.add(f"s{i}", ep, split="train" if i < episodes - 2 else "val")
    return str(root)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paradigm", choices=["ar", "diffusion"], default="ar")
    p.add_argument("--preset", default="tiny", help="ar: tiny|300M|700M|1.2B; diffusion: tiny|310M|774M")
    p.add_argument("--codec", choices=["tiny", "paper"], default="tiny", help="frame codec sizes (paper: 224x384)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--batch-size", type=int, default=2, help="prompts per step (global)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a post-training setting over the preset's (repeatable), for the baseline and every variant")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="also time the preset with these settings, in the same run, and report its speed-up "
                        "over the baseline (repeatable), e.g. window2:sde_window=2")
    p.add_argument("--world-model", default=None, help="a trained world-model checkpoint (default: random weights)")
    p.add_argument("--old-sampler", action="store_true",
                   help="AR: the baseline rolls out with the pre-issue-20 sampler (variants keep the new one)")
    p.add_argument("--out", default=None, help="JSON (default bench/results/posttrain_throughput_<...>.json)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    codec_yaml = ROOT / "configs" / ("autoencoder" if a.paradigm == "diffusion" else "tokenizer") / f"{a.codec}.yaml"
    if not codec_yaml.is_file():
        raise SystemExit(f"no codec config {codec_yaml}")
    import yaml
    if a.old_sampler and a.paradigm != "ar":
        raise SystemExit("--old-sampler is the AR sampler's old path")
    # every rank builds identical files from the same seeds in its own temp folder (no shared disk needed)
    tmp = Path(tempfile.mkdtemp(prefix=f"rlir_tp{os.environ.get('RANK', '0')}_"))
    torch.manual_seed(a.seed)
    if a.world_model:
        model, mcfg, codec = load_world_model_checkpoint(a.world_model, paradigm=a.paradigm)
        tok_cfg, wm_path = codec.cfg, a.world_model
    else:
        tok_cfg = from_dict(TokenizerConfig, yaml.safe_load(codec_yaml.read_text())["model"])
        mcfg = resolve_model_config(WMTrainConfig(paradigm=a.paradigm, preset=a.preset), tok_cfg, {"clip_len": a.frames})
        model, codec = build_world_model(mcfg), VQTokenizer(tok_cfg)
        wm_path = str(tmp / "wm")
        save_checkpoint(wm_path, wm_checkpoint_config(mcfg, tok_cfg, {}), {"model": model.state_dict(),
                                                                            "codec": codec.state_dict()})
    n_params = sum(p.numel() for p in model.parameters())
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    del model
    icfg = IDMConfig(resolution=tuple(tok_cfg.resolution), clip_len=a.frames)
    save_checkpoint(tmp / "idm", {"kind": "idm", "arch": "vpt", "model": asdict(icfg)},
                    {"model": build_idm(icfg).state_dict()})
    data = synthetic_store(tmp / "data", tok_cfg.resolution, frames=a.frames + 8)
    def measure(extra: list[str], old_sampler: bool = False) -> dict:
        cfg = load_config(GRPOConfig, ROOT / "configs" / "posttrain" / f"{a.paradigm}_tiny.yaml",
                          [f"batch_size={a.batch_size}", f"num_generations={a.num_generations}", f"frames={a.frames}",
                           "probe_clips=0", "media_every=0", "save_every=1000000", "eval_every=1000000",
                           f"steps={a.steps + 1}", f"seed={a.seed}", f"precision={a.precision}", f"parallel={a.parallel}",
                           f"activation_checkpointing={a.activation_checkpointing}", "gradient_accumulation_steps=1",
                           *a.set, *extra],
                          world_model=wm_path, idm=str(tmp / "idm"), data=data, out=tempfile.mkdtemp(dir=tmp),
                          device=a.device)
        tr = Posttrainer(cfg)
        with old_path(old_sampler):
            rows = [tr.step(s) for s in range(a.steps + 1)][1:]        # step 0 warms up (kernels, caches)
        G, B, F = cfg.num_generations, cfg.batch_size, cfg.frames
        n_roll = B * G
        gen_s = float(np.mean([r["generation_time"] for r in rows]))
        step_s = float(np.mean([r["step_time"] for r in rows]))
        train_s = step_s - gen_s
        n_body = n_params - emb
        if a.paradigm == "ar":
            gen_tokens = n_roll * (F - 1) * mcfg.tokens_per_frame                       # sampled visual tokens
            seq = mcfg.seq_len(F)
            train_tokens = n_roll * seq * cfg.num_iterations                            # scored (teacher-forced)
            flops = 2 * n_body * gen_tokens + 6 * n_body * train_tokens + (2 * n_body * n_roll * seq if cfg.beta > 0 else 0)
        else:
            N = mcfg.tokens_per_frame
            gen_tokens = n_roll * (F - 1) * N * (cfg.sde_steps + 1)                    # + the clean pass caching K/V
            k = tr.policy.n_train_steps
            train_tokens = n_roll * k * (2 * F - 1) * N * cfg.num_iterations           # [clean | noisy] per step
            flops = 2 * n_body * gen_tokens + 6 * n_body * train_tokens
        # the MFU denominator is the matmul rate of the dtype the step computes in (bf16 when the
        # training or the rollouts run under bf16); both rates are recorded
        n_mm = 8192 if a.device.startswith("cuda") else 2048
        rates = {name: matmul_rate(tr.cfg.device, dt, n_mm) * world
                 for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        step_dtype = "bf16" if "bf16" in (cfg.precision, getattr(cfg, "rollout_precision", "fp32")) else "fp32"
        peak = rates[step_dtype]
        res = {
            "command": " ".join(sys.argv), "seed": a.seed, "world_size": world, "device": a.device,
            "device_name": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
            "torch_threads": torch.get_num_threads(), "paradigm": a.paradigm, "preset": a.preset, "codec": a.codec,
            "params": n_params, "params_non_embedding": n_body, "precision": a.precision, "parallel": a.parallel,
            "activation_checkpointing": a.activation_checkpointing, "prompts": B, "num_generations": G, "frames": F,
            "step_s": step_s, "generation_s": gen_s, "train_s": train_s,
            "rollout_frames_per_s": n_roll * (F - 1) / gen_s,
            "training_tokens_per_s": train_tokens / max(train_s, 1e-9),
            "model_flops_per_s": flops / step_s, "measured_matmul_flops_per_s": peak,
            "matmul_flops_per_s": rates, "mfu_dtype": step_dtype, "matmul_size": n_mm,
            "mfu": flops / step_s / peak, "mfu_vs_bf16_rate": flops / step_s / rates["bf16"], "steps_timed": a.steps, "settings": list(a.set) + list(extra),
            "trained_sde_steps": tr.policy.n_train_steps if a.paradigm == "diffusion" else None,
            "world_model": a.world_model or f"{a.preset} preset, random weights",
            "sampler": "pre-issue-20 (old_sample)" if old_sampler else "current",
        }
        return res

    res = measure(["rollout_precision=fp32", "precision=fp32"] if a.old_sampler else [], a.old_sampler)
    if a.variant:
        variants = {}
        for v in a.variant:
            name, _, kv = v.partition(":")
            if not name or not kv:
                raise SystemExit(f"--variant wants NAME:KEY=VALUE[,KEY=VALUE], got {v!r}")
            variants[name] = measure(kv.split(","))
            variants[name]["step_speedup_vs_baseline"] = res["step_s"] / variants[name]["step_s"]
            variants[name]["train_speedup_vs_baseline"] = res["train_s"] / variants[name]["train_s"]
        res = {**res, "variants": variants}
    if is_main():
        out = Path(a.out or ROOT / "bench" / "results" /
                   f"posttrain_throughput_{a.paradigm}_{a.preset}_{a.codec}_{a.device}_{a.precision}_w{world}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

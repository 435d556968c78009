"""`rlir tokenizer train` / `rlir autoencoder train`: fit a frame codec on an episode store's training frames.

Reports reconstruction PSNR on validation frames and codebook usage (the share of codes in use;
the quantiser re-seeds dead codes from the batch, vector-quantize-pytorch's threshold_ema_dead_code).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlir.config import from_dict
from rlir.data.sampler import ClipSampler, fixed_clips, load_clips
from rlir.data.store import EpisodeStore
from rlir.errors import DataError
from rlir.models.conv_ae import psnr
from rlir.models.tokenizer import TokenizerConfig, VQTokenizer, tokenizer_loss
from rlir.training.distributed import unwrap
from rlir.training.loop import (BudgetFit, LoopConfig, RunLog, load_train_state, optimizer_step, prepare_model,
                                 save_model_checkpoint, save_train_state, setup_run, step_stats, warmup_cosine)
from rlir.utils.checkpoint import load_state, read_config
from rlir.utils.io import atomic_write_json

log = logging.getLogger("rlir.tokenizer")


@dataclass
class TokenizerTrainConfig(LoopConfig):
    data: str = "runs/demo/data"
    out: str = "runs/demo/tokenizer"
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    batch_size: int = 32
    steps: int = 1500
    warmup: int = 50
    val_frames: int = 512

    def validate(self) -> None:
        super().validate()
        self.model.validate()


def val_frames(store: EpisodeStore, n: int) -> np.ndarray:
    windows = fixed_clips(store, 1, split="val", stride=7)
    if not windows:
        raise DataError(f"{store.root}: no validation episodes")
    step = max(1, len(windows) // n)
    return load_clips(store, windows[::step][:n], 1)["frames"][:, 0]


@torch.no_grad()
def evaluate_tokenizer(model: VQTokenizer, frames: np.ndarray, batch: int = 128) -> dict:
    model.eval()
    ps, used = [], torch.zeros(model.cfg.codebook_size, dtype=torch.long)
    for s in range(0, len(frames), batch):
        x = torch.from_numpy(frames[s:s + batch])
        codes = model.encode(x)
        ps.append(psnr(model.decode(codes), x))
        if model.cfg.quantize:
            used += torch.bincount(codes.flatten(), minlength=model.cfg.codebook_size)
    out = {"psnr": float(torch.cat(ps).clamp(max=99).mean())}
    if model.cfg.quantize:
        p = used.float() / used.sum()
        out.update(codebook_usage=float((used > 0).float().mean()), perplexity=float((-(p[p > 0] * p[p > 0].log()).sum()).exp()))
    return out


def load_tokenizer(path: str | Path, device: str = "cpu", kind: str = "tokenizer") -> VQTokenizer:
    """A tokenizer (kind 'tokenizer') or continuous autoencoder (kind 'autoencoder') checkpoint."""
    cfg = read_config(path, kind=kind)
    model = VQTokenizer(from_dict(TokenizerConfig, cfg["model"]))
    load_state(model, path)
    return model.to(device).eval()


def train_tokenizer(cfg: TokenizerTrainConfig, progress: bool = True) -> dict:
    from tqdm import tqdm
    cfg.validate()
    d = setup_run(cfg)
    rows = d.rows(cfg.batch_size)
    store = EpisodeStore(cfg.data, cache_size=1_000_000)
    store.require_resolution(cfg.model.resolution, "tokenizer" if cfg.model.quantize else "autoencoder")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = prepare_model(VQTokenizer(cfg.model).to(cfg.device), cfg, d, ("encode", "decode"))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = warmup_cosine(opt, cfg.warmup, lambda: cfg.steps)
    sampler = ClipSampler(store, 1, cfg.batch_size, split="train", seed=cfg.seed)
    vf = val_frames(store, cfg.val_frames)
    last = out / "checkpoints" / "last"
    meta = load_train_state(last, "tokenizer_train_state", model, opt, sched, {"sampler": sampler.rng})
    step, best, history = (meta["step"], meta["best"], meta["history"]) if meta else (0, -1.0, [])
    fit = BudgetFit(cfg, d, meta)
    runlog = RunLog(out)
    t0, t_start = time.time(), time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    bar = tqdm(total=cfg.steps, initial=step, desc=unwrap(model).kind, disable=not progress or not d.main)
    while step < cfg.steps:
        model.train()
        x = torch.from_numpy(sampler.sample(rows)["frames"][:, 0]).to(cfg.device)   # this rank's rows
        with d.autocast():
            recon, _, vq_loss = model(x)
            loss = tokenizer_loss(recon.float(), VQTokenizer.to_float(x), vq_loss)
        optimizer_step(loss, model, opt, sched, 1.0)
        loss_v, out_of_time = step_stats(d, loss, t0, cfg.max_minutes)
        step += 1
        fit.after_step(step, bar)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            m = evaluate_tokenizer(unwrap(model), vf)
            row = {"step": step, "loss": loss_v, "elapsed_s": time.time() - t_start, "world_size": d.world,
                   "rows_per_rank": rows.stop - rows.start,
                   **{f"val/{k}": v for k, v in m.items()}}
            history.append(row)
            runlog.row(row)
            runlog.scalars(step, {"train/loss": row["loss"], **{k: v for k, v in row.items() if k.startswith("val/")}})
            if m["psnr"] > best:
                best = m["psnr"]
                save_model_checkpoint(out / "checkpoints" / "best",
                                      {"kind": unwrap(model).kind, "model": asdict(cfg.model), "step": step, "val": m},
                                      model)
            save_train_state(last, "tokenizer_train_state", model, opt, sched,
                             {"step": step, "best": best, "history": history, **fit.state()}, {"sampler": sampler.rng})
            usage = f"  codebook usage {m['codebook_usage']:.2f}" if "codebook_usage" in m else ""   # none without VQ
            log.info("step %d  val psnr %.2f dB%s", step, m["psnr"], usage)
            if out_of_time:
                break
    bar.close()
    runlog.close()
    summary = {"steps": step, "train_minutes": history[-1]["elapsed_s"] / 60 if history else 0.0,
               "best_checkpoint": str(out / "checkpoints" / "best"), "best_val_psnr": best,
               "last": history[-1] if history else {}}
    if d.main:
        atomic_write_json(out / "train_summary.json", summary)
    return summary

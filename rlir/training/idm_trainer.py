"""`rlir idm train`: fit an IDM on an episode store.

Cross-entropy per group, weighted against class imbalance (w_c ∝ freq_c^-power), augmentation
that leaves the action unchanged (brightness/contrast per clip, a small shift of the whole clip),
validation every `eval_every` steps, best checkpoint kept, resume from the last checkpoint.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlir.actions import GROUPS, N_CLASSES
from rlir.data.sampler import ClipSampler, fixed_clips, load_clips
from rlir.data.store import EpisodeStore
from rlir.errors import ConfigError, DataError
from rlir.eval.action_metrics import action_metrics
from rlir.models.idm import IDMConfig, build_idm
from rlir.training.distributed import unwrap
from rlir.training.loop import (LR_SCHEDULES, BudgetFit, LoopConfig, RunLog, load_train_state, lr_schedule,
                                 optimizer_step, prepare_model, save_model_checkpoint, save_train_state, setup_run,
                                 step_stats)
from rlir.utils.checkpoint import load_state, read_config

log = logging.getLogger("rlir.idm")


@dataclass
class IDMTrainConfig(LoopConfig):
    data: str = "runs/demo/data"
    out: str = "runs/demo/idm"
    model: IDMConfig = field(default_factory=IDMConfig)
    subset: str = "a"                 # "a" / "b": disjoint halves of the training recordings; "all"
    steps: int = 2500
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    val_clips: int = 256
    class_weight_power: float = 0.5
    aug_brightness: float = 0.2
    aug_shift: int = 3
    lr_schedule: str = "cosine"       # cosine (to 0 at `steps`) | constant after the warmup: a curve that
                                      # flattens under it is the model's limit, not the schedule's cooling

    def validate(self) -> None:
        super().validate()
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.subset not in ("a", "b", "all"):
            raise ConfigError(f"subset must be 'a', 'b' or 'all', got {self.subset!r}")


def recording_key(entry: dict) -> str:
    s = entry.get("source", {})
    return f"{s.get('seed', '')}/{s.get('recording', entry['id'])}"


def subset_ids(store: EpisodeStore, subset: str, split: str = "train") -> list[str]:
    """Disjoint halves of a split, by recording (a hash), so reward IDM and judge never share one."""
    ids = store.ids(split)
    if subset == "all":
        return ids
    half = lambda e: "a" if hashlib.sha256(recording_key(e).encode()).digest()[0] % 2 == 0 else "b"  # noqa: E731
    return [i for i in ids if half(store.entry(i)) == subset]


def class_weights(store: EpisodeStore, ids: list[str], power: float) -> list[torch.Tensor]:
    counts = [np.ones(k) for k in N_CLASSES]   # +1: a class never seen still gets a finite weight
    for i in ids:
        a = store.load(i).actions
        for g, k in enumerate(N_CLASSES):
            counts[g] += np.bincount(a[:, g], minlength=k)
    out = []
    for c in counts:
        w = (c / c.sum()) ** (-power)
        w = w / (w * c / c.sum()).sum()          # expected weight 1 under the data's distribution
        out.append(torch.tensor(w, dtype=torch.float32))
    return out


def augment(frames: torch.Tensor, rng: np.random.Generator, brightness: float, shift: int,
            rows: slice | None = None, total: int | None = None, flow: torch.Tensor | None = None):
    """Per clip: one brightness/contrast change and one shift for all its frames (actions unchanged).
    frames may be `rows` of a batch of `total` clips: the draws are made for the whole batch.
    flow: the clips' optical flow [B, T, H, W, 2], shifted with them (a shift leaves flow values as
    they are); then returns (frames, flow)."""
    B = frames.shape[0]
    rows, total = rows or slice(0, B), total or B
    x = frames.float()
    gain = torch.tensor(1 + rng.uniform(-brightness, brightness, total)[rows], dtype=torch.float32).view(B, 1, 1, 1, 1)
    bias = torch.tensor(rng.uniform(-brightness, brightness, total)[rows] * 255 * 0.5,
                        dtype=torch.float32).view(B, 1, 1, 1, 1)
    x = (x * gain + bias).clamp(0, 255)
    if shift > 0:
        shifts = [rng.integers(0, 2 * shift + 1, 2) for _ in range(total)][rows]
        x = shift_clips(x, shifts, shift)
        flow = None if flow is None else shift_clips(flow.float(), shifts, shift)
    x = x.round().to(torch.uint8)
    return x if flow is None else (x, flow)


def shift_clips(x: torch.Tensor, shifts, shift: int) -> torch.Tensor:
    """Float [B, T, H, W, C] -> each clip cropped at its (dy, dx) from its edge-replicated padding."""
    B, T, H, W, C = x.shape
    pad = F.pad(x.permute(0, 1, 4, 2, 3).flatten(1, 2), (shift,) * 4, mode="replicate")  # [B, T*C, H+2s, W+2s]
    out = torch.empty_like(x)
    for b, (dy, dx) in enumerate(shifts):
        out[b] = pad[b, :, dy:dy + H, dx:dx + W].view(T, C, H, W).permute(0, 2, 3, 1)
    return out


class FlowCache:
    """Each episode's optical flow, computed once (float16 [n_frames, H, W, 2]): a training batch's
    flow is sliced from it instead of recomputed every step (about 200 DIS calls a batch)."""

    def __init__(self, store: EpisodeStore):
        self.store, self.flows = store, {}

    def batch(self, episode_ids: list[str], starts, clip_len: int) -> torch.Tensor:
        from rlir.models.idm import optical_flow
        out = []
        for i, s in zip(episode_ids, starts):
            if i not in self.flows:
                self.flows[i] = optical_flow(self.store.load(i).frames[None])[0].half()
            f = self.flows[i][int(s):int(s) + clip_len].clone()
            f[-1] = 0                                  # the clip's last frame has no next frame in the clip
            out.append(f)
        return torch.stack(out)


def motion_scale(store: EpisodeStore, ids: list[str]) -> torch.Tensor:
    """Per-dimension std of the aux head's targets (forward, right, up, pitch, yaw) over the training
    episodes: the regression is on standardised targets. A dataset without recorded motion is an error."""
    rows = []
    for i in ids:
        ep = store.load(i)
        if ep.motion is None:
            raise DataError(f"{store.root}: episode {i} has no recorded motion, which aux_motion trains on; "
                            f"record the data again with `rlir collect` (ViZDoom recordings carry it) or set "
                            f"model.aux_motion=0")
        rows.append(np.concatenate([ep.motion, ep.camera_deg], axis=1))
    return torch.tensor(np.concatenate(rows).std(0), dtype=torch.float32).clamp_min(1e-3)


def motion_loss(pred: torch.Tensor, motion: torch.Tensor, camera_deg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Smooth L1 of the aux head's [B, T-1, 5] against the standardised engine motion of t -> t+1."""
    n = pred.shape[1]
    target = torch.cat([motion[:, :n], camera_deg[:, :n]], dim=-1).float() / scale.to(pred.device)
    return F.smooth_l1_loss(pred.float(), target.to(pred.device))


def idm_loss(logits: list[torch.Tensor], actions: torch.Tensor, weights: list[torch.Tensor] | None = None,
             mean_over_ranks=None) -> tuple[torch.Tensor, dict]:
    """Sum over groups of the (weighted) cross-entropy of a_t, t = 0..T-2: sum_i w_i l_i / sum_i w_i.
    mean_over_ranks: averages a tensor over processes, so the denominator is the global batch's and
    N processes compute the loss of one process on the whole batch."""
    target = actions[:, : logits[0].shape[1]].long()
    total, parts = 0.0, {}
    for g, lg in enumerate(logits):
        w = None if weights is None else weights[g].to(lg.device)
        y = target[..., g].flatten()
        den = (w[y].sum() if w is not None else torch.tensor(float(y.numel()), device=lg.device)).float()
        if mean_over_ranks is not None:
            den = mean_over_ranks(den)
        l = F.cross_entropy(lg.flatten(0, 1).float(), y, weight=w, reduction="sum") / den
        parts[GROUPS[g]] = float(l.detach())
        total = total + l
    return total, parts


@torch.no_grad()
def predict(model: torch.nn.Module, frames: np.ndarray | torch.Tensor, batch_size: int = 64,
            device: str = "cpu") -> np.ndarray:
    """Argmax actions [N, T-1, 9] for clips [N, T, H, W, 3] (deterministic)."""
    model.eval()
    out = []
    frames = torch.as_tensor(frames)
    for s in range(0, len(frames), batch_size):
        logits = model(frames[s:s + batch_size].to(device))
        out.append(torch.stack([lg.argmax(-1) for lg in logits], -1).cpu())
    return torch.cat(out).numpy().astype(np.int64)


def evaluate_idm(model, store: EpisodeStore, split: str, clip_len: int, max_clips: int | None = None,
                 n_boot: int = 1000, device: str = "cpu", episodes: list[str] | None = None) -> dict:
    """Action metrics on the split's fixed clips (only those of `episodes`, if given)."""
    store.require_resolution(model.cfg.resolution, "IDM")
    windows = fixed_clips(store, clip_len, split=split)
    if episodes is not None:
        keep = set(episodes)
        windows = [w for w in windows if w[0] in keep]
    windows = windows[:max_clips] if max_clips is not None else windows
    if not windows:
        raise DataError(f"{store.root}: no {split} episode has {clip_len} frames to evaluate on")
    batch = load_clips(store, windows, clip_len)
    pred = predict(model, batch["frames"], device=device)
    return score_predictions(pred, batch["actions"], store.metadata, n_boot=n_boot)


def score_predictions(pred: np.ndarray, actions: np.ndarray, metadata: dict, n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """IDM predictions [N, T-1, 9] vs the clips' actions [N, >=T-1, 9] -> action_metrics, leaving out
    (in the `_shown` averages) the groups the dataset's metadata says its source never shows."""
    true = np.asarray(actions)[:, : pred.shape[1]].astype(np.int64)
    excluded = tuple(metadata.get("null_groups", {}))
    return action_metrics(pred, true, n_boot=n_boot, seed=seed, exclude_groups=excluded)


def _score(m: dict) -> float:
    h = m["metrics"]
    return h.get("f1_macro_shown", h["f1_macro"]) + 0.5 * (h["camera_pitch_accuracy"] + h["camera_yaw_accuracy"])


def load_idm(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """An IDM checkpoint -> (model in eval mode, its config). Wrong kinds are clear errors."""
    cfg = read_config(path, kind="idm")
    from rlir.config import from_dict
    mcfg = from_dict(IDMConfig, cfg["model"])
    model = build_idm(mcfg)
    load_state(model, path)
    return model.to(device).eval(), cfg


def load_reward_idm(spec: str, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """One IDM checkpoint, or several separated by commas read as one (IDMEnsemble: the mean of their
    softmaxes). Returns the model and the first member's config; every member must share its frame size
    and clip length."""
    from rlir.models.idm import IDMEnsemble
    paths = [p.strip() for p in str(spec).split(",") if p.strip()]
    if len(paths) < 2:
        return load_idm(spec, device)
    loaded = [load_idm(p, device) for p in paths]
    first = loaded[0][1]["model"]
    for p, (_, c) in zip(paths[1:], loaded[1:]):
        if (tuple(c["model"]["resolution"]), c["model"]["clip_len"]) != (tuple(first["resolution"]), first["clip_len"]):
            raise ConfigError(f"IDM ensemble: {p} reads {c['model']['resolution']} x {c['model']['clip_len']} frames, "
                              f"{paths[0]} {first['resolution']} x {first['clip_len']}")
    return IDMEnsemble([m for m, _ in loaded]).eval(), loaded[0][1]


def train_idm(cfg: IDMTrainConfig, progress: bool = True, stop_at_step: int | None = None) -> dict:
    """Train (or resume) an IDM; `stop_at_step` ends the run early as a kill would (for tests)."""
    from tqdm import tqdm

    from rlir.utils.io import atomic_write_json
    cfg.validate()
    cfg.model.validate()
    d = setup_run(cfg)
    rows = d.rows(cfg.batch_size)
    store = EpisodeStore(cfg.data, cache_size=1_000_000)
    store.require_resolution(cfg.model.resolution, "IDM")
    ids = subset_ids(store, cfg.subset)
    if not ids:
        raise DataError(f"{cfg.data}: no training episodes in subset {cfg.subset!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = prepare_model(build_idm(cfg.model).to(cfg.device), cfg, d)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_schedule(opt, cfg.lr_schedule, cfg.warmup, lambda: cfg.steps)
    sampler = ClipSampler(store, cfg.model.clip_len, cfg.batch_size, episode_ids=ids, seed=cfg.seed, split=None)
    aug_rng = np.random.default_rng(cfg.seed + 1)
    rngs = {"sampler": sampler.rng, "aug": aug_rng}
    weights = class_weights(store, ids, cfg.class_weight_power)
    flows = FlowCache(store) if cfg.model.flow else None
    m_scale = motion_scale(store, ids) if cfg.model.aux_motion > 0 else None
    last = out / "checkpoints" / "last"
    meta = load_train_state(last, "idm_train_state", model, opt, sched, rngs)   # resume after a kill
    step, best, history = (meta["step"], meta["best"], meta["history"]) if meta else (0, -1e9, [])
    if meta:
        log.info("resuming %s at step %d", out, step)
    fit = BudgetFit(cfg, d, meta)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("IDM %s: %.2fM parameters, %d training episodes (subset %s)", cfg.model.arch, n_params / 1e6,
             len(ids), cfg.subset)
    runlog = RunLog(out)
    t0, t_start = time.time(), time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"idm {cfg.model.arch}", disable=not progress or not d.main)
    stop_early = False
    while step < cfg.steps and not stop_early:
        model.train()
        b = sampler.sample(rows)                                  # this rank's rows of the global batch
        flow = flows.batch(b["episode_id"], b["start"], cfg.model.clip_len) if flows is not None else None
        frames = augment(torch.from_numpy(b["frames"]), aug_rng, cfg.aug_brightness, cfg.aug_shift,
                         rows, cfg.batch_size, flow=flow)
        frames, flow = frames if flow is not None else (frames, None)
        kw = {"flow": flow} if flow is not None else {}
        with d.autocast():
            if m_scale is not None:     # privileged targets: the motion head learns the engine's motion too
                logits, m_pred = model(frames.to(cfg.device), with_motion=True, **kw)
            else:
                logits = model(frames.to(cfg.device), **kw)
            loss, parts = idm_loss(logits, torch.from_numpy(b["actions"]).to(cfg.device), weights, d.mean_tensor)
            if m_scale is not None:
                m_loss = motion_loss(m_pred, torch.from_numpy(b["motion"]), torch.from_numpy(b["camera_deg"]), m_scale)
                loss = loss + cfg.model.aux_motion * m_loss
        optimizer_step(loss, model, opt, sched, cfg.grad_clip)
        loss_v, out_of_time = step_stats(d, loss, t0, cfg.max_minutes)
        step += 1
        fit.after_step(step, bar)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.3f}")
        if step % 25 == 0:
            runlog.scalars(step, {"train/loss": loss_v, "train/lr": sched.get_last_lr()[0],
                                  **({"train/motion_loss": float(m_loss.detach())} if m_scale is not None else {})})
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            with d.autocast():
                m = evaluate_idm(unwrap(model), store, "val", cfg.model.clip_len, max_clips=cfg.val_clips, n_boot=0,
                                 device=cfg.device)
            h = m["metrics"]
            row = {"step": step, "loss": loss_v, "elapsed_s": time.time() - t_start, "world_size": d.world,
                   "rows_per_rank": rows.stop - rows.start,
                   **{f"val/{k}": v for k, v in h.items()}}
            history.append(row)
            runlog.row(row)
            runlog.scalars(step, h, prefix="val/")
            score = _score(m)
            if score > best:
                best = score
                save_model_checkpoint(out / "checkpoints" / "best", _model_config(cfg, step, h), model)
            save_train_state(last, "idm_train_state", model, opt, sched,
                             {"step": step, "best": best, "history": history, **fit.state()}, rngs)
            log.info("step %d  val f1_macro %.3f  pitch err %.3f  yaw err %.3f", step, h["f1_macro"],
                     h["camera_pitch_bin_error"], h["camera_yaw_bin_error"])
            stop_early = out_of_time or (stop_at_step is not None and step >= stop_at_step)
    bar.close()
    runlog.close()
    summary = {"steps": step, "train_minutes": (history[-1]["elapsed_s"] / 60) if history else 0.0,
               "best_checkpoint": str(out / "checkpoints" / "best"), "params": n_params,
               "history": history[-1] if history else {}}
    if d.main:
        atomic_write_json(out / "train_summary.json", summary)
    return summary


def _model_config(cfg: IDMTrainConfig, step: int, val: dict) -> dict:
    return {"kind": "idm", "arch": cfg.model.arch, "model": asdict(cfg.model), "step": step,
            "train": {k: v for k, v in asdict(cfg).items() if k != "model"}, "val": val}

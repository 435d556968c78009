"""`rlir evaluate` (DESIGN.md Contracts 3 and 4): score generated clips against the real ones.

Input: a generated store (Contract 2 episodes whose frame 0 is real and frames 1..T-1 are generated
under the clip's actions, as `rlir generate` writes them) and the real dataset. With a world model
it first runs `generate` into OUT/generated (resumable). Giving the real dataset itself as the
generated store scores real clips "as if generated": the IDM upper bound, the "GT" row of Table 1.

Pairing: a generated clip names its source window in its manifest entry (`source.clip` =
[episode id, start]); a plain dataset used as the generated store is cut into the same fixed
non-overlapping windows as the real one (`fixed_clips`), paired by episode id and start. Every pair
must carry the same actions, otherwise the stores do not match and evaluation stops with an error.

Metrics (one value per clip, then the mean with a 95% percentile bootstrap interval over clips):
- action metrics of the reward IDM and (when given) the judge IDM: `action_metrics` (MineWorld's
  protocol), exactly what `rlir idm eval` computes on real clips;
- the inverse reward (paper Eq. 3) of each IDM, modes `all` (all 9 groups right) and `per_group`;
- PSNR (torchmetrics, data range 255, frames 1..T-1 of a clip at once) and SSIM (torchmetrics,
  Gaussian 11x11 window, per frame, averaged over frames 1..T-1). Identical frames have infinite
  PSNR; it is capped at PSNR_CAP_DB = 100 dB (an MSE of 6.5e-6 grey levels^2) per clip;
- `frechet_idm_feature_distance`: the Frechet distance between Gaussians fitted to the generated
  and the real clips' video features from the judge IDM (the reward IDM when no judge is given):
  the IDM's per-frame hidden states (what its action heads read) averaged over time. It is a
  distance in the feature space of a small model trained on this dataset, not FVD, and its
  scale depends on that model; compare it only between runs scored by the same IDM checkpoint;
- `fvd`: FVD proper (I3D logits, Unterthiner et al.), only with local I3D weights (`i3d`); null
  with the reason otherwise;
- dynamics: OpenCV Farneback optical flow between consecutive frames (all T-1 pairs). Per clip the
  mean flow magnitude (pixels per frame), and VBench's dynamic degree rule on it: a pair is moving
  when the mean of its top 5% flow magnitudes exceeds 6 * min(H, W) / 256 pixels, a clip is
  dynamic when at least round(4 * T / 16) pairs move; dynamic degree = the fraction of dynamic
  clips. VBench uses RAFT flow, so the numbers are comparable between rlir runs, not with VBench's;
- brightness: the mean pixel value (0..255) per frame, for generated and real clips, and the
  paired difference generated - real over frames 1..T-1 (a world model that darkens shows here).

Next to metrics.json, per_clip.npz keeps each IDM's predictions and the per-clip PSNR, SSIM and
brightness, so two evaluations of the same clips can be compared clip by clip (rlir/eval/paired.py).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlir.actions import GROUPS
from rlir.data.sampler import fixed_clips
from rlir.data.store import EpisodeStore
from rlir.errors import ConfigError, DataError, RlirError
from rlir.eval.generate import bootstrap_ci, checkpoint_digest
from rlir.eval.paired import PER_CLIP_FILE, clip_ids
from rlir.utils.io import atomic_write, atomic_write_json

log = logging.getLogger("rlir.evaluate")

FORMAT = "rlir-evaluate/1"
PSNR_CAP_DB = 100.0
FLOW_TOP_FRACTION = 0.05          # VBench dynamic degree: the mean of the top 5% flow magnitudes per pair
FRECHET_BOOT = 200                # bootstrap resamples for the Frechet distances (each needs two eigh)
REWARD_MODES = ("all", "per_group")
POSTTRAIN_KEYS = ("posttrain", "posttrained_from", "grpo", "rl")   # a world-model config holding one of these is post-trained


# --- metric helpers ------------------------------------------------------------------------------
def stat(x, n_boot: int = 1000, seed: int = 0) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(x.mean()) if len(x) else float("nan"), "ci95": bootstrap_ci(x, n_boot, seed)}


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets x [N, d] and y [M, d]:
    |mu_x - mu_y|^2 + tr(Sx) + tr(Sy) - 2 tr((Sx^1/2 Sy Sx^1/2)^1/2), in float64 with symmetric
    eigendecompositions (no complex sqrtm); 0 for identical sets up to rounding."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    sx = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1],) * 2)
    sy = np.cov(y, rowvar=False) if len(y) > 1 else np.zeros((y.shape[1],) * 2)
    sx, sy = np.atleast_2d(sx), np.atleast_2d(sy)
    h = _sqrt_psd(sx)
    ev = np.linalg.eigvalsh((h @ sy @ h + (h @ sy @ h).T) / 2)
    d = float(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())
    return max(d, 0.0)


def frechet_with_ci(gen: np.ndarray, real: np.ndarray, n_boot: int, seed: int) -> dict:
    """The distance and a 95% bootstrap interval, resampling the paired clips together."""
    from threadpoolctl import threadpool_limits
    n = len(gen)
    rng = np.random.default_rng(seed)
    boots = []
    with threadpool_limits(1):     # small eighs: BLAS threads next to torch's OpenMP pool only contend
        value = frechet_distance(gen, real)
        for _ in range(n_boot if n > 1 else 0):
            idx = rng.integers(0, n, n)
            boots.append(frechet_distance(gen[idx], real[idx]))
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if boots else [value, value]
    sx = np.cov(np.asarray(real, np.float64), rowvar=False) if n > 1 else np.zeros(1)
    return {"value": value, "ci95": ci, "n_boot": len(boots), "feature_dim": int(gen.shape[1]),
            "trace_cov_real": float(np.trace(np.atleast_2d(sx)))}


def flow_stats(clip: np.ndarray) -> tuple[float, np.ndarray]:
    """uint8 [T, H, W, 3] -> (mean flow magnitude over all pairs and pixels, top-5% mean per pair [T-1])."""
    import cv2
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
    means, tops = [], []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mag = np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).ravel()
        means.append(mag.mean())
        k = max(1, int(round(FLOW_TOP_FRACTION * mag.size)))
        tops.append(np.partition(mag, mag.size - k)[-k:].mean())
    return float(np.mean(means)), np.asarray(tops)


def dynamic_rule(h: int, w: int, t: int) -> tuple[float, int]:
    """VBench's dynamic-degree thresholds for clips of t frames of h x w: (pixels, moving pairs needed)."""
    return 6.0 * min(h, w) / 256.0, max(1, int(round(4 * t / 16.0)))


# --- models --------------------------------------------------------------------------------------
@dataclass
class IDMScorer:
    role: str                 # "reward_idm" or "judge_idm"
    path: str
    model: torch.nn.Module
    config: dict

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        """uint8 clips [B, T, H, W, 3] -> (per-group logits [B, T-1, K], video features [B, d]), one pass."""
        from rlir.models.idm import video_features
        h = self.model.hidden(frames.to(device))
        logits = [lg.float().cpu() for lg in self.model.heads(h)]
        if not all(bool(torch.isfinite(lg).all()) for lg in logits):   # argmax of NaN is 0: a score, not an error
            raise RlirError(f"{self.path}: the {self.role.replace('_', ' ')} gives non-finite outputs (NaN or inf)")
        return logits, video_features(h).cpu()


def load_scorer(role: str, path: str, device: str, frames: int) -> IDMScorer:
    from rlir.training.idm_trainer import load_idm
    model, cfg = load_idm(path, device)
    clip_len = int(model.cfg.clip_len)
    if model.cfg.arch == "vpt" and frames > clip_len:
        raise ConfigError(f"--frames {frames} is longer than the {role.replace('_', ' ')}'s clip length "
                          f"{clip_len} ({path})")
    return IDMScorer(role, str(path), model, cfg)


def world_model_role(path: str | None) -> tuple[str, str]:
    """(role, where it came from): 'posttrained' when the world model's checkpoint config records
    post-training (a non-empty key among POSTTRAIN_KEYS, or stage: posttrain), else 'base'; the
    source is 'guess' when the checkpoint cannot be read (a report may then decide otherwise)."""
    if not path:
        return "base", "guess"
    from rlir.utils.checkpoint import read_config
    try:
        cfg = read_config(path)
    except RlirError:
        return "base", "guess"
    post = any(cfg.get(k) for k in POSTTRAIN_KEYS) or cfg.get("stage") == "posttrain"
    return ("posttrained" if post else "base"), "checkpoint config"


def _short(path: str) -> str:
    p = Path(path)
    if p.parent.name == "checkpoints":
        p = p.parent.parent
    return str(p)


# --- pairing -------------------------------------------------------------------------------------
@dataclass
class Pair:
    gen_id: str
    gen_start: int
    episode: str
    start: int


def pair_clips(real: EpisodeStore, gen: EpisodeStore, frames: int, split: str,
               max_clips: int | None) -> list[Pair]:
    """Generated clips (or windows of a plain dataset) -> the real windows they come from."""
    clip_store = "generated" in gen.metadata or any("clip" in (e.get("source") or {}) for e in gen.entries)
    pairs = []
    if clip_store:
        for e in gen.entries:
            if e["split"] != split:
                continue
            clip = (e.get("source") or {}).get("clip")
            if not clip:
                raise DataError(f"{gen.root}: generated episode {e['id']!r} does not name its source clip "
                                f"(source.clip in manifest.jsonl)")
            if int(e["n_frames"]) < frames:
                raise DataError(f"{gen.root}: generated clip {e['id']!r} has {e['n_frames']} frames, "
                                f"fewer than --frames {frames}")
            pairs.append(Pair(e["id"], 0, str(clip[0]), int(clip[1])))
            if max_clips is not None and len(pairs) >= max_clips:
                break
    else:
        pairs = [Pair(i, s, i, s) for i, s in fixed_clips(gen, frames, split=split, max_clips=max_clips)]
    if not pairs:
        raise DataError(f"{gen.root}: no {split} clips of {frames} frames to evaluate")
    real_ids = set(real.ids())
    missing = [p for p in pairs if p.episode not in real_ids]
    if missing:
        raise DataError(f"{gen.root} does not match {real.root}: {len(missing)} of {len(pairs)} clips come from "
                        f"episodes it does not hold (e.g. {missing[0].episode!r})")
    short = [p for p in pairs if p.start + frames > int(real.entry(p.episode)["n_frames"])]
    if short:
        raise DataError(f"{gen.root} does not match {real.root}: clip {short[0].gen_id!r} needs frames "
                        f"{short[0].start}..{short[0].start + frames - 1} of episode {short[0].episode!r}, "
                        f"which has {real.entry(short[0].episode)['n_frames']}")
    return pairs


def _load_batch(real: EpisodeStore, gen: EpisodeStore, pairs: list[Pair], frames: int):
    r, g = [], []
    for p in pairs:
        re_ = real.load(p.episode).slice(p.start, p.start + frames)
        ge = gen.load(p.gen_id).slice(p.gen_start, p.gen_start + frames)
        if ge.frames.shape != re_.frames.shape:
            raise DataError(f"{gen.root}: clip {p.gen_id!r} has frames {list(ge.frames.shape)}, the real clip "
                            f"{list(re_.frames.shape)}")
        if not np.array_equal(ge.actions, re_.actions):
            raise DataError(f"{gen.root} does not match {real.root}: clip {p.gen_id!r} has other actions than "
                            f"episode {p.episode!r} frames {p.start}..{p.start + frames - 1}")
        r.append(re_)
        g.append(ge)
    return (np.stack([e.frames for e in r]), np.stack([e.frames for e in g]), np.stack([e.actions for e in r]))


# --- the protocol --------------------------------------------------------------------------------
def evaluate(data: str, out: str, idm: str, judge: str | None = None, generated: str | None = None,
             world_model: str | None = None, frames: int = 16, seed: int = 0, split: str = "test",
             batch_size: int = 8, max_clips: int | None = None, device: str = "cpu", i3d: str | None = None,
             n_boot: int = 1000, label: str | None = None, role: str | None = None, progress: bool = True,
             command: dict | None = None, overwrite: bool = False) -> dict:
    """Generate (with `world_model`) and/or score `generated` against `data`; writes OUT/metrics.json."""
    import torchmetrics.functional.image as tmf
    from tqdm import tqdm

    from rlir.rl.rewards import inverse_reward
    from rlir.training.idm_trainer import score_predictions

    if frames < 2:
        raise ConfigError(f"--frames must be at least 2, got {frames}")
    if world_model is None and generated is None:
        raise ConfigError("give --world-model (to generate, then evaluate) or --generated (a store to evaluate)")
    if n_boot < 1:
        raise ConfigError(f"--n-boot must be at least 1, got {n_boot}")
    from rlir.utils.output_guard import Input, Output, check_output
    inputs = [Input(data, "--data"), Input(idm, "--idm", False), Input(judge, "--judge", False),
              Input(world_model, "--world-model", False), Input(i3d, "--i3d", False)]
    if world_model is None:
        inputs.append(Input(generated, "--generated"))
    else:          # the clips are written: never into the real data or a checkpoint (checked before any work)
        generated = generated or str(Path(out) / "generated")
        check_output(Output(generated, "--generated"), inputs)
    check_output(Output(out, "--out"), inputs)
    t0 = time.time()
    real = EpisodeStore(data, cache_size=64)                        # no manifest -> one-line error
    scorers = [load_scorer("reward_idm", idm, device, frames)]     # wrong kind -> one-line error
    if judge:
        scorers.append(load_scorer("judge_idm", judge, device, frames))
    for s in scorers:
        real.require_resolution(s.model.cfg.resolution, s.role.replace("_", " "))
    fvd_model = None
    if i3d:
        from rlir.eval.i3d import load_i3d
        fvd_model = load_i3d(i3d, device)
    out = Path(out)
    gen_summary = None
    if world_model is not None:
        from rlir.eval.generate import generate
        gen_summary = generate(world_model, data, generated, frames=frames, seed=seed, split=split,
                               batch_size=batch_size, max_clips=max_clips, device=device, progress=progress,
                               overwrite=overwrite)
    gen = EpisodeStore(generated, cache_size=64)
    for s in scorers:
        gen.require_resolution(s.model.cfg.resolution, s.role.replace("_", " "))
    pairs = pair_clips(real, gen, frames, split, max_clips)
    gen_meta = gen.metadata.get("generated")
    wm_path = world_model or (gen_meta or {}).get("world_model")
    is_real = gen_meta is None
    if role:
        role_from = "--role"
    elif is_real:
        role, role_from = "real", "store (a dataset, not generated clips)"
    else:
        role, role_from = world_model_role(wm_path)
    if label is None:
        label = "real clips (GT)" if is_real else f"{(gen_meta or {}).get('paradigm', 'world model')} {_short(wm_path or generated)}"
    feat_scorer = scorers[-1]                                         # the judge when given
    n = len(pairs)

    preds = {s.role: [] for s in scorers}
    rewards = {s.role: {m: [] for m in REWARD_MODES} for s in scorers}
    feats_gen, feats_real, i3d_gen, i3d_real = [], [], [], []
    psnr, ssim, actions_all = [], [], []
    flow = {"generated": ([], []), "real": ([], [])}
    bright = {"generated": [], "real": []}
    bar = tqdm(total=n, desc="evaluate", unit="clip", disable=not progress)
    for b0 in range(0, n, batch_size):
        batch = pairs[b0:b0 + batch_size]
        rf, gf, acts = _load_batch(real, gen, batch, frames)
        rt, gt, at = torch.from_numpy(rf), torch.from_numpy(gf), torch.from_numpy(acts.astype(np.int64))
        actions_all.append(acts)
        same = np.array_equal(rf, gf)                                 # real clips scored as generated
        for s in scorers:
            logits, f = s(gt, device)
            preds[s.role].append(torch.stack([lg.argmax(-1) for lg in logits], -1).numpy())
            for m in REWARD_MODES:
                rewards[s.role][m].append(inverse_reward(logits, at, m).numpy())
            if s is feat_scorer:
                feats_gen.append(f.numpy())
                feats_real.append(f.numpy() if same else s(rt, device)[1].numpy())
        if fvd_model is not None:
            from rlir.eval.i3d import i3d_features
            ig = i3d_features(fvd_model, gt)
            i3d_gen.append(ig.numpy())
            i3d_real.append(ig.numpy() if same else i3d_features(fvd_model, rt).numpy())
        g1, r1 = gt[:, 1:].float(), rt[:, 1:].float()                 # frames 1..T-1 (frame 0 is given)
        p = tmf.peak_signal_noise_ratio(g1.double(), r1.double(), data_range=255.0, reduction="none",
                                        dim=(1, 2, 3, 4))
        psnr.append(torch.nan_to_num(p, posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB).numpy())
        B, T1, H, W, _ = g1.shape
        s_ = tmf.structural_similarity_index_measure(g1.permute(0, 1, 4, 2, 3).reshape(B * T1, 3, H, W),
                                                     r1.permute(0, 1, 4, 2, 3).reshape(B * T1, 3, H, W),
                                                     data_range=255.0, reduction="none")
        ssim.append(s_.view(B, T1).mean(1).numpy())
        for name, clips in (("generated", gf), ("real", rf)):
            for c in clips:
                mean, tops = flow_stats(c)
                flow[name][0].append(mean)
                flow[name][1].append(tops)
            bright[name].append(clips.reshape(len(clips), frames, -1).mean(-1))
        bar.update(len(batch))
    bar.close()

    actions = np.concatenate(actions_all)
    H, W = rf.shape[2:4]
    thr, need = dynamic_rule(H, W, frames)
    res: dict = {
        "format": FORMAT, "label": label, "role": role, "role_from": role_from, "seed": seed, "n_clips": n, "frames": frames,
        "split": split, "data": str(data), "generated": str(generated),
        "checkpoints": {"world_model": wm_path, "idm": str(idm), "judge": str(judge) if judge else None,
                        "i3d": str(i3d) if i3d else None},
        "generated_meta": gen_meta, "command": command or {},
    }
    if gen_summary is not None:
        res["generate_summary"] = gen_summary
    for s in scorers:
        m = score_predictions(np.concatenate(preds[s.role]), actions, real.metadata, n_boot=n_boot, seed=seed)
        m.update({"checkpoint": s.path, "checkpoint_sha256": checkpoint_digest(s.path), "arch": s.config.get("arch")})
        res[s.role] = m
    res.setdefault("judge_idm", None)
    res["inverse_reward"] = {s.role: {m: stat(np.concatenate(rewards[s.role][m]), n_boot, seed)
                                      for m in REWARD_MODES} for s in scorers}
    psnr_all = np.concatenate(psnr)
    res["psnr"] = {**stat(psnr_all, n_boot, seed), "cap_db": PSNR_CAP_DB,
                   "n_capped": int((psnr_all >= PSNR_CAP_DB).sum()), "frames": f"1..{frames - 1}",
                   "note": f"per clip over frames 1..{frames - 1}, data range 255; identical frames "
                           f"(infinite PSNR) count as {PSNR_CAP_DB:g} dB"}
    res["ssim"] = {**stat(np.concatenate(ssim), n_boot, seed), "frames": f"1..{frames - 1}",
                   "note": "torchmetrics SSIM, Gaussian 11x11 window (sigma 1.5), data range 255, "
                           "averaged over frames 1..T-1 per clip"}
    fg, fr = np.concatenate(feats_gen), np.concatenate(feats_real)
    res["frechet_idm_feature_distance"] = {
        **frechet_with_ci(fg, fr, min(n_boot, FRECHET_BOOT), seed), "model": feat_scorer.role,
        "checkpoint": feat_scorer.path,
        "features": f"{feat_scorer.role.replace('_', ' ')} ({feat_scorer.config.get('arch')}) per-frame hidden "
                    f"states averaged over time; not FVD: compare only between runs scored by this checkpoint"}
    if fvd_model is not None:
        res["fvd"] = {**frechet_with_ci(np.concatenate(i3d_gen), np.concatenate(i3d_real),
                                        min(n_boot, FRECHET_BOOT), seed), "weights": str(i3d)}
    else:
        res["fvd"] = None
        res["fvd_skipped"] = "no --i3d weights file given (FVD needs I3D Kinetics-400 weights; rlir downloads none)"
    dyn = {"definition": (f"OpenCV Farneback flow between consecutive frames; mean_flow_px = mean magnitude "
                          f"(pixels/frame); a pair moves when the mean of its top {FLOW_TOP_FRACTION:.0%} "
                          f"magnitudes exceeds {thr:.3f} px (6*min(H,W)/256), a clip is dynamic when >= {need} "
                          f"pairs move (VBench's dynamic degree rule, Farneback instead of RAFT)"),
           "threshold_px": thr, "min_moving_pairs": need}
    for name, (means, tops) in flow.items():
        dynamic = np.array([(t > thr).sum() >= need for t in tops], dtype=np.float64)
        dyn[name] = {"mean_flow_px": stat(means, n_boot, seed), "dynamic_degree": stat(dynamic, n_boot, seed)}
    res["dynamics"] = dyn
    bg, br = np.concatenate(bright["generated"]), np.concatenate(bright["real"])
    res["brightness"] = {
        "generated": {**stat(bg[:, 1:].mean(1), n_boot, seed), "per_frame": bg.mean(0).tolist()},
        "real": {**stat(br[:, 1:].mean(1), n_boot, seed), "per_frame": br.mean(0).tolist()},
        "delta": stat((bg[:, 1:] - br[:, 1:]).mean(1), n_boot, seed),
        "note": "mean pixel value 0..255; mean/ci95 over frames 1..T-1 per clip; delta = generated - real, paired",
    }
    reward_all = np.concatenate(rewards["reward_idm"]["all"])
    res["clips"] = [{"id": p.gen_id, "gen_start": p.gen_start, "episode": p.episode, "start": p.start,
                     "reward_all": float(reward_all[k]), "psnr": float(psnr_all[k])} for k, p in enumerate(pairs)]
    res["per_clip"] = PER_CLIP_FILE
    res["elapsed_s"] = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    # what a paired comparison of two evaluations of the same clips needs (rlir/eval/paired.py)
    per_clip = {"actions": actions[:, : frames - 1].astype(np.int16), "psnr": psnr_all,
                "ssim": np.concatenate(ssim), "brightness": bg[:, 1:].mean(1)}
    per_clip.update({f"pred_{s.role}": np.concatenate(preds[s.role]).astype(np.int16) for s in scorers})
    per_clip["clip_ids"] = clip_ids(res)         # ties the arrays to this metrics.json's clips
    atomic_write(out / PER_CLIP_FILE, lambda f: np.savez(f, **per_clip))
    atomic_write_json(out / "metrics.json", _finite(res))
    return res


def _finite(x):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


# --- printing ------------------------------------------------------------------------------------
def _ci(d: dict, key: str = "mean", fmt: str = "{:.3f}") -> str:
    v, ci = d.get(key, d.get("value")), d.get("ci95") or [None, None]
    if v is None:
        return "n/a"
    return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci[0] is not None else fmt.format(v)


def format_evaluation(m: dict) -> str:
    rows = [f"{m['label']} ({m['role']}): {m['n_clips']} clips of {m['frames']} frames, split {m['split']}"]

    def add(name, text):
        rows.append(f"  {name:<34} {text}")

    for role in ("reward_idm", "judge_idm"):
        a = m.get(role)
        if not a:
            continue
        h, ci = a["metrics"], a["ci95"]
        for k in ("f1_macro", "precision_macro", "recall_macro", "f1_macro_shown",
                  "camera_pitch_bin_error", "camera_yaw_bin_error"):
            if k in h:
                add(f"{role} {k}", f"{h[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]")
        add(f"{role} per-group F1", " ".join(f"{g}={a['per_group'][g]['f1_macro']:.2f}" for g in GROUPS[:7]))
        for mode, st in m["inverse_reward"][role].items():
            add(f"{role} inverse reward ({mode})", _ci(st))
    add("PSNR dB (frames 1..T-1)", _ci(m["psnr"], fmt="{:.2f}") + (f"  ({m['psnr']['n_capped']} capped at "
                                                                  f"{m['psnr']['cap_db']:g})" if m["psnr"]["n_capped"] else ""))
    add("SSIM", _ci(m["ssim"]))
    f = m["frechet_idm_feature_distance"]
    add(f"Frechet {f['model']} features", _ci(f, "value", "{:.4g}"))
    add("FVD (I3D)", _ci(m["fvd"], "value", "{:.4g}") if m["fvd"] else f"skipped: {m['fvd_skipped']}")
    for name in ("generated", "real"):
        d = m["dynamics"][name]
        add(f"dynamics {name}", f"flow {_ci(d['mean_flow_px'], fmt='{:.2f}')} px, dynamic degree "
                                f"{_ci(d['dynamic_degree'], fmt='{:.2f}')}")
    b = m["brightness"]
    add("brightness generated / real", f"{_ci(b['generated'], fmt='{:.1f}')} / {_ci(b['real'], fmt='{:.1f}')}")
    add("brightness delta (gen - real)", _ci(b["delta"], fmt="{:+.2f}"))
    return "\n".join(rows)

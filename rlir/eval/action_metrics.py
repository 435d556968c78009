"""Action-following metrics (DESIGN.md Contract 3, MineWorld's protocol).

The 7 discrete groups: precision / recall / F1 per group as scikit-learn computes them
(zero_division=0, labels = the classes present in truth or prediction), macro and micro,
pooled over all frames of all clips, then averaged over groups. The camera: mean absolute bin
error and accuracy for pitch and yaw, separately. Confidence intervals: percentile bootstrap
over clips (clips are resampled whole, since frames within a clip are not independent).

Everything is computed from per-clip confusion matrices, so a bootstrap resample is a sum of
matrices, not a re-run over frames.
"""
from __future__ import annotations

import numpy as np

from rlir.actions import CLASS_NAMES, GROUPS, N_CLASSES, PITCH, YAW

DISCRETE = tuple(range(7))


def confusions(pred: np.ndarray, true: np.ndarray) -> list[np.ndarray]:
    """pred, true: [N_clips, T, 9] class ids -> per group a [N_clips, K, K] count matrix (true, pred)."""
    pred, true = np.asarray(pred, np.int64), np.asarray(true, np.int64)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] != len(GROUPS):
        raise ValueError(f"pred and true must both be [clips, T, {len(GROUPS)}], got {pred.shape} and {true.shape}")
    out = []
    n = pred.shape[0]
    for g, k in enumerate(N_CLASSES):
        idx = (np.arange(n)[:, None] * k * k + true[:, :, g] * k + pred[:, :, g]).ravel()
        out.append(np.bincount(idx, minlength=n * k * k).reshape(n, k, k))
    return out


def prf_from_confusion(cm: np.ndarray) -> dict:
    """One group's pooled [K, K] matrix -> macro and micro P/R/F1, over the labels that occur."""
    tp = np.diag(cm).astype(np.float64)
    support_true, support_pred = cm.sum(1), cm.sum(0)
    present = (support_true + support_pred) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(support_pred > 0, tp / support_pred, 0.0)
        r = np.where(support_true > 0, tp / support_true, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    if not present.any():
        return {"precision_macro": 0.0, "recall_macro": 0.0, "f1_macro": 0.0,
                "precision_micro": 0.0, "recall_micro": 0.0, "f1_micro": 0.0}
    micro = tp.sum() / max(cm.sum(), 1)   # single-label: micro P = R = F1 = accuracy
    return {"precision_macro": float(p[present].mean()), "recall_macro": float(r[present].mean()),
            "f1_macro": float(f[present].mean()),
            "precision_micro": float(micro), "recall_micro": float(micro), "f1_micro": float(micro)}


def camera_from_confusion(cm: np.ndarray) -> dict:
    k = cm.shape[0]
    dist = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :])
    n = max(cm.sum(), 1)
    return {"bin_error": float((cm * dist).sum() / n), "accuracy": float(np.trace(cm) / n)}


def _summary(cms: list[np.ndarray], groups: tuple[int, ...]) -> dict:
    """Pooled matrices (one per group, [K, K]) -> the headline numbers."""
    per = {GROUPS[g]: prf_from_confusion(cms[g]) for g in groups}
    out = {}
    for key in ("precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro", "f1_micro"):
        out[key] = float(np.mean([per[GROUPS[g]][key] for g in groups]))
    for g, name in ((PITCH, "pitch"), (YAW, "yaw")):
        c = camera_from_confusion(cms[g])
        out[f"camera_{name}_bin_error"] = c["bin_error"]
        out[f"camera_{name}_accuracy"] = c["accuracy"]
    return out


def action_metrics(pred: np.ndarray, true: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   exclude_groups: tuple[str, ...] = ()) -> dict:
    """The full report: headline numbers with 95% bootstrap CIs, per-group scores, confusion matrices.

    `exclude_groups` names discrete groups a source never shows (e.g. ViZDoom's `use`); the
    headline then also carries `f1_macro_shown` etc. averaged over the other groups, because a
    group that is null in truth and prediction scores a trivial F1 of 1.0.
    """
    per_clip = confusions(pred, true)
    pooled = [c.sum(0) for c in per_clip]
    shown = tuple(g for g in DISCRETE if GROUPS[g] not in exclude_groups)
    head = _summary(pooled, DISCRETE)
    if exclude_groups:
        s = _summary(pooled, shown)
        head.update({f"{k}_shown": v for k, v in s.items() if not k.startswith("camera")})
    n = per_clip[0].shape[0]
    rng = np.random.default_rng(seed)
    boots = {k: [] for k in head}
    for _ in range(n_boot if n > 1 else 0):
        idx = rng.integers(0, n, n)
        cms = [c[idx].sum(0) for c in per_clip]
        b = _summary(cms, DISCRETE)
        if exclude_groups:
            b.update({f"{k}_shown": v for k, v in _summary(cms, shown).items() if not k.startswith("camera")})
        for k in boots:
            boots[k].append(b[k])
    ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [head[k], head[k]]
          for k, v in boots.items()}
    return {
        "n_clips": int(n), "n_frames": int(pred.shape[0] * pred.shape[1]),
        "metrics": head, "ci95": ci,
        "per_group": {GROUPS[g]: prf_from_confusion(pooled[g]) for g in DISCRETE}
                     | {GROUPS[g]: camera_from_confusion(pooled[g]) for g in (PITCH, YAW)},
        "confusion": {GROUPS[g]: {"labels": list(CLASS_NAMES[GROUPS[g]]), "matrix": pooled[g].tolist()}
                      for g in range(len(GROUPS))},
        "excluded_groups": list(exclude_groups),
    }


def format_metrics(m: dict, title: str = "") -> str:
    h, ci = m["metrics"], m["ci95"]
    lines = [title] if title else []
    lines.append(f"  clips {m['n_clips']}, frames {m['n_frames']}")
    for k in ("f1_macro", "f1_micro", "precision_macro", "recall_macro", "f1_macro_shown",
              "camera_pitch_bin_error", "camera_yaw_bin_error", "camera_pitch_accuracy", "camera_yaw_accuracy"):
        if k in h:
            lines.append(f"  {k:<24} {h[k]:.3f}  [{ci[k][0]:.3f}, {ci[k][1]:.3f}]")
    lines.append("  per group F1 (macro):  " + "  ".join(
        f"{g}={m['per_group'][g]['f1_macro']:.2f}" for g in GROUPS[:7]))
    return "\n".join(lines)

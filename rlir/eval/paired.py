"""Paired differences between two models scored on the same clips: did post-training help?

Two rows of a table, each with its own bootstrap interval, can overlap while one model is better on
almost every clip: the clips vary far more than the models do. Scored on the same clips (same frame 0,
actions and seeds), the difference per clip cancels that variation. Here every interval is a 95%
percentile bootstrap over clips in which the *same* resampled clips are used for both models:
- action metrics (MineWorld's protocol): confusion matrices are pooled over the resampled clips'
  frames for each model, then F1 / bin errors are computed and subtracted, so F1 stays a pooled macro
  F1 and is not averaged per clip;
- per-clip scalars (PSNR, SSIM, brightness): the mean of the per-clip differences.

`rlir evaluate` keeps what this needs in OUT/per_clip.npz (its predictions and per-clip values);
`compare_evaluations` reads two such folders, `rlir report` shows the result for every post-trained
row against the base row scored on the same clips, and bench/rlir_gain.py uses the same functions.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from rlir.actions import GROUPS
from rlir.errors import RlirError
from rlir.eval.action_metrics import DISCRETE, _summary, confusions, prf_from_confusion
from rlir.eval.generate import bootstrap_ci

HEADLINE = ("f1_macro", "f1_macro_shown", "camera_pitch_bin_error", "camera_yaw_bin_error")
PER_CLIP_FILE = "per_clip.npz"
SCALARS = ("psnr", "ssim", "brightness")


def _pct(x) -> list[float]:
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def boot_indices(n_clips: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot, n_clips] clip indices drawn with replacement: one draw shared by every model compared."""
    return np.random.default_rng(seed).integers(0, n_clips, size=(n_boot, n_clips))


def pooled_headline(cms: list[np.ndarray], idx: np.ndarray, shown: tuple[int, ...]) -> dict:
    """Per-clip confusion matrices -> the headline metrics of the clips `idx` (repeats count twice)."""
    sub = [c[idx].sum(0) for c in cms]
    h = _summary(sub, DISCRETE)
    h["f1_macro_shown"] = _summary(sub, shown)["f1_macro"]
    return {k: h[k] for k in HEADLINE}


def action_table(pred: np.ndarray, true: np.ndarray, shown: tuple[int, ...], boots: np.ndarray,
                 base_pred: np.ndarray | None = None) -> dict:
    """IDM predictions [N, T, 9] against the true actions -> headline metrics with bootstrap intervals,
    per-group F1; with base_pred (the other model's predictions on the same clips) also each metric's
    paired difference `minus_base` (mean and interval over the same resampled clips)."""
    cms = confusions(pred, true)
    full = pooled_headline(cms, np.arange(len(pred)), shown)
    samples = [pooled_headline(cms, b, shown) for b in boots]
    res = {k: {"mean": full[k], "ci95": _pct([s[k] for s in samples])} for k in HEADLINE}
    res["per_group_f1"] = {GROUPS[g]: prf_from_confusion(cms[g].sum(0))["f1_macro"] for g in shown}
    if base_pred is not None:
        if base_pred.shape != pred.shape:
            raise ValueError(f"paired predictions must match: {pred.shape} vs base {base_pred.shape}")
        bcms = confusions(base_pred, true)
        bfull = pooled_headline(bcms, np.arange(len(pred)), shown)
        bsamples = [pooled_headline(bcms, b, shown) for b in boots]
        res["per_group_f1_minus_base"] = {GROUPS[g]: res["per_group_f1"][GROUPS[g]] -
                                          prf_from_confusion(bcms[g].sum(0))["f1_macro"] for g in shown}
        for k in HEADLINE:
            d = [s[k] - bs[k] for s, bs in zip(samples, bsamples)]
            res[k]["minus_base"] = {"mean": full[k] - bfull[k], "ci95": _pct(d)}
    return res


def scalar(x: np.ndarray, base: np.ndarray | None = None, seed: int = 0, n_boot: int = 1000) -> dict:
    """Per-clip values -> mean and interval; with base (same clips) the paired difference and how many
    clips went up and down."""
    x = np.asarray(x, np.float64)
    out = {"mean": float(x.mean()), "ci95": bootstrap_ci(x, n_boot, seed)}
    if base is not None:
        d = x - np.asarray(base, np.float64)
        out["minus_base"] = {"mean": float(d.mean()), "ci95": bootstrap_ci(d, n_boot, seed),
                             "clips_higher": int((d > 0).sum()), "clips_lower": int((d < 0).sum())}
    return out


# --- two `rlir evaluate` folders -------------------------------------------------------------------
def _metrics_file(d: str | Path) -> Path:
    d = Path(d)
    return d if d.is_file() else d / "metrics.json"


def clip_ids(m: dict) -> np.ndarray:
    """The evaluated clips as strings "episode@start", in evaluation order (what per_clip.npz rows are)."""
    return np.array([f"{c.get('episode')}@{c.get('start')}" for c in m.get("clips", [])], dtype=str)


def load_evaluation(d: str | Path) -> tuple[dict, dict]:
    """An `rlir evaluate` output (folder or its metrics.json) -> (metrics, per-clip arrays), checked to
    belong together; anything else is a one-line RlirError."""
    f = _metrics_file(d)
    try:
        m = json.loads(f.read_text())
    except FileNotFoundError:
        raise RlirError(f"{f}: no evaluation here (run `rlir evaluate` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RlirError(f"{f}: not valid JSON") from None
    if (not isinstance(m, dict) or not isinstance(m.get("reward_idm"), dict) or not isinstance(m.get("clips"), list)
            or not all(isinstance(c, dict) for c in m["clips"])):
        raise RlirError(f"{f}: not an `rlir evaluate` output (no reward_idm metrics or clip list)")
    p = f.parent / PER_CLIP_FILE
    if not p.is_file():
        raise RlirError(f"{p}: missing; it is written by `rlir evaluate` since per-clip comparison was added: "
                        f"evaluate {f.parent} again to compare it clip by clip")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RlirError(f"{p}: damaged ({e})") from None
    n, frames = len(m["clips"]), m.get("frames")
    shape = (n, (frames or 0) - 1, len(GROUPS))
    bad = [k for k in ("actions", *(k for k in arrays if k.startswith("pred_"))) if getattr(arrays.get(k), "shape", None) != shape]
    bad += [k for k in SCALARS if k in arrays and arrays[k].shape != (n,)]
    if "clip_ids" in arrays and not np.array_equal(arrays["clip_ids"], clip_ids(m)):
        bad.append("clip_ids")
    if bad:
        raise RlirError(f"{p}: does not belong to {f} ({', '.join(bad)} do not match its {n} clips of {frames} "
                        f"frames): evaluate {f.parent} again")
    return m, arrays


def _idm_identity(m: dict, role: str):
    """What identifies the IDM an evaluation was scored by: its weights' digest (older files: the path)."""
    s = m.get(role) or {}
    return s.get("checkpoint_sha256") or s.get("checkpoint")


def compare_evaluations(base_dir: str | Path, treat_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """The paired difference treatment - base of two evaluations of the same clips.

    Refuses (RlirError) when they are not comparable: other clips, frames, split or actions, or other
    groups left out. An IDM scored by a different checkpoint in one of them (or in one only) is left
    out of the result, with the reason in `skipped`."""
    bm, ba = load_evaluation(base_dir)
    tm, ta = load_evaluation(treat_dir)
    for key in ("frames", "split"):
        if bm.get(key) != tm.get(key):
            raise RlirError(f"{treat_dir} and {base_dir} were evaluated with different {key} "
                            f"({tm.get(key)} vs {bm.get(key)}): a paired comparison needs the same clips")
    if not np.array_equal(clip_ids(bm), clip_ids(tm)) or not len(bm["clips"]):
        raise RlirError(f"{treat_dir} and {base_dir} were evaluated on different clips: a paired comparison needs "
                        f"the same data, split, --max-clips and seed")
    if not np.array_equal(ba["actions"], ta["actions"]):
        raise RlirError(f"{treat_dir} and {base_dir}: the same clips carry different actions (different datasets?)")
    null_b, null_t = (set(m["reward_idm"].get("excluded_groups") or []) for m in (bm, tm))
    if null_b != null_t:
        raise RlirError(f"{treat_dir} and {base_dir} leave out different groups ({sorted(null_t)} vs {sorted(null_b)})")
    true = ta["actions"].astype(np.int64)
    shown = tuple(g for g in DISCRETE if GROUPS[g] not in null_t)
    boots = boot_indices(len(true), n_boot, seed)
    res = {"base": {"label": bm.get("label"), "path": str(base_dir)},
           "treatment": {"label": tm.get("label"), "path": str(treat_dir)},
           "n_clips": len(true), "seed": seed, "n_boot": n_boot, "excluded_groups": sorted(null_t), "skipped": {}}
    for role in ("reward_idm", "judge_idm"):
        key = f"pred_{role}"
        if (key in ta) != (key in ba):
            res["skipped"][role] = f"scored only in the {'treatment' if key in ta else 'base'}'s evaluation"
            continue
        if key not in ta:
            continue
        cb, ct = _idm_identity(bm, role), _idm_identity(tm, role)
        if cb != ct:
            res["skipped"][role] = (f"scored by different checkpoints ({(bm.get(role) or {}).get('checkpoint')} vs "
                                    f"{(tm.get(role) or {}).get('checkpoint')})")
            continue
        t = action_table(ta[key].astype(np.int64), true, shown, boots, ba[key].astype(np.int64))
        res[role] = {"checkpoint": (tm.get(role) or {}).get("checkpoint"), **t}
    for k in SCALARS:
        if k in ta and k in ba:
            res[k] = scalar(ta[k], ba[k], seed, n_boot)
    return res


def format_comparison(c: dict) -> str:
    """A few lines for the terminal: treatment - base, paired, with intervals."""
    def d(x, fmt):
        mb = x["minus_base"]
        return f"{fmt.format(mb['mean'])} [{fmt.format(mb['ci95'][0])}, {fmt.format(mb['ci95'][1])}]"
    lines = [f"{c['treatment']['label']} minus {c['base']['label']}, paired over {c['n_clips']} clips:"]
    for role, name in (("judge_idm", "judge"), ("reward_idm", "reward IDM")):
        if role in c:
            lines.append(f"  {name} F1 shown {d(c[role]['f1_macro_shown'], '{:+.3f}')}, "
                         f"7 groups {d(c[role]['f1_macro'], '{:+.3f}')}, "
                         f"yaw bin error {d(c[role]['camera_yaw_bin_error'], '{:+.2f}')}")
    for k, fmt in (("psnr", "{:+.2f}"), ("ssim", "{:+.3f}"), ("brightness", "{:+.1f}")):
        if k in c:
            mb = c[k]["minus_base"]
            lines.append(f"  {k} {d(c[k], fmt)} ({mb['clips_higher']} clips up, {mb['clips_lower']} down)")
    lines += [f"  {role}: not compared, {why}" for role, why in c.get("skipped", {}).items()]
    return "\n".join(lines)

"""`rlir report RUN_DIRS... --out DIR`: one self-contained HTML page (and the PNG/GIF files).

A RUN_DIR holds
- an evaluation: `metrics.json` written by `rlir evaluate` (in RUN_DIR itself, or else in its direct
  subfolders, e.g. RUN/eval/metrics.json; each one is a row of the table), and/or
- a training log: `metrics.jsonl`, one JSON object per logged step (post-training rows carry `step`,
  `reward`, `reward_std`, `kl`, `frac_reward_zero_std`, `judge/reward`, `clip_ratio/...`, TRL's names;
  any of them may be missing; logs without any of them, e.g. an IDM's, draw no curve).

Roles and labels. Each table row has a role, `real` (the "GT" row: real clips scored as if
generated), `base` or `posttrained`, and a label. Both come from the row's metrics.json, where
`rlir evaluate` writes them (role: `real` for a plain dataset, `posttrained` when the world model's
checkpoint config records post-training, else `base`; `--role`/`--label` of evaluate override it).
The report's own `--role RUN_DIR=ROLE` and `--label RUN_DIR=LABEL` override that again. When evaluate
could not tell (no role, or `role_from: guess` because the world-model checkpoint was unreadable), a
RUN_DIR with a post-training log (rows with reward / kl) makes the row `posttrained`, else `base`.
Rows are ordered real, base, posttrained (then in the order given).

The page: the table (like the paper's Table 1), reward / KL / zero-std / clip-ratio curves,
per-group F1 bars, brightness per frame, and side-by-side GIFs (real | each evaluated model) of a few
clips the rows share, with the input action drawn under every frame (keys lit when pressed, the
camera move as an arrow). Everything is embedded (PNG and GIF as base64), so the one file can be
mailed or opened offline.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlir.actions import GROUPS
from rlir.errors import RlirError
from rlir.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger("rlir.report")

ROLES = ("real", "base", "posttrained")
CURVE_PANELS = (   # (title, keys); clip_ratio/* is matched by prefix
    ("reward (training batches; probe/judge: held-out clips)", ("reward", "probe/reward", "judge/reward")),
    ("KL to the reference model", ("kl",)),
    ("fraction of groups with zero reward std", ("frac_reward_zero_std",)),
    ("clip ratio", ("clip_ratio/",)),
)
POSTTRAIN_LOG_KEYS = ("reward", "kl", "frac_reward_zero_std")


@dataclass
class Row:
    run_dir: Path
    path: Path                     # the metrics.json
    m: dict
    label: str
    role: str


@dataclass
class Log:
    run_dir: Path
    label: str
    rows: list = field(default_factory=list)


# --- discovery -----------------------------------------------------------------------------------
def _overrides(items: list[str], what: str, allowed=None) -> dict[Path, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise RlirError(f"--{what} must be RUN_DIR={what.upper()}, got {it!r}")
        d, v = it.rsplit("=", 1)
        if allowed and v not in allowed:
            raise RlirError(f"--{what} {it!r}: {what} must be one of {', '.join(allowed)}")
        out[Path(d).resolve()] = v
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue                      # a line cut by a kill: skip it
        if isinstance(r, dict):
            rows.append(r)
    return rows


def discover(run_dirs, labels=None, roles=None) -> tuple[list[Row], list[Log]]:
    lab, rol = _overrides(labels, "label"), _overrides(roles, "role", ROLES)
    rows, logs = [], []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise RlirError(f"{d}: run folder does not exist")
        files = [d / "metrics.json"] if (d / "metrics.json").is_file() else sorted(d.glob("*/metrics.json"))
        log_rows = _read_jsonl(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
        if not files and not log_rows:
            raise RlirError(f"{d}: holds neither an evaluation (metrics.json) nor a training log (metrics.jsonl)")
        is_posttrain_log = any(k in r for r in log_rows for k in POSTTRAIN_LOG_KEYS)
        key = d.resolve()
        if log_rows:
            logs.append(Log(d, lab.get(key, d.name), log_rows))
        for f in files:
            try:
                m = json.loads(f.read_text())
            except json.JSONDecodeError:
                raise RlirError(f"{f}: not valid JSON") from None
            if not isinstance(m, dict) or "reward_idm" not in m:
                raise RlirError(f"{f}: not an `rlir evaluate` output (no reward_idm metrics)")
            role = rol.get(key) or (m.get("role") if m.get("role_from") != "guess" else None) \
                or ("posttrained" if is_posttrain_log else None) or m.get("role") or "base"
            label = lab.get(key) or m.get("label") or d.name
            if len(files) > 1:
                label = f"{label} ({f.parent.name})"
            rows.append(Row(d, f, m, label, role))
    rows.sort(key=lambda r: ROLES.index(r.role) if r.role in ROLES else len(ROLES))
    return rows, logs


# --- the table -----------------------------------------------------------------------------------
def _get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _am(m, who, key):
    a = m.get(who)
    if not a:
        return None, None
    return a["metrics"].get(key), a["ci95"].get(key)


def table_columns(rows: list[Row]) -> list[tuple]:
    """(header, tooltip, getter(m) -> (value, ci | None), fmt, better: +1 higher / -1 lower / 0 none)."""
    cols = [
        ("IDM F1", "reward IDM, F1 macro averaged over the 7 discrete groups", lambda m: _am(m, "reward_idm", "f1_macro"), "{:.3f}", 1),
    ]
    if any(_am(r.m, "reward_idm", "f1_macro_shown")[0] is not None for r in rows):
        cols.append(("IDM F1 shown", "as IDM F1, without the groups the game never shows (e.g. ViZDoom's use)",
                     lambda m: _am(m, "reward_idm", "f1_macro_shown"), "{:.3f}", 1))
    cols += [
        ("Precision", "reward IDM, precision macro (7 groups)", lambda m: _am(m, "reward_idm", "precision_macro"), "{:.3f}", 1),
        ("Recall", "reward IDM, recall macro (7 groups)", lambda m: _am(m, "reward_idm", "recall_macro"), "{:.3f}", 1),
        ("Pitch err", "reward IDM, camera pitch mean absolute bin error", lambda m: _am(m, "reward_idm", "camera_pitch_bin_error"), "{:.2f}", -1),
        ("Yaw err", "reward IDM, camera yaw mean absolute bin error", lambda m: _am(m, "reward_idm", "camera_yaw_bin_error"), "{:.2f}", -1),
        ("Judge F1", "judge IDM (independent architecture and data), F1 macro (7 groups)", lambda m: _am(m, "judge_idm", "f1_macro"), "{:.3f}", 1),
        ("Reward", "inverse reward of the reward IDM, mode all (paper Eq. 3)",
         lambda m: (_get(m, "inverse_reward", "reward_idm", "all", "mean"), _get(m, "inverse_reward", "reward_idm", "all", "ci95")), "{:.3f}", 1),
        ("PSNR", "dB vs real frames 1..T-1; identical frames capped at 100 dB",
         lambda m: (_get(m, "psnr", "mean"), _get(m, "psnr", "ci95")), "{:.2f}", 1),
        ("SSIM", "vs real frames 1..T-1", lambda m: (_get(m, "ssim", "mean"), _get(m, "ssim", "ci95")), "{:.3f}", 1),
        ("Frechet (IDM feat.)", "Frechet distance on the judge's (else reward IDM's) time-averaged hidden states; not FVD",
         lambda m: (_get(m, "frechet_idm_feature_distance", "value"), _get(m, "frechet_idm_feature_distance", "ci95")), "{:.3g}", -1),
    ]
    if any(r.m.get("fvd") for r in rows):
        cols.append(("FVD", "Frechet distance on I3D logits (local weights)",
                     lambda m: (_get(m, "fvd", "value"), _get(m, "fvd", "ci95")), "{:.1f}", -1))
    cols += [
        ("Flow px", "mean Farneback optical-flow magnitude per frame pair (generated clips)",
         lambda m: (_get(m, "dynamics", "generated", "mean_flow_px", "mean"), _get(m, "dynamics", "generated", "mean_flow_px", "ci95")), "{:.2f}", 0),
        ("Dynamic deg.", "fraction of clips that move (VBench's rule on Farneback flow)",
         lambda m: (_get(m, "dynamics", "generated", "dynamic_degree", "mean"), _get(m, "dynamics", "generated", "dynamic_degree", "ci95")), "{:.2f}", 0),
        ("Brightness", "mean pixel value 0..255 of generated frames 1..T-1",
         lambda m: (_get(m, "brightness", "generated", "mean"), _get(m, "brightness", "generated", "ci95")), "{:.1f}", 0),
        ("Δ bright.", "generated minus real brightness, paired per clip",
         lambda m: (_get(m, "brightness", "delta", "mean"), _get(m, "brightness", "delta", "ci95")), "{:+.2f}", 0),
    ]
    return cols


def _fmt(v, fmt):
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def table_html(rows: list[Row]) -> tuple[str, list[dict]]:
    cols = table_columns(rows)
    data = []
    for r in rows:
        data.append({"label": r.label, "role": r.role, "run_dir": str(r.run_dir), "n_clips": r.m.get("n_clips"),
                     **{c[0]: {"value": c[2](r.m)[0], "ci95": c[2](r.m)[1]} for c in cols}})
    best = {}
    for c in cols:
        vals = [d[c[0]]["value"] for d, r in zip(data, rows) if r.role != "real" and d[c[0]]["value"] is not None]
        if c[4] and len(vals) > 1:
            best[c[0]] = max(vals) if c[4] > 0 else min(vals)
    head = "".join(f'<th title="{html.escape(c[1])}">{html.escape(c[0])}</th>' for c in cols)
    body = []
    for d, r in zip(data, rows):
        cells = []
        for c in cols:
            v, ci = d[c[0]]["value"], d[c[0]]["ci95"]
            txt = _fmt(v, c[3])
            if v is not None and best.get(c[0]) == v and r.role != "real":
                txt = f"<b>{txt}</b>"
            if v is not None and ci and ci[0] is not None and ci[1] is not None:
                txt += f'<br><span class="ci">[{_fmt(ci[0], c[3])}, {_fmt(ci[1], c[3])}]</span>'
            cells.append(f"<td>{txt}</td>")
        name = "GT (real clips)" if r.role == "real" and "GT" not in r.label else r.label
        body.append(f'<tr class="{html.escape(r.role)}"><th scope="row">{html.escape(name)}<br>'
                    f'<span class="ci">{html.escape(r.role)}, {d["n_clips"]} clips</span></th>{"".join(cells)}</tr>')
    t = (f'<table id="results"><thead><tr><th>model</th>{head}</tr></thead>'
         f'<tbody>{"".join(body)}</tbody></table>')
    return t, data


# --- post-trained minus base, clip by clip ---------------------------------------------------------
PAIRED_COLUMNS = (   # (header, key in the comparison, metric, format, better: +1 higher / -1 lower / 0 neither)
    ("Judge F1 shown", "judge_idm", "f1_macro_shown", "{:+.3f}", 1),
    ("IDM F1 shown", "reward_idm", "f1_macro_shown", "{:+.3f}", 1),
    ("IDM F1 (7)", "reward_idm", "f1_macro", "{:+.3f}", 1),
    ("Yaw err", "reward_idm", "camera_yaw_bin_error", "{:+.2f}", -1),
    ("PSNR", "psnr", None, "{:+.2f}", 1),
    ("SSIM", "ssim", None, "{:+.3f}", 1),
    ("Brightness", "brightness", None, "{:+.1f}", 0),
)


def _paradigm(r: Row):
    return (r.m.get("generated_meta") or {}).get("paradigm")


def paired_section(rows: list[Row]) -> tuple[str, list[dict]]:
    """Every post-trained row against the base row of its paradigm scored on the same clips
    (rlir/eval/paired.py): the difference per clip, with a bootstrap interval over clips."""
    from rlir.eval.paired import compare_evaluations
    bases = [r for r in rows if r.role == "base"]
    out, notes = [], []
    for t in (r for r in rows if r.role == "posttrained"):
        same = [b for b in bases if _paradigm(b) == _paradigm(t)] or bases
        for b in same:
            try:
                c = compare_evaluations(b.path, t.path)
            except RlirError as e:
                notes.append(f"{t.label} vs {b.label}: {e}")
                continue
            c["base"]["label"], c["treatment"]["label"] = b.label, t.label
            out.append(c)
    if not out and not notes:
        return "", []
    head = "".join(f"<th>{html.escape(h)}</th>" for h, *_ in PAIRED_COLUMNS)
    body = []
    for c in out:
        cells = []
        for _, key, metric, fmt, better in PAIRED_COLUMNS:
            d = c.get(key)
            d = (d or {}).get(metric) if metric else d
            mb = (d or {}).get("minus_base")
            if not mb:
                cells.append("<td>—</td>")
                continue
            lo, hi = mb["ci95"]
            sign = 1 if lo > 0 else (-1 if hi < 0 else 0)        # the interval excludes zero
            mark = {1: " class='better'", -1: " class='worse'"}.get(sign * better, " class='moved'" if sign else "")
            extra = f", {mb['clips_higher']} up / {mb['clips_lower']} down" if "clips_higher" in mb else ""
            cells.append(f"<td{mark}>{_fmt(mb['mean'], fmt)}<br><span class='ci'>[{_fmt(lo, fmt)}, "
                         f"{_fmt(hi, fmt)}]{extra}</span></td>")
        body.append(f"<tr><th scope='row'>{html.escape(c['treatment']['label'])} − {html.escape(c['base']['label'])}"
                    f"<br><span class='ci'>{c['n_clips']} clips</span></th>{''.join(cells)}</tr>")
    table = (f"<table id='paired'><thead><tr><th>difference</th>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
             "</table>") if out else ""
    note = ("<p class='note'>The same clips, frame 0, actions and seeds for both models: each number is the "
            "post-trained model's value minus the base's, with a 95% bootstrap interval over clips that resamples "
            "the same clips for both (F1 pooled over the resampled clips' frames, as in the table above). A cell "
            "whose interval excludes zero is a change the clips' spread does not explain: green where it is "
            "better, red where it is worse, yellow where neither (brightness: compare with the real clips).</p>")
    skipped = "".join(f"<p class='note'>Not compared: {html.escape(n)}</p>" for n in notes)
    return "<h2>Post-trained minus base, clip by clip</h2>" + table + (note if out else "") + skipped, out


# --- figures -------------------------------------------------------------------------------------
def _figure(w=7.0, h=3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _series(rows: list[dict], key: str):
    pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows)
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return (np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)) if pts else None


def _smooth(y: np.ndarray) -> np.ndarray:
    k = max(1, len(y) // 20)
    if k == 1:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([y[:k - 1].cumsum() / np.arange(1, k), out])


def curves_png(logs: list[Log]) -> bytes | None:
    panels = []
    for title, keys in CURVE_PANELS:
        lines = []
        for lg in logs:
            all_keys = sorted({k for r in lg.rows for k in r})
            for key in keys:
                for k in ([k for k in all_keys if k.startswith(key)] if key.endswith("/") else [key]):
                    s = _series(lg.rows, k)
                    if s is not None:
                        lines.append((lg, k, s))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    fig = _figure(4.2 * min(len(panels), 2), 3.0 * math.ceil(len(panels) / 2))
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / 2), min(len(panels), 2), i + 1)
        for lg, k, (x, y) in lines:
            name = f"{lg.label}: {k}" if len(logs) > 1 else k
            (ln,) = ax.plot(x, y, alpha=0.35, lw=0.8)
            ax.plot(x, _smooth(y), color=ln.get_color(), lw=1.6, label=name)
            if k == "reward":
                sd = _series(lg.rows, "reward_std")
                if sd is not None and len(sd[0]) == len(x):
                    ax.fill_between(x, y - sd[1], y + sd[1], color=ln.get_color(), alpha=0.12, lw=0)
        ax.set_title(title, fontsize=9)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def per_group_png(rows: list[Row]) -> bytes | None:
    scorers = [w for w in ("reward_idm", "judge_idm") if any(r.m.get(w) for r in rows)]
    if not rows or not scorers:
        return None
    groups = list(GROUPS[:7])
    fig = _figure(7.5, 2.8 * len(scorers))
    for i, who in enumerate(scorers):
        ax = fig.add_subplot(len(scorers), 1, i + 1)
        have = [r for r in rows if r.m.get(who)]
        width = 0.8 / max(len(have), 1)
        for j, r in enumerate(have):
            f1 = [r.m[who]["per_group"][g]["f1_macro"] for g in groups]
            ax.bar(np.arange(len(groups)) + (j - (len(have) - 1) / 2) * width, f1, width, label=r.label)
        ax.set_xticks(np.arange(len(groups)), [g.replace("_", "/") for g in groups], fontsize=8)
        ax.set_ylim(0, 1.3)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("F1 (macro)", fontsize=8)
        ax.set_title(f"per-group F1, {who.replace('_', ' ')}", fontsize=9)
        ax.legend(fontsize=7, ncol=min(3, len(have)), loc="upper center")
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def brightness_png(rows: list[Row]) -> bytes | None:
    have = [r for r in rows if _get(r.m, "brightness", "generated", "per_frame")]
    if not have:
        return None
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    real = _get(have[0].m, "brightness", "real", "per_frame")
    ax.plot(range(len(real)), real, "k--", lw=1.5, label="real clips")
    for r in have:
        if r.role != "real":
            y = r.m["brightness"]["generated"]["per_frame"]
            ax.plot(range(len(y)), y, lw=1.5, label=r.label)
    ax.set_xlabel("frame (0 = given)", fontsize=8)
    ax.set_ylabel("mean pixel value", fontsize=8)
    ax.set_title("brightness per frame", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


# --- videos --------------------------------------------------------------------------------------
KEY_BOXES = (  # (text, group, class, column, row) on a 3 x 2 keyboard grid for W A S D
    ("W", 0, 1, 1, 0), ("A", 1, 1, 0, 1), ("S", 0, 2, 1, 1), ("D", 1, 2, 2, 1))
WORD_BOXES = (("Spr", 2, 1), ("Snk", 2, 2), ("Use", 3, 1), ("Atk", 4, 1), ("Jmp", 5, 1), ("Drp", 6, 1))
STRIP_H, TITLE_H = 34, 14


def action_strip(action: np.ndarray, width: int):
    """One action (9 ints) -> an RGB strip image: W/A/S/D and the other keys lit when pressed, the
    camera move as an arrow (right = yaw right, down = pitch down; a dot = no move)."""
    from PIL import Image, ImageDraw, ImageFont
    img = Image.new("RGB", (width, STRIP_H), (24, 24, 28))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=9)
    on, off, txt_on, txt_off = (250, 200, 40), (60, 60, 68), (0, 0, 0), (150, 150, 160)
    k = 15
    for text, g, c, col, row in KEY_BOXES:
        x, y = 3 + col * k, 2 + row * k
        lit = int(action[g]) == c
        d.rectangle([x, y, x + k - 2, y + k - 2], fill=on if lit else off)
        d.text((x + 3, y + 1), text, fill=txt_on if lit else txt_off, font=font)
    x0 = 3 + 3 * k + 4
    for i, (text, g, c) in enumerate(WORD_BOXES):
        x, y = x0 + (i % 3) * 24, 2 + (i // 3) * 15
        lit = int(action[g]) == c
        d.rectangle([x, y, x + 22, y + 13], fill=on if lit else off)
        d.text((x + 2, y + 1), text, fill=txt_on if lit else txt_off, font=font)
    cx, cy, r = x0 + 3 * 24 + 16, STRIP_H // 2, 13
    if cx + r < width:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(110, 110, 120))
        dx, dy = (int(action[8]) - 5) / 5 * (r - 2), (int(action[7]) - 5) / 5 * (r - 2)
        if abs(dx) < 0.5 and abs(dy) < 0.5:
            d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=(150, 150, 160))
        else:
            ex, ey = cx + dx, cy + dy
            d.line([cx, cy, ex, ey], fill=(80, 200, 255), width=2)
            ang = math.atan2(dy, dx)
            for s in (2.6, -2.6):
                d.line([ex, ey, ex - 5 * math.cos(ang + s), ey - 5 * math.sin(ang + s)], fill=(80, 200, 255), width=2)
    return img


def clip_gif(columns: list[tuple[str, np.ndarray]], actions: np.ndarray, fps: float = 8.0) -> bytes:
    """columns: (title, uint8 frames [T, H, W, 3]) side by side; the action of frame t under each frame."""
    from PIL import Image, ImageDraw, ImageFont
    T, H, W = columns[0][1].shape[:3]
    s = max(1, math.ceil(180 / W)) if W < 180 else 1
    pw, ph = W * s, H * s
    font = ImageFont.load_default(size=10)
    images = []
    for t in range(T):
        canvas = Image.new("RGB", (len(columns) * (pw + 4), TITLE_H + ph + STRIP_H), (255, 255, 255))
        d = ImageDraw.Draw(canvas)
        strip = action_strip(actions[t], pw)
        for j, (title, frames) in enumerate(columns):
            x = j * (pw + 4)
            tag = f"{title}  t={t}" + (" (given)" if t == 0 else "")
            d.text((x + 2, 1), tag[: max(8, pw // 6)], fill=(0, 0, 0), font=font)
            canvas.paste(Image.fromarray(frames[t]).resize((pw, ph), Image.NEAREST), (x, TITLE_H))
            canvas.paste(strip, (x, TITLE_H + ph))
        images.append(canvas.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    buf = io.BytesIO()
    durations = [int(1000 / fps)] * (T - 1) + [900]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0,
                   disposal=1)
    return buf.getvalue()


def _store(path):
    from rlir.data.store import EpisodeStore
    try:
        return EpisodeStore(path)
    except RlirError:
        return None


def videos(rows: list[Row], n: int) -> tuple[list[tuple[str, bytes]], str | None]:
    """GIFs of up to n clips every evaluated model shares: real | model 1 | model 2 ..."""
    if n <= 0 or not rows:
        return [], None
    data_path = next((r.m.get("data") for r in rows if r.m.get("data")), None)
    real = _store(data_path) if data_path else None
    if real is None:
        return [], f"no videos: the real dataset {data_path!r} named in metrics.json is not readable from here"
    models = [r for r in rows if r.role != "real" and r.m.get("clips")]
    stores = {}
    for r in models:
        st = _store(r.m.get("generated"))
        if st is None:
            log.warning("report: %s's generated clips (%s) are not readable; no video column", r.label, r.m.get("generated"))
        else:
            stores[id(r)] = st
    models = [r for r in models if id(r) in stores]
    frames = int(next((r.m.get("frames") for r in rows if r.m.get("frames")), 16))
    if models:
        keys = [(c["episode"], c["start"]) for c in models[0].m["clips"]]
        for r in models[1:]:
            have = {(c["episode"], c["start"]) for c in r.m["clips"]}
            keys = [k for k in keys if k in have]
    else:
        src = next((r for r in rows if r.m.get("clips")), None)
        keys = [(c["episode"], c["start"]) for c in src.m["clips"]] if src else []
    if not keys:
        return [], "no videos: the evaluated runs share no clip"
    pick = [keys[i] for i in np.unique(np.linspace(0, len(keys) - 1, min(n, len(keys))).round().astype(int))]
    out = []
    for ep, start in pick:
        clip = real.load(ep).slice(start, start + frames)
        cols = [("real", clip.frames)]
        for r in models:
            c = next(c for c in r.m["clips"] if (c["episode"], c["start"]) == (ep, start))
            g = stores[id(r)].load(c["id"]).slice(c.get("gen_start", 0), c.get("gen_start", 0) + frames)
            cols.append((r.label, g.frames))
        fps = float(real.metadata.get("fps", 8.0) or 8.0)
        out.append((f"{ep} frames {start}..{start + frames - 1}", clip_gif(cols, clip.actions, fps=fps)))
    return out, None


# --- the page ------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d22;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px}th,td{border:1px solid #d6d6de;padding:4px 6px;text-align:right}
thead th{background:#f1f1f6;text-align:center}tbody th{text-align:left;background:#fafafc}
tr.real td,tr.real th{background:#eef6ee}.ci{color:#777;font-size:10.5px;font-weight:normal}
.fig img{max-width:100%;border:1px solid #eee}.vid{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}
.vid img{image-rendering:pixelated;border:1px solid #ccc}.note{color:#555;font-size:12.5px;max-width:1100px}
code{background:#f4f4f7;padding:0 3px}td.better{background:#e3f4e3}td.worse{background:#f8e1e1}
td.moved{background:#fbf3d9}
"""


def _b64(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def build_report(run_dirs, out, labels=None, roles=None, n_videos: int = 4, progress: bool = True,
                 human_eval: str | None = None) -> dict:
    """Write OUT/report.html (self-contained), OUT/*.png, OUT/clip_*.gif and OUT/report.json.
    human_eval: a votes database of `rlir human-eval serve`, summed up in a section of its own."""
    rows, logs = discover(run_dirs, labels, roles)
    if human_eval:                      # read before anything is written: a bad database refuses the report
        from rlir.human_eval.report import summarize
        human = summarize(human_eval, option="--human-eval")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>rlir report</h1><p class='note'>{len(rows)} evaluated runs, {len(logs)} training logs: "
             + ", ".join(f"<code>{html.escape(str(d))}</code>" for d in run_dirs) + "</p>"]
    summary = {"rows": [], "figures": [], "videos": []}
    if rows:
        t, data = table_html(rows)
        summary["rows"] = data
        ckpts = {r.m.get("checkpoints", {}).get("idm") for r in rows}
        warn = (f"<p class='note'><b>Rows were scored by different reward IDMs</b> ({', '.join(map(str, ckpts))}): "
                f"their action metrics are not comparable.</p>") if len(ckpts) > 1 else ""
        parts.append("<h2>Action following and visual quality</h2>" + t + warn + _notes(rows))
        paired_html, summary["paired"] = paired_section(rows)
        parts.append(paired_html)
    else:
        parts.append("<p class='note'>No evaluation (metrics.json) in the run folders: no table.</p>")
    if human_eval:
        from rlir.human_eval.report import html_section
        parts.append(html_section(human))
        summary["human_eval"] = human
    figs = [("curves.png", "Training curves", curves_png(logs) if logs else None),
            ("per_group_f1.png", "Per-group F1", per_group_png(rows)),
            ("brightness.png", "Brightness per frame", brightness_png(rows))]
    for name, title, png in figs:
        if png is None:
            if name == "curves.png":
                parts.append("<h2>Training curves</h2><p class='note'>No post-training log (metrics.jsonl with "
                             "reward / kl) in the run folders.</p>")
            continue
        atomic_write_bytes(out / name, png)
        summary["figures"].append(name)
        parts.append(f"<h2>{title}</h2><div class='fig'><img alt='{title}' src='{_b64('png', png)}'></div>")
    vids, why = videos(rows, n_videos)
    if vids or why:
        parts.append("<h2>Clips side by side</h2><p class='note'>Frame 0 is the given real frame; the models "
                     "generate frames 1..T-1 from it and the clip's real actions. Under each frame: the action "
                     "taken at that frame (W/A/S/D, sprint, sneak, use, attack, jump, drop lit when pressed; the "
                     "arrow is the camera move: right = turn right, down = look down; a dot = no move).</p>")
    if why:
        parts.append(f"<p class='note'>{html.escape(why)}</p>")
    for k, (title, gif) in enumerate(vids):
        name = f"clip_{k}.gif"
        atomic_write_bytes(out / name, gif)
        summary["videos"].append(name)
        parts.append(f"<div class='vid'><div class='note'>{html.escape(title)}</div>"
                     f"<img class='clip' alt='{html.escape(title)}' src='{_b64('gif', gif)}'></div>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>rlir report</title>"
            "<link rel='icon' href='data:,'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    atomic_write_text(out / "report.html", page)
    summary.update({"html": str(out / "report.html"), "run_dirs": [str(d) for d in run_dirs]})
    atomic_write_json(out / "report.json", summary)
    return {"html": str(out / "report.html"), "rows": len(rows), "curves": len(logs),
            "figures": summary["figures"], "videos": summary["videos"]}


def _notes(rows: list[Row]) -> str:
    m = rows[0].m
    cap = _get(m, "psnr", "cap_db") or 100
    thr = _get(m, "dynamics", "threshold_px")
    fe = _get(m, "frechet_idm_feature_distance", "features") or ""
    fvd = "FVD: " + ("computed from local I3D weights." if any(r.m.get("fvd") for r in rows)
                     else (m.get("fvd_skipped") or "not computed") + ".")
    return (f"<p class='note'>Numbers are means over clips with 95% bootstrap intervals over clips (in grey). "
            f"F1/precision/recall: MineWorld's protocol, pooled over all frames, macro over classes, averaged over the "
            f"7 discrete groups; camera errors in quantiser bins (0..10). The GT row scores real clips as if generated "
            f"(the IDM's upper bound). PSNR is capped at {cap:g} dB (identical frames). The Frechet distance uses "
            f"{html.escape(fe)}. Dynamics: Farneback optical flow; dynamic degree = fraction of clips with at least "
            f"round(4T/16) frame pairs whose top-5% flow exceeds {thr if thr is None else f'{thr:.2f}'} px (VBench's "
            f"rule). The Frechet intervals come from resampling clips, which biases them upward. "
            f"{html.escape(fvd)} Best model value per column in bold.</p>")

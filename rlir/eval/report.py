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
mailed or opened offline. With a base and a post-trained row of the same paradigm, a second table
gives their paired difference clip by clip (rlir/eval/paired.py). The figures and GIFs are drawn in
rlir/eval/media.py.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlir.errors import RlirError
from rlir.eval.media import brightness_png, curves_png, per_group_png, videos
from rlir.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger("rlir.report")

ROLES = ("real", "base", "posttrained")
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
        same = [b for b in bases if _paradigm(b) == _paradigm(t)]       # never one paradigm against another
        if not same:
            notes.append(f"{t.label}: no base row of its paradigm ({_paradigm(t) or 'unknown'}) to compare with")
        for b in same:
            try:
                c = compare_evaluations(b.path, t.path)
            except RlirError as e:
                notes.append(f"{t.label} vs {b.label}: {e}")
                continue
            c["base"]["label"], c["treatment"]["label"] = b.label, t.label
            out.append(c)
            notes += [f"{t.label} vs {b.label}, {role}: {why}" for role, why in c["skipped"].items()]
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

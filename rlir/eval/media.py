"""The report's media: training curves, per-group F1 and brightness plots (PNG), and side-by-side
clip GIFs with each frame's action drawn under it (also used by play mode, human evaluation and the
post-training media). `rlir/eval/report.py` assembles them into the page."""
from __future__ import annotations

import io
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from rlir.actions import GROUPS
from rlir.errors import RlirError

if TYPE_CHECKING:
    from rlir.eval.report import Log, Row

log = logging.getLogger("rlir.report")

CURVE_PANELS = (   # (title, keys); clip_ratio/* is matched by prefix
    ("reward (training batches; probe/judge: held-out clips)", ("reward", "probe/reward", "judge/reward")),
    ("KL to the reference model", ("kl",)),
    ("fraction of groups with zero reward std", ("frac_reward_zero_std",)),
    ("clip ratio", ("clip_ratio/",)),
)


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
    have = [r for r in rows if (r.m.get("brightness") or {}).get("generated", {}).get("per_frame")]
    if not have:
        return None
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    real = have[0].m["brightness"]["real"]["per_frame"]
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

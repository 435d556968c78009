"""`rlir human-eval make`: A/B trials of two world models on the same held-out clips.

A trial is one test clip of --data: its real frame 0 and its actions, a video from each model under
them (the evaluation's samplers and settings, through the code `rlir generate` uses), and the side each
model is shown on. Sides are balanced (half the trials show A on the left) and shuffled with the seed,
so a rater's bias for one side cancels out. The two videos of a trial go into one GIF, side by side,
with the action of every frame drawn under both (the report's drawing): one image keeps the two
videos frame-locked, which two GIFs playing on their own clocks would not be. The GIF names no model.

    PAIRS/trials.json         the manifest (written last, so a folder without it is unfinished)
    PAIRS/videos/t000.gif ... one per trial
"""
from __future__ import annotations

import datetime
import hashlib
import re
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlir.errors import ConfigError, DataError, RlirError

TRIALS = "trials.json"
FORMAT = "rlir-human-eval-pairs/1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,39}$")
IGNORED = {".rlir.lock", ".rlir.lock.json"}      # the output lock's files (rlir/utils/output_guard.py)


def parse_models(items: list[str]) -> list[tuple[str, str]]:
    """['A=CKPT', 'B=CKPT'] -> [(name, ckpt)]: exactly two, distinct names the page and the database can show."""
    if len(items) != 2:
        raise ConfigError(f"--models takes exactly two NAME=CHECKPOINT, got {len(items)}")
    out = []
    for it in items:
        name, sep, ckpt = it.partition("=")
        if not sep or not ckpt:
            raise ConfigError(f"--models {it!r}: write NAME=CHECKPOINT, e.g. base=runs/ar/checkpoints/best")
        if not NAME_RE.match(name) or name == "same":
            raise ConfigError(f"--models {it!r}: the name must be 1-40 letters, digits or . _ + - (and not 'same')")
        out.append((name, ckpt))
    if out[0][0] == out[1][0]:
        raise ConfigError(f"--models: the two names must differ, both are {out[0][0]!r}")
    return out


def check_empty(out: Path) -> None:
    """A pairs folder is made once: votes refer to its trials, so rewriting it would change their meaning."""
    if out.is_dir():
        held = sorted(p.name for p in out.iterdir() if p.name not in IGNORED)
        if held:
            hint = "" if TRIALS in held else " (no trials.json: an unfinished make; remove the folder to start over)"
            raise ConfigError(f"--out {out} already holds {', '.join(held[:3])}{' ...' if len(held) > 3 else ''}"
                              f"{hint}: a pairs folder is never overwritten (votes refer to its trials); "
                              f"give another --out")


def pick_clips(windows: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """n windows spread over episodes: episodes in a seeded random order, one window from each in turn."""
    rng = np.random.default_rng(seed)
    by_ep: dict[str, list[int]] = defaultdict(list)
    for ep, s in windows:
        by_ep[ep].append(s)
    eps = sorted(by_ep)
    rng.shuffle(eps)
    queues = {ep: list(rng.permutation(by_ep[ep])) for ep in eps}
    out: list[tuple[str, int]] = []
    while len(out) < n and any(queues.values()):
        for ep in eps:
            if queues[ep] and len(out) < n:
                out.append((ep, int(queues[ep].pop())))
    return out


def balanced_sides(n: int, seed: int) -> np.ndarray:
    """1 where model A is shown on the left: half the trials each way (the odd one out at random), shuffled."""
    rng = np.random.default_rng([seed, 1])
    left = np.arange(n) % 2 == 0
    if n % 2 and rng.random() < 0.5:
        left = ~left
    return rng.permutation(left)


def make_pairs(data: str, models: list[tuple[str, str]], out: str, clips: int = 24, frames: int | None = None,
               seed: int = 0, batch_size: int = 8, temperature: float = 1.0, top_p: float = 0.8, steps: int = 18,
               solver: str = "dpm++", device: str = "cpu", progress: bool = True, command: str = "") -> dict:
    import torch
    from tqdm import tqdm

    from rlir.data.sampler import fixed_clips, load_clips
    from rlir.data.store import MANIFEST, EpisodeStore
    from rlir.eval.generate import checkpoint_digest, load_world_model
    from rlir.eval.media import clip_gif
    from rlir.utils.io import atomic_write_bytes, atomic_write_json
    from rlir.utils.output_guard import OutputLock

    if clips < 1:
        raise ConfigError(f"--clips must be at least 1, got {clips}")
    out_dir = Path(out)
    check_empty(out_dir)
    # everything that can refuse runs before the output folder is made
    wms = []
    for name, ckpt in models:
        try:
            wms.append(load_world_model(ckpt, device, temperature=temperature, top_p=top_p, steps=steps,
                                        solver=solver))
        except RlirError as e:
            raise type(e)(f"--models {name}={ckpt}: {e}") from None
    if wms[0].resolution != wms[1].resolution:
        raise ConfigError(f"the two world models make frames of different sizes ({models[0][0]}: "
                          f"{wms[0].resolution}, {models[1][0]}: {wms[1].resolution}); a side-by-side trial needs one")
    max_len = min(int(w.cfg.clip_len) for w in wms)
    frames = frames or min(16, max_len)
    if frames > max_len:
        raise ConfigError(f"--frames {frames} is longer than the world models' clip length {max_len}")
    store = EpisodeStore(data)
    store.require_resolution(wms[0].resolution, "world models")
    windows = fixed_clips(store, frames, split="test")
    if not windows:
        raise DataError(f"{data}: no test episode has {frames} frames")
    picked = pick_clips(windows, clips, seed)
    if len(picked) < clips:
        raise ConfigError(f"--clips {clips}: {data} has only {len(picked)} test clips of {frames} frames")
    a_left = balanced_sides(len(picked), seed)
    fps = float(store.metadata.get("fps", 8.0) or 8.0)
    width = max(3, len(str(len(picked) - 1)))
    names = [m[0] for m in models]
    trials = []
    with OutputLock(out_dir, command or "rlir human-eval make") as lock:
        for b0 in tqdm(range(0, len(picked), batch_size), desc="human-eval make", disable=not progress):
            win = picked[b0:b0 + batch_size]
            c = load_clips(store, win, frames)
            real = torch.from_numpy(c["frames"])
            acts = torch.from_numpy(c["actions"].astype(np.int64))
            videos = []
            for wm in wms:            # the same seed for both models: neither gets luckier draws by design
                g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b0)
                v = wm(real[:, 0], acts, frames, g)
                v[:, 0] = real[:, 0]                                  # frame 0 is the given frame
                videos.append(v.numpy())
            for k, (ep, start) in enumerate(win):
                i = b0 + k
                tid = f"t{i:0{width}d}"
                left, right = (0, 1) if a_left[i] else (1, 0)
                gif = clip_gif([("Left", videos[left][k]), ("Right", videos[right][k])], c["actions"][k], fps=fps)
                video = f"videos/{tid}.gif"
                atomic_write_bytes(out_dir / video, gif)
                trials.append({"id": tid, "clip": f"{ep}-{start:05d}", "episode": ep, "start": start,
                               "order": [names[left], names[right]], "video": video})
        manifest = {
            "format": FORMAT, "pairs_id": uuid.uuid4().hex,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "seed": seed, "data": str(data), "split": "test", "frames": frames, "fps": fps,
            "data_manifest_sha256": hashlib.sha256((Path(data) / MANIFEST).read_bytes()).hexdigest(),
            "models": [{"name": n, "checkpoint": str(ck), "sha256": checkpoint_digest(ck), "paradigm": w.paradigm,
                        "sampler": ({"temperature": temperature, "top_p": top_p} if w.paradigm == "ar" else
                                    {"steps": steps, "solver": solver, "mode": "ode"})}
                       for (n, ck), w in zip(models, wms)],
            "order_note": "order = [model shown left, model shown right]; sides balanced and shuffled with the seed",
            "trials": trials,
        }
        atomic_write_json(out_dir / TRIALS, manifest)
        lock.succeeded = True
    return {"trials": len(trials), "out": str(out_dir), "frames": frames,
            "a_left": int(a_left.sum()), "models": names}


def load_trials(pairs: str | Path, check_videos: bool = True) -> dict:
    """Read and check PAIRS/trials.json (and, with check_videos, that every video is there)."""
    p = Path(pairs)
    if not p.is_dir():
        raise ConfigError(f"--pairs {pairs}: no such folder (`rlir human-eval make --out` makes it)")
    f = p / TRIALS
    if not f.is_file():
        raise ConfigError(f"--pairs {pairs}: no {TRIALS} (an unfinished or foreign folder; "
                          f"`rlir human-eval make --out` makes it)")
    import json
    try:
        m = json.loads(f.read_text())
        ok = m.get("format") == FORMAT and len(m["models"]) == 2 and isinstance(m["trials"], list) and \
            all(isinstance(t["id"], str) and len(t["order"]) == 2 and isinstance(t["video"], str) for t in m["trials"])
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError(f"{f}: not a trials manifest of `rlir human-eval make` (format {FORMAT})")
    if not m["trials"]:
        raise ConfigError(f"{f}: holds no trials")
    if check_videos:
        missing = [t["video"] for t in m["trials"] if not (p / t["video"]).is_file()]
        if missing:
            raise ConfigError(f"--pairs {pairs}: {len(missing)} video file(s) missing, e.g. {missing[0]}")
    return m

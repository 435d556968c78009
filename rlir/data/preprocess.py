"""The paper's preprocessing: drop what an IDM cannot work with.

Two kinds of frames go: stretches where nothing moves (the scene is static) and frames flagged
invalid by the source (a menu or GUI open, a death screen). What is left is cut into contiguous
segments; segments shorter than `min_segment` go too. Every dropped frame is counted by reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PreprocessConfig:
    static_threshold: float = 0.5   # mean |frame[t+1] - frame[t]| (0..255) at or below which nothing moved
    min_static_run: int = 4         # frames that repeat the previous one this many times in a row are dropped
    min_segment: int = 16           # shorter kept stretches are dropped (an IDM window is 16 frames)


def frame_motion(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference between consecutive frames, [T-1] float32."""
    f = frames.astype(np.int16)
    return np.abs(f[1:] - f[:-1]).reshape(len(f) - 1, -1).mean(axis=1).astype(np.float32)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def segment(frames: np.ndarray, invalid: np.ndarray | None, cfg: PreprocessConfig
            ) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Return the [start, stop) segments to keep and counts of dropped frames by reason."""
    T = len(frames)
    invalid = np.zeros(T, bool) if invalid is None else np.asarray(invalid, bool)
    static = np.zeros(T, bool)
    if T > 1:
        same = np.concatenate([[False], frame_motion(frames) <= cfg.static_threshold])  # frame t repeats t-1
        for s, e in _runs(same):
            if e - s >= cfg.min_static_run:
                static[s:e] = True
    drop = invalid | static
    counts = {"invalid": int(invalid.sum()), "static": int((static & ~invalid).sum()), "short": 0}
    keep = []
    for s, e in _runs(~drop):
        if e - s >= cfg.min_segment:
            keep.append((int(s), int(e)))
        else:
            counts["short"] += int(e - s)
    counts["kept"] = sum(e - s for s, e in keep)
    return keep, counts

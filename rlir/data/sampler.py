"""Clip sampling: random windows of T frames for training, fixed windows for evaluation."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from rlir.data.store import EpisodeStore
from rlir.errors import DataError


def _stack(clips: list, ids: list[str], starts: list[int]) -> dict:
    out = {
        "frames": np.stack([c.frames for c in clips]),          # uint8 [B, T, H, W, 3]
        "actions": np.stack([c.actions for c in clips]),        # int16 [B, T, 9]
        "camera_deg": np.stack([c.camera_deg for c in clips]),  # float32 [B, T, 2]
        "episode_id": ids,
        "start": np.asarray(starts, dtype=np.int64),
    }
    if all(c.motion is not None for c in clips):                # float32 [B, T, 3], where recorded
        out["motion"] = np.stack([c.motion for c in clips])
    return out


class ClipSampler:
    """Batches of random T-frame windows; each window position is equally likely."""

    def __init__(self, store: EpisodeStore, clip_len: int, batch_size: int, split: str | None = "train",
                 seed: int = 0, episode_ids: list[str] | None = None):
        self.store, self.T, self.B = store, clip_len, batch_size
        ids = episode_ids if episode_ids is not None else store.ids(split)
        self.ids = [i for i in ids if int(store.entry(i)["n_frames"]) >= clip_len]
        if not self.ids:
            raise DataError(f"{store.root}: no {split or ''} episode has at least {clip_len} frames")
        n_windows = np.array([int(store.entry(i)["n_frames"]) - clip_len + 1 for i in self.ids], dtype=np.float64)
        self.p = n_windows / n_windows.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, rows: slice | None = None) -> dict:
        """A batch of B windows, or only `rows` of it (a process's share): the generator draws the
        whole batch either way, so every process agrees on it and loads only its own rows."""
        picks = self.rng.choice(len(self.ids), size=self.B, p=self.p)
        windows = []
        for k in picks:
            n = int(self.store.entry(self.ids[k])["n_frames"])
            windows.append((self.ids[k], int(self.rng.integers(0, n - self.T + 1))))
        windows = windows[rows] if rows is not None else windows
        return _stack([self.store.load(i).slice(s, s + self.T) for i, s in windows],
                      [i for i, _ in windows], [s for _, s in windows])

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.sample()


def fixed_clips(store: EpisodeStore, clip_len: int, split: str | None = "test", stride: int | None = None,
                max_clips: int | None = None) -> list[tuple[str, int]]:
    """Deterministic (episode_id, start) windows, non-overlapping by default: the evaluation set.
    All of them in episode order; with max_clips, at most that many taken round-robin over the episodes
    (each episode's first window, then each one's second, ...), so a capped set comes from as many
    episodes as it can: clips of one episode are alike, and an interval over clips from a few episodes
    is narrower than what it measures."""
    stride = stride or clip_len
    per_ep = [[(i, s) for s in range(0, int(store.entry(i)["n_frames"]) - clip_len + 1, stride)]
              for i in store.ids(split)]
    if max_clips is None:
        return [w for ws in per_ep for w in ws]
    out, r = [], 0
    while len(out) < max_clips and any(r < len(ws) for ws in per_ep):
        out += [ws[r] for ws in per_ep if r < len(ws)][: max_clips - len(out)]
        r += 1
    return out


def load_clips(store: EpisodeStore, windows: list[tuple[str, int]], clip_len: int) -> dict:
    clips = [store.load(i).slice(s, s + clip_len) for i, s in windows]
    return _stack(clips, [i for i, _ in windows], [s for _, s in windows])

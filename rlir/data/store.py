"""The episode store (DESIGN.md Contract 2).

A dataset is a directory with
  manifest.jsonl   one JSON object per episode: id, path, n_frames, split, source
  dataset.json     what the whole collection is: resolution, fps, groups left null, preprocessing counts
  <id>.npz         frames uint8 [T,H,W,3] RGB, actions int16 [T,9], camera_deg float32 [T,2],
                   and optionally motion float32 [T,3]: the engine's own displacement of the player
                   from frame t to t+1 in map units, (forward, rightward) in the view's frame and up
                   (ViZDoom recordings since 2026-12; privileged targets for IDM training, never an
                   input; datasets without it load as before)

actions[t] is taken at frame t and leads to frame t+1. Every file is written atomically
(temporary file, then rename) and the manifest is rewritten whole after each episode, so a
killed writer leaves the manifest naming only complete files.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlir.actions import N_GROUPS, validate_actions
from rlir.errors import DataError
from rlir.utils.io import atomic_write, atomic_write_json, atomic_write_jsonl

MANIFEST = "manifest.jsonl"
METADATA = "dataset.json"
SPLITS = ("train", "val", "test")


@dataclass
class Episode:
    frames: np.ndarray      # uint8 [T, H, W, 3]
    actions: np.ndarray     # int16 [T, 9]
    camera_deg: np.ndarray  # float32 [T, 2] raw (pitch, yaw) degrees before quantisation
    motion: np.ndarray | None = None   # float32 [T, 3] engine displacement t -> t+1 (forward, right, up)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def slice(self, start: int, stop: int) -> "Episode":
        return Episode(self.frames[start:stop], self.actions[start:stop], self.camera_deg[start:stop],
                       None if self.motion is None else self.motion[start:stop])


def check_episode(ep: Episode, name: str, n_frames: int | None = None,
                  resolution: tuple[int, int] | None = None) -> None:
    """Raise DataError naming `name` if any array has the wrong dtype or shape."""
    f, a, c = ep.frames, ep.actions, ep.camera_deg
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise DataError(f"{name}: frames must be uint8 [T,H,W,3], got {f.dtype} {list(f.shape)}")
    T = f.shape[0]
    if a.dtype != np.int16 or a.shape != (T, N_GROUPS):
        raise DataError(f"{name}: actions must be int16 [{T},{N_GROUPS}], got {a.dtype} {list(a.shape)}")
    if c.dtype != np.float32 or c.shape != (T, 2):
        raise DataError(f"{name}: camera_deg must be float32 [{T},2], got {c.dtype} {list(c.shape)}")
    if ep.motion is not None and (ep.motion.dtype != np.float32 or ep.motion.shape != (T, 3)
                                  or not np.isfinite(ep.motion).all()):
        raise DataError(f"{name}: motion must be finite float32 [{T},3], got {ep.motion.dtype} {list(ep.motion.shape)}")
    problem = validate_actions(a)
    if problem:
        raise DataError(f"{name}: {problem}")
    if n_frames is not None and T != n_frames:
        raise DataError(f"{name}: holds {T} frames but the manifest says {n_frames}")
    if resolution is not None and tuple(f.shape[1:3]) != tuple(resolution):
        raise DataError(f"{name}: frames are {f.shape[1]}x{f.shape[2]} (HxW) but the dataset is "
                        f"{resolution[0]}x{resolution[1]}")


def write_episode(path: str | Path, ep: Episode, compress: bool = True) -> None:
    check_episode(ep, str(path))
    save = np.savez_compressed if compress else np.savez
    arrays = dict(frames=ep.frames, actions=ep.actions, camera_deg=ep.camera_deg)
    if ep.motion is not None:
        arrays["motion"] = ep.motion
    atomic_write(path, lambda fh: save(fh, **arrays))


def read_episode(path: str | Path, n_frames: int | None = None,
                 resolution: tuple[int, int] | None = None) -> Episode:
    """Load and validate one episode file; any damage is a DataError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: episode file is missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"frames", "actions", "camera_deg"} - set(z.files)
            if missing:
                raise DataError(f"{path}: episode file lacks {', '.join(sorted(missing))}")
            ep = Episode(z["frames"], z["actions"], z["camera_deg"], z["motion"] if "motion" in z.files else None)
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, zlib.error) as e:
        raise DataError(f"{path}: damaged episode file ({type(e).__name__}: {e})") from None
    check_episode(ep, str(path), n_frames, resolution)
    return ep


def split_for(key: str, val_frac: float = 0.05, test_frac: float = 0.10) -> str:
    """Deterministic split from a hash of the recording's key (never of a random state)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


class EpisodeStore:
    """A dataset directory: its manifest, metadata and episode files."""

    def __init__(self, root: str | Path, cache_size: int = 256):
        self.root = Path(root)
        man = self.root / MANIFEST
        if self.root.is_file():
            raise DataError(f"{self.root}: is a file; a dataset is a directory holding {MANIFEST}")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset directory does not exist")
        if not man.is_file():
            raise DataError(f"{self.root}: not a dataset (no {MANIFEST})")
        self.entries: list[dict] = []
        for i, line in enumerate(man.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{man}: line {i} is not valid JSON") from None
            for k in ("id", "path", "n_frames", "split"):
                if k not in e:
                    raise DataError(f"{man}: line {i} lacks '{k}'")
            self.entries.append(e)
        meta = self.root / METADATA
        try:
            self.metadata: dict = json.loads(meta.read_text()) if meta.is_file() else {}
        except json.JSONDecodeError:
            raise DataError(f"{meta}: not valid JSON") from None
        self._by_id = {e["id"]: e for e in self.entries}
        self._cache: OrderedDict[str, Episode] = OrderedDict()
        self._cache_size = cache_size

    # --- creating and adding -------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, metadata: dict | None = None, exist_ok: bool = False) -> "EpisodeStore":
        root = Path(root)
        if (root / MANIFEST).is_file():
            if not exist_ok:
                raise DataError(f"{root}: already holds a dataset (manifest.jsonl exists)")
        else:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(root / MANIFEST, [])
        store = cls(root)
        if metadata is not None:
            store.update_metadata(metadata)
        return store

    def update_metadata(self, extra: dict) -> None:
        self.metadata.update(extra)
        atomic_write_json(self.root / METADATA, self.metadata)

    def add(self, episode_id: str, ep: Episode, split: str, source: dict | None = None) -> dict:
        """Write the episode file, then the manifest: a kill in between leaves only an unlisted file."""
        rel = f"{episode_id}.npz"
        write_episode(self.root / rel, ep)
        return self.add_entry({"id": episode_id, "path": rel, "n_frames": len(ep), "split": split,
                               "source": source or {}})

    def add_entry(self, entry: dict) -> dict:
        """List an episode file that is already written in full (e.g. by a worker process)."""
        if entry["split"] not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {entry['split']!r}")
        if entry["id"] in self._by_id:
            raise DataError(f"{self.root}: episode id {entry['id']!r} is already in the manifest")
        self.entries.append(entry)
        self._by_id[entry["id"]] = entry
        atomic_write_jsonl(self.root / MANIFEST, self.entries)
        return entry

    def remove_entries(self, drop) -> int:
        """Unlist the episodes for which drop(entry) is true (their files stay); returns how many."""
        keep = [e for e in self.entries if not drop(e)]
        n = len(self.entries) - len(keep)
        if n:
            self.entries, self._by_id = keep, {e["id"]: e for e in keep}
            atomic_write_jsonl(self.root / MANIFEST, self.entries)
        return n

    # --- reading -------------------------------------------------------------------------
    @property
    def resolution(self) -> tuple[int, int] | None:
        r = self.metadata.get("resolution")
        return (int(r[0]), int(r[1])) if r else None

    def require_resolution(self, hw, what: str) -> None:
        """A clear error when a model (`what`) takes frames of another size than this store holds."""
        if self.resolution and self.resolution != tuple(hw):
            raise DataError(f"{self.root} holds {self.resolution[0]}x{self.resolution[1]} frames but the {what} "
                            f"takes {hw[0]}x{hw[1]}")

    def ids(self, split: str | None = None) -> list[str]:
        return [e["id"] for e in self.entries if split is None or e["split"] == split]

    def entry(self, episode_id: str) -> dict:
        if episode_id not in self._by_id:
            raise DataError(f"{self.root}: no episode {episode_id!r} in the manifest")
        return self._by_id[episode_id]

    def load(self, episode_id: str) -> Episode:
        if episode_id in self._cache:
            self._cache.move_to_end(episode_id)
            return self._cache[episode_id]
        e = self.entry(episode_id)
        ep = read_episode(self.root / e["path"], n_frames=int(e["n_frames"]), resolution=self.resolution)
        self._cache[episode_id] = ep
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ep

    def __len__(self) -> int:
        return len(self.entries)

    def n_frames(self, split: str | None = None) -> int:
        return sum(int(e["n_frames"]) for e in self.entries if split is None or e["split"] == split)

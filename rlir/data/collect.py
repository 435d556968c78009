"""`rlir collect`: record ViZDoom gameplay into an episode store, in parallel worker processes.

Each recording is one game episode played by the human-like policy. Frames flagged invalid or
static are dropped (rlir.data.preprocess) and what remains is stored as one or more episodes,
all in the split of their recording. Recordings are seeded by index, so a killed collection
resumes where it stopped (`recordings.jsonl` lists those finished) and gives the same data.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rlir.actions import GROUPS, buttons_to_actions
from rlir.data.preprocess import PreprocessConfig, segment
from rlir.data.store import Episode, EpisodeStore, split_for, write_episode
from rlir.envs.policy import HumanlikePolicy, PolicyConfig
from rlir.envs.vizdoom_env import NULL_GROUPS, DoomConfig, DoomEnv, kill_engines, parse_map, wad_maps, wad_path
from rlir.errors import ConfigError, DataError, RlirError
from rlir.utils.io import atomic_write_jsonl

log = logging.getLogger("rlir.collect")
RECORDINGS = "recordings.jsonl"
WORKERS = ".workers"                  # each worker's game runs in WORKERS/pid<N>
DEFAULT_MAPS = ["map01", "map02", "map03", "map04", "map05", "map06", "map07", "map08",
                "freedoom1:e1m1", "freedoom1:e1m2"]


@dataclass
class CollectConfig:
    out: str = "data/vizdoom"
    episodes: int = 200              # recordings to play
    frames: int = 300                # frames recorded per recording (before preprocessing)
    seed: int = 0
    maps: list[str] = field(default_factory=lambda: list(DEFAULT_MAPS))
    workers: int = 2
    resolution: tuple[int, int] = (48, 64)      # stored H, W
    burn_in: tuple[int, int] = (10, 250)       # unrecorded frames at the start, so spawns differ
    val_frac: float = 0.05
    test_frac: float = 0.10
    max_restarts: int = 3            # game crashes tolerated per recording
    instance_timeout_s: float = 600.0   # no recording finished for this long: a game instance hangs; stop
    doom: DoomConfig = field(default_factory=DoomConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes must be at least 1, got {self.episodes}")
        if self.frames < self.preprocess.min_segment:
            raise ConfigError(f"frames ({self.frames}) must be at least preprocess.min_segment "
                              f"({self.preprocess.min_segment})")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if len(self.resolution) != 2 or min(self.resolution) < 8:
            raise ConfigError(f"resolution must be [H, W] of at least 8 pixels, got {self.resolution}")
        if not self.maps:
            raise ConfigError("maps must name at least one map")
        if self.doom.tics_per_frame < 1:
            raise ConfigError("doom.tics_per_frame must be at least 1")
        if not 0 <= self.val_frac + self.test_frac < 1:
            raise ConfigError("val_frac + test_frac must lie in [0, 1)")
        if self.seed < 0 or self.max_restarts < 0 or self.instance_timeout_s <= 0:
            raise ConfigError("seed and max_restarts must not be negative, instance_timeout_s must be positive")
        if self.burn_in[0] < 0 or self.burn_in[0] > self.burn_in[1]:
            raise ConfigError(f"burn_in must be [low, high] with 0 <= low <= high, got {list(self.burn_in)}")


def recording_map(cfg: CollectConfig, index: int) -> str:
    return cfg.maps[index % len(cfg.maps)]


def player_motion(v: dict, nv: dict) -> np.ndarray:
    """The engine's displacement of the player between two observations: (forward, rightward) in the
    view's frame at the first, and up, in map units. Doom's angle grows to the left (counter-clockwise)."""
    dx, dy = nv["POSITION_X"] - v["POSITION_X"], nv["POSITION_Y"] - v["POSITION_Y"]
    a = np.deg2rad(v["ANGLE"])
    return np.array([dx * np.cos(a) + dy * np.sin(a), dx * np.sin(a) - dy * np.cos(a),
                     nv["POSITION_Z"] - v["POSITION_Z"]], dtype=np.float32)


def play(env: DoomEnv, cfg: CollectConfig, index: int) -> tuple[Episode, np.ndarray, dict]:
    """Play one recording. Returns the raw episode, a per-frame invalid flag, and info."""
    seed = cfg.seed * 1_000_003 + index
    rng = np.random.default_rng(seed)
    _, map_name = parse_map(recording_map(cfg, index), cfg.doom.wad)
    policy = HumanlikePolicy(cfg.policy, seed=seed)
    frame, v = env.reset(map_name, seed)
    for _ in range(int(rng.integers(cfg.burn_in[0], cfg.burn_in[1] + 1))):   # not recorded
        keys, pitch, yaw, cmds = policy.act(v)
        for c in cmds:
            env.command(c)
        nxt, nv, _ = env.step(keys, pitch, yaw)
        if nxt is None:
            frame, v = env.reset(map_name, seed + 7919)
        else:
            frame, v = nxt, nv
    frames, keys_log, cams, invalid, motion = [], [], [], [], []
    for _ in range(cfg.frames):
        keys, pitch, yaw, cmds = policy.act(v)
        for c in cmds:
            env.command(c)
        frames.append(frame)
        invalid.append(v["DEAD"] > 0 or v["HEALTH"] <= 0)
        nxt, nv, cam = env.step(keys, pitch, yaw)
        keys_log.append(keys)
        cams.append(cam)
        motion.append(player_motion(v, nv) if nxt is not None else np.zeros(3, np.float32))
        if nxt is None:   # level exit: the last action's result is not seen
            break
        frame, v = nxt, nv
    cam = np.stack(cams).astype(np.float32)
    k = {name: np.array([kl[name] for kl in keys_log]) for name in keys_log[0]}
    actions = buttons_to_actions(**k, pitch_deg=cam[:, 0], yaw_deg=cam[:, 1])
    ep = Episode(np.stack(frames), actions, cam, np.stack(motion).astype(np.float32))
    return ep, np.array(invalid, bool), {"map": recording_map(cfg, index), "seed": seed}


# --- worker processes --------------------------------------------------------------------
_ENV: DoomEnv | None = None
_WAD: str | None = None


def _close_worker_env() -> None:
    global _ENV
    if _ENV is not None:
        _ENV.close()   # the engine is a process of its own: never leave it running
        _ENV = None


def _worker_env(cfg: CollectConfig, wad: str) -> DoomEnv:
    global _ENV, _WAD
    if _ENV is None or _WAD != wad:
        _close_worker_env()
        workdir = Path(cfg.out).resolve() / WORKERS / f"pid{os.getpid()}"
        _ENV, _WAD = DoomEnv(cfg.doom, cfg.resolution, workdir, wad=wad), wad
        # pool workers end with os._exit (no atexit): multiprocessing's finalizers still run
        multiprocessing.util.Finalize(None, _close_worker_env, exitpriority=10)
    return _ENV


def record(cfg: CollectConfig, index: int) -> dict:
    """Play, preprocess and write one recording's episodes; restart a crashed game and retry."""
    global _ENV
    wad, _ = parse_map(recording_map(cfg, index), cfg.doom.wad)
    for attempt in range(cfg.max_restarts + 1):
        env = _worker_env(cfg, wad)
        try:
            ep, invalid, info = play(env, cfg, index)
            break
        except Exception as e:  # a crashed engine instance: start a new one
            crash = isinstance(e, env.crash_exceptions) if env.game is not None else True
            env.close()
            _ENV = None
            if attempt == cfg.max_restarts or not crash:
                raise RlirError(f"recording {index} ({recording_map(cfg, index)}) failed after {attempt + 1} "
                                f"attempt(s): {type(e).__name__}: {e}") from None
    segments, counts = segment(ep.frames, invalid, cfg.preprocess)
    key = f"s{cfg.seed}-r{index:06d}"
    split = split_for(key, cfg.val_frac, cfg.test_frac)
    entries = []
    for k, (s, e) in enumerate(segments):
        eid = f"{key}-{k:02d}"
        write_episode(Path(cfg.out) / f"{eid}.npz", ep.slice(s, e))
        entries.append({"id": eid, "path": f"{eid}.npz", "n_frames": e - s, "split": split,
                        "source": {"game": "vizdoom", "wad": wad, "map": info["map"], "seed": info["seed"],
                                   "policy": "humanlike", "recording": index, "frames": [s, e]}})
    return {"recording": index, "raw_frames": len(ep), "dropped": counts, "entries": entries}


# --- the parent ---------------------------------------------------------------------------
def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    cfg.validate()
    out = Path(cfg.out)
    check_maps(cfg)
    if (out / "manifest.jsonl").is_file():     # resume a collection, never add game clips to another dataset
        existing = EpisodeStore(out)
        if len(existing) and "collect" not in existing.metadata:
            raise DataError(f"{out}: holds a dataset that rlir collect did not record; use a new --out")
    store = EpisodeStore.create(out, exist_ok=True)
    meta = {
        "format": "rlir-episodes/1",
        "source": "vizdoom",
        "resolution": list(cfg.resolution),
        "fps": 35.0 / cfg.doom.tics_per_frame,
        "groups": list(GROUPS),
        "null_groups": NULL_GROUPS,
        "collect": asdict(cfg),
    }
    old = store.metadata.get("collect")
    if old and (old.get("seed") != cfg.seed or list(old.get("resolution", [])) != list(cfg.resolution)):
        raise DataError(f"{out}: holds a collection with another seed or resolution; use a new --out")
    store.update_metadata(meta)

    rec_path = out / RECORDINGS
    done = {}
    if rec_path.is_file():
        import json
        for line in rec_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["recording"]] = r
    # entries of a recording that did not finish writing are dropped and the recording redone
    store.remove_entries(lambda e: e.get("source", {}).get("recording") not in done)
    todo = [i for i in range(cfg.episodes) if i not in done]
    if done:
        log.info("resuming: %d of %d recordings already done", len(done), cfg.episodes)

    t0 = time.time()
    frames_written = 0
    from tqdm import tqdm
    bar = tqdm(total=cfg.episodes, initial=len(done), desc="collect", unit="ep", disable=not progress)

    def finish(res: dict):
        nonlocal frames_written
        for e in res["entries"]:
            store.add_entry(e)
        frames_written += sum(e["n_frames"] for e in res["entries"])
        res = {k: v for k, v in res.items() if k != "entries"} | {"episodes": [e["id"] for e in res["entries"]]}
        done[res["recording"]] = res
        atomic_write_jsonl(rec_path, [done[k] for k in sorted(done)])
        bar.update(1)
        bar.set_postfix(fps=f"{frames_written / max(time.time() - t0, 1e-9):.0f}")

    pool_restarts = 0
    with _stop_on_sigterm():
        try:
            while todo:
                try:
                    _run_pool(cfg, todo, finish)
                    todo = []
                except BrokenProcessPool:
                    # a worker process died (e.g. the engine took it down): start new ones for what is left
                    pool_restarts += 1
                    todo = [i for i in todo if i not in done]
                    if pool_restarts > cfg.max_restarts:
                        raise RlirError(f"worker processes died {pool_restarts} times; stopping") from None
                    log.warning("a worker process died; restarting the pool for %d recordings", len(todo))
        finally:
            kill_engines(out / WORKERS)      # whatever ended the run, no game process outlives it
    bar.close()
    elapsed = time.time() - t0
    totals = summarize_recordings(list(done.values()))
    store.update_metadata({"preprocess": totals})
    return {"elapsed_s": elapsed, "frames_written": frames_written,
            "fps": frames_written / max(elapsed, 1e-9), **totals}


def check_maps(cfg: CollectConfig) -> None:
    """Every map spec names a wad we have and a map in it (the engine waits forever for a missing map)."""
    for m in cfg.maps:
        wad, name = parse_map(m, cfg.doom.wad)
        try:
            path = wad_path(wad)
            maps = wad_maps(path)
        except (FileNotFoundError, OSError, ValueError) as e:
            raise ConfigError(f"map {m!r}: {e}") from None
        if name not in maps:
            raise ConfigError(f"map {m!r}: {Path(path).name} has no map {name!r} (it has {', '.join(sorted(maps))})")


def _worker_init(parent: int) -> None:
    """In each worker: end (closing its game) when the parent dies or asks, never on the terminal's Ctrl-C."""
    import ctypes
    import signal
    try:                                              # Linux: SIGTERM when the parent dies, even by SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:                        # the parent died before prctl took effect
        os._exit(1)

    def leave(signum, frame):
        _close_worker_env()
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent hears Ctrl-C and ends the workers itself


def _run_pool(cfg: CollectConfig, todo: list[int], finish) -> None:
    """Record `todo` in worker processes; stop them all (and their games) on any way out but success."""
    from concurrent.futures import FIRST_COMPLETED, wait
    pool = ProcessPoolExecutor(max_workers=cfg.workers, initializer=_worker_init, initargs=(os.getpid(),))
    ok = False
    try:
        pending = {pool.submit(record, cfg, i) for i in todo}
        while pending:
            done, pending = wait(pending, timeout=cfg.instance_timeout_s, return_when=FIRST_COMPLETED)
            if not done:
                raise RlirError(f"no recording finished in {cfg.instance_timeout_s:g} s: a game instance hangs; "
                                f"stopped (instance_timeout_s sets the limit)")
            for f in done:
                finish(f.result())
        ok = True
    finally:
        if ok:
            pool.shutdown(wait=True)
        else:
            _stop_pool(pool, Path(cfg.out) / WORKERS)


def _stop_pool(pool: ProcessPoolExecutor, workers_dir: Path) -> None:
    procs = list((pool._processes or {}).values())   # the executor has no public way to stop running tasks
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()                                 # each worker closes its game on SIGTERM
    deadline = time.time() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
    kill_engines(workers_dir)                         # a worker stuck inside the engine is freed by its end
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM ends a collection the way Ctrl-C does, through the clean-up, not past it."""
    import signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def summarize_recordings(recs: list[dict]) -> dict:
    out = {"recordings": len(recs), "raw_frames": sum(r["raw_frames"] for r in recs)}
    for k in ("kept", "static", "invalid", "short"):
        out[k] = sum(r["dropped"].get(k, 0) for r in recs)
    return out

"""How much of each recorded action the engine's own motion reveals: an IDM's ceiling.

An IDM sees pixels; the pixels can show at most what the engine moved. This bench plays
recordings exactly as `rlir collect` does, also reads the engine's true motion at every frame
(position, view height, angle, pitch, on-ground), and fits a gradient-boosted classifier per
group on a window of that motion (frames t-3 .. t+4, the IDM's context), trained on some
recordings and tested on others. Its F1 on the test recordings is an upper bound for the
motion groups (fore_back, left_right, sprint_sneak, jump) that no pixel IDM can beat on data
recorded this way. (attack and drop show as weapon sprites, not motion, and are left out;
the camera is the engine's applied change by construction, so its bins are exact.)

    python bench/idm_ceiling.py --recordings 120 [--set doom.tics_per_frame=2 ...] [--tag NAME]

Each `--set` changes the collect config (as `rlir collect --set` does), so designs of the
recording can be compared side by side. Writes bench/results/idm_ceiling_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.actions import GROUPS  # noqa: E402
from rlir.config import load_config  # noqa: E402
from rlir.data.collect import CollectConfig, play, recording_map  # noqa: E402
from rlir.data.store import split_for  # noqa: E402
from rlir.envs.vizdoom_env import DoomEnv, parse_map  # noqa: E402
from rlir.eval.action_metrics import action_metrics  # noqa: E402

MOTION_GROUPS = ("fore_back", "left_right", "sprint_sneak", "jump")
WINDOW = range(-3, 5)          # the IDM's context around the transition t -> t+1


class MotionEnv(DoomEnv):
    """DoomEnv that also keeps the engine's motion after every observation."""

    def _observe(self):
        frame, v = super()._observe()
        gv = self.vzd.GameVariable
        g = self.game
        self.trace.append([g.get_game_variable(getattr(gv, n)) for n in
                           ("POSITION_X", "POSITION_Y", "POSITION_Z", "CAMERA_POSITION_Z", "ANGLE", "PITCH",
                            "ON_GROUND")])
        return frame, v


def play_with_motion(args) -> tuple[np.ndarray, np.ndarray, str]:
    """One recording as `rlir collect` plays it -> (actions [T, 9], engine trace [T+1, 7], key)."""
    cfg, index = args
    wad, _ = parse_map(recording_map(cfg, index), cfg.doom.wad)
    with tempfile.TemporaryDirectory(prefix="rlir-ceiling-") as workdir:
        env = MotionEnv(cfg.doom, cfg.resolution, workdir, wad=wad)
        env.trace = []
        try:
            ep, _, _ = play(env, cfg, index)
        finally:
            env.close()
    # one trace row per observation, burn-in included: keep the recorded frames and the one after the
    # last action; a recording cut short by a level exit has no observation after its last action
    actions = ep.actions if len(ep.actions) == cfg.frames else ep.actions[:-1]
    return actions, np.array(env.trace[-(len(actions) + 1):], dtype=np.float64), f"s{cfg.seed}-r{index:06d}"


def motion_features(trace: np.ndarray, tics: int) -> np.ndarray:
    """Per transition t -> t+1: displacement along and across the view; the same for the part of
    it that momentum does not explain (Doom keeps the world-frame velocity and multiplies it by its
    friction 0.90625 every tic, so a glide after a release or a turn moves the view without a key);
    height and view-height change, view height, on-ground, turn. [T+1, 7] trace -> [T, 9]."""
    x, y, z, cz, ang, pitch, ground = trace.T
    a = np.deg2rad(ang[:-1])
    dx, dy = np.diff(x), np.diff(y)
    glide = 0.90625 ** tics
    rx = dx - glide * np.concatenate([[0.0], dx[:-1]])
    ry = dy - glide * np.concatenate([[0.0], dy[:-1]])

    def along(u, w):
        return u * np.cos(a) + w * np.sin(a), -u * np.sin(a) + w * np.cos(a)

    fwd, side = along(dx, dy)
    rfwd, rside = along(rx, ry)
    view = cz - z
    return np.stack([fwd, side, rfwd, rside, np.diff(z), np.diff(view), view[:-1], ground[:-1],
                     (np.diff(ang) + 180) % 360 - 180], axis=1)


def windowed(f: np.ndarray) -> np.ndarray:
    T = len(f)
    cols = []
    for k in WINDOW:
        idx = np.clip(np.arange(T) + k, 0, T - 1)
        valid = ((np.arange(T) + k >= 0) & (np.arange(T) + k < T)).astype(np.float64)[:, None]
        cols.append(f[idx] * valid)
        cols.append(valid)
    return np.concatenate(cols, axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recordings", type=int, default=120)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tag", default="default")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    cfg = load_config(CollectConfig, "configs/collect/tiny.yaml", a.set, episodes=a.recordings, frames=a.frames,
                      seed=a.seed, workers=a.workers)
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        recs = list(pool.map(play_with_motion, [(cfg, i) for i in range(a.recordings)]))
    play_s = time.time() - t0
    X = {"train": [], "test": []}
    Y = {"train": [], "test": []}
    for actions, trace, key in recs:
        if len(actions) < 20:
            continue
        split = "test" if split_for(key, 0.0, 0.3) == "test" else "train"
        X[split].append(windowed(motion_features(trace, cfg.doom.tics_per_frame)))
        Y[split].append(actions)
    Xtr, Ytr = np.concatenate(X["train"]), np.concatenate(Y["train"])
    pred_clips = [a.copy() for a in Y["test"]]
    for name in MOTION_GROUPS:
        g = GROUPS.index(name)
        clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=a.seed)
        clf.fit(Xtr, Ytr[:, g])
        for pc, xc in zip(pred_clips, X["test"]):
            pc[:, g] = clf.predict(xc)
    # score 16-frame clips as the IDM evaluation does (pooled frames, bootstrap over clips)
    L = 15
    pred = np.stack([pc[i:i + L] for pc in pred_clips for i in range(0, len(pc) - L + 1, L)])
    true = np.stack([yc[i:i + L] for yc in Y["test"] for i in range(0, len(yc) - L + 1, L)])
    m = action_metrics(pred, true, seed=a.seed)
    groups = {n: round(m["per_group"][n]["f1_macro"], 4) for n in MOTION_GROUPS}
    out = {"bench": "idm_ceiling", "command": " ".join([sys.executable] + sys.argv), "seed": a.seed,
           "tag": a.tag, "overrides": a.set, "recordings": a.recordings, "frames": a.frames,
           "tics_per_frame": cfg.doom.tics_per_frame, "train_frames": int(len(Xtr)),
           "test_clips": int(len(true)), "play_s": round(play_s, 1),
           "ceiling_f1_macro_per_group": groups,
           "class_share_test": {n: np.bincount(np.concatenate(Y["test"])[:, GROUPS.index(n)]).tolist()
                                for n in MOTION_GROUPS},
           "cpus": os.cpu_count(), "machine": platform.platform()}
    print(json.dumps(groups))
    path = Path(a.out or f"bench/results/idm_ceiling_{a.tag}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

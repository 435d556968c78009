import json
import os

import numpy as np

import rlir.data.collect as C
from rlir.actions import validate_actions
from rlir.data.stats import dataset_stats
from rlir.data.store import EpisodeStore


def small_cfg(out, **kw):
    base = dict(out=str(out), episodes=2, frames=40, workers=2, burn_in=(5, 10), maps=["map01", "freedoom1:e1m1"])
    base.update(kw)
    cfg = C.CollectConfig(**base)
    cfg.preprocess.min_segment = 8
    return cfg


def test_two_episode_collection_end_to_end(tmp_path):
    out = tmp_path / "d"
    res = C.collect(small_cfg(out), progress=False)
    assert res["recordings"] == 2 and res["raw_frames"] == 80
    assert res["kept"] + res["static"] + res["invalid"] + res["short"] == 80
    store = EpisodeStore(out)
    assert len(store) >= 1 and store.resolution == (48, 64)
    for i in store.ids():
        ep = store.load(i)
        assert ep.frames.shape[1:] == (48, 64, 3) and ep.frames.dtype == np.uint8
        assert validate_actions(ep.actions) is None and ep.actions.dtype == np.int16
        # the camera label is the quantised degrees the engine applied
        from rlir.actions import camera_to_bin
        np.testing.assert_array_equal(ep.actions[:, 7:], camera_to_bin(ep.camera_deg))
        assert (ep.actions[:, 3] == 0).all()        # use: left null by design in ViZDoom
        assert ep.motion is not None and ep.motion.shape == (len(ep), 3) and ep.motion.dtype == np.float32
    # the engine's recorded motion agrees with the keys: forward moves forward, right moves right
    eps = [store.load(i) for i in store.ids()]
    m, a = np.concatenate([e.motion for e in eps]), np.concatenate([e.actions for e in eps])
    assert m[a[:, 0] == 1, 0].mean() > m[a[:, 0] == 0, 0].mean() + 1.0
    if (a[:, 1] == 1).sum() >= 3 and (a[:, 1] == 2).sum() >= 3:
        assert m[a[:, 1] == 2, 1].mean() > m[a[:, 1] == 1, 1].mean()
    maps = {e["source"]["map"] for e in store.entries}
    assert maps == {"map01", "freedoom1:e1m1"}
    meta = json.loads((out / "dataset.json").read_text())
    assert "use" in meta["null_groups"] and meta["preprocess"]["recordings"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    s = dataset_stats(out)
    assert s["episodes"] == len(store) and s["frames"] == res["kept"]


def test_resume_only_plays_missing_recordings(tmp_path):
    out = tmp_path / "d"
    C.collect(small_cfg(out, episodes=1, workers=1), progress=False)
    first = EpisodeStore(out).entries
    res = C.collect(small_cfg(out, episodes=2, workers=1), progress=False)
    assert res["recordings"] == 2 and res["frames_written"] <= 40   # only recording 1 was played
    assert EpisodeStore(out).entries[: len(first)] == first


def test_crashed_game_is_restarted(tmp_path, monkeypatch):
    import vizdoom as vzd
    real_play, calls = C.play, tmp_path / "calls"        # recordings run in worker processes: count in a file

    def flaky(env, cfg, index):
        with open(calls, "a") as f:
            f.write(f"{index}\n")
        if calls.read_text().count("\n") == 1:
            raise vzd.ViZDoomUnexpectedExitException("engine died")
        return real_play(env, cfg, index)

    monkeypatch.setattr(C, "play", flaky)                  # inherited by forked workers
    res = C.collect(small_cfg(tmp_path / "d", episodes=1, workers=1), progress=False)
    assert calls.read_text().split() == ["0", "0"] and res["recordings"] == 1


def test_dead_worker_process_is_replaced(tmp_path, monkeypatch):
    marker = tmp_path / "died"
    real_play = C.play

    def dies_once(env, cfg, index):
        if index == 1 and not marker.exists():
            marker.write_text("x")
            os._exit(1)                     # the whole worker process goes, as when the engine takes it down
        return real_play(env, cfg, index)

    monkeypatch.setattr(C, "play", dies_once)   # inherited by forked workers
    res = C.collect(small_cfg(tmp_path / "d", episodes=3), progress=False)
    assert marker.exists() and res["recordings"] == 3
    assert sorted({e["source"]["recording"] for e in EpisodeStore(tmp_path / "d").entries}) <= [0, 1, 2]

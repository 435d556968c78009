"""The VPT / MineWorld reader, on tiny recordings written here (mp4 via cv2 + a jsonl)."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from rlir.actions import CAMERA_NULL_BIN, GROUPS, PITCH, YAW, camera_to_bin
from rlir.data.preprocess import PreprocessConfig
from rlir.data.store import EpisodeStore
from rlir.data.vpt import convert_vpt, read_vpt_recording
from rlir.errors import DataError

G = {name: i for i, name in enumerate(GROUPS)}
W_, H_ = 64, 36   # source video size (VPT's is 640x360)


def write_mp4(path, n, seed=0):
    """n frames of fresh noise over a moving gradient: nothing is static, even after compression."""
    rng = np.random.default_rng(seed)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (W_, H_))
    assert vw.isOpened()
    x = np.arange(W_)[None, :, None]
    for t in range(n):
        grad = ((x * 4 + t * 16) % 256).astype(np.uint8).repeat(H_, 0).repeat(3, 2)
        noise = rng.integers(0, 64, (H_, W_, 3), dtype=np.uint8)
        vw.write(np.clip(grad.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    vw.release()


def step(keys=(), buttons=(), new_buttons=(), dx=0.0, dy=0.0, gui=False):
    return {"mouse": {"dx": dx, "dy": dy, "buttons": list(buttons), "newButtons": list(new_buttons),
                      "x": 0, "y": 0},
            "keyboard": {"keys": [f"key.keyboard.{k}" for k in keys]},
            "isGuiOpen": gui, "hotbar": 0, "yaw": 0.0, "pitch": 0.0, "tick": 0}


def write_recording(d, name, steps, n_video=None, seed=0):
    write_mp4(d / f"{name}.mp4", len(steps) if n_video is None else n_video, seed)
    (d / f"{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    return d / f"{name}.mp4", d / f"{name}.jsonl"


def test_keys_buttons_and_camera_map_to_classes(tmp_path):
    steps = [
        step(keys=["w"]), step(keys=["w", "s"]), step(keys=["s"]), step(keys=["a"]), step(keys=["d"]),
        step(keys=["left.control"]), step(keys=["left.shift"]), step(buttons=[0], new_buttons=[0]),
        step(buttons=[1], new_buttons=[1]), step(keys=["space"]), step(keys=["q"]),
        step(dx=20, dy=-10), {"isGuiOpen": False},   # last: no mouse/keyboard at all = nothing pressed
    ]
    mp4, js = write_recording(tmp_path, "rec", steps)
    ep, invalid = read_vpt_recording(mp4, js, resolution=(24, 32))
    a = ep.actions
    assert ep.frames.shape == (len(steps), 24, 32, 3) and ep.frames.dtype == np.uint8
    assert a.shape == (len(steps), 9) and a.dtype == np.int16
    assert ep.camera_deg.dtype == np.float32 and ep.camera_deg.shape == (len(steps), 2)
    assert not invalid.any()
    assert a[0, G["fore_back"]] == 1 and a[1, G["fore_back"]] == 0 and a[2, G["fore_back"]] == 2
    assert a[3, G["left_right"]] == 1 and a[4, G["left_right"]] == 2
    assert a[5, G["sprint_sneak"]] == 1 and a[6, G["sprint_sneak"]] == 2
    assert a[7, G["attack"]] == 1 and a[7, G["use"]] == 0
    assert a[8, G["use"]] == 1 and a[8, G["attack"]] == 0
    assert a[9, G["jump"]] == 1 and a[10, G["drop"]] == 1
    # each frame presses exactly its one control; everything else is null
    assert (a[:11, :7] != 0).sum(axis=1).tolist() == [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    # dx=20 -> 3 degrees to the right; dy=-10 -> 1.5 degrees up (negative pitch)
    np.testing.assert_allclose(ep.camera_deg[11], [-1.5, 3.0])
    assert a[11, YAW] == camera_to_bin(3.0) > CAMERA_NULL_BIN
    assert a[11, PITCH] == camera_to_bin(-1.5) < CAMERA_NULL_BIN
    assert (a[:11, PITCH:] == CAMERA_NULL_BIN).all()
    assert (a[12, :7] == 0).all() and (a[12, PITCH:] == CAMERA_NULL_BIN).all()


def test_stuck_attack_removed_until_pressed_again(tmp_path):
    steps = ([step(buttons=[0], new_buttons=[0])] + [step(buttons=[0])] * 4
             + [step(buttons=[0], new_buttons=[0]), step(buttons=[0]), step()])
    ep, _ = read_vpt_recording(*write_recording(tmp_path, "stuck", steps))
    assert ep.actions[:, G["attack"]].tolist() == [0, 0, 0, 0, 0, 1, 1, 0]
    # without the stuck marker on line 0 the same held button is a real attack
    steps[0] = step(buttons=[0])
    ep, _ = read_vpt_recording(*write_recording(tmp_path, "held", steps))
    assert ep.actions[:, G["attack"]].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]


def test_convert_drops_gui_frames_and_writes_a_readable_store(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    gui = range(18, 22)   # 4 GUI frames in the middle of 40 -> two kept segments of 18
    steps = [step(keys=["w"], dx=(t % 5) - 2, gui=t in gui) for t in range(40)]
    write_recording(src, "a", steps)
    write_recording(src, "b", [step(keys=["d"]) for _ in range(20)], seed=1)
    (src / "lonely.jsonl").write_text(json.dumps(step()) + "\n")   # no mp4 partner: skipped

    totals = convert_vpt(src, out, resolution=(24, 32), preprocess=PreprocessConfig(min_segment=16))
    assert totals["recordings"] == 2 and totals["raw_frames"] == 60
    assert totals["invalid"] == 4 and totals["static"] == 0 and totals["short"] == 0
    assert totals["kept"] == 56

    store = EpisodeStore(out)
    assert store.ids() == ["a-00", "a-01", "b-00"]
    assert store.resolution == (24, 32)
    md = store.metadata
    assert md["format"] == "rlir-episodes/1" and md["source"] == "vpt" and md["fps"] == 20.0
    assert md["groups"] == list(GROUPS) and md["null_groups"] == {}
    assert md["preprocess"] == {k: totals[k] for k in ("recordings", "raw_frames", "kept", "static",
                                                      "invalid", "short")}
    spans = [store.entry(i)["source"]["frames"] for i in store.ids()]
    assert spans == [[0, 18], [22, 40], [0, 20]]
    for s, e in spans[:2]:   # no kept frame is a GUI frame
        assert not set(range(s, e)) & set(gui)
    assert store.entry("a-00")["split"] == store.entry("a-01")["split"]
    for i in store.ids():
        ep = store.load(i)
        assert ep.frames.shape[1:] == (24, 32, 3) and len(ep) == store.entry(i)["n_frames"]
        assert store.entry(i)["source"]["game"] == "minecraft"
    assert (store.load("a-01").actions[:, G["fore_back"]] == 1).all()
    assert (store.load("b-00").actions[:, G["left_right"]] == 2).all()


def test_length_mismatch_uses_common_prefix(tmp_path, caplog):
    steps = [step(keys=["w"]) for _ in range(12)]
    with caplog.at_level(logging.WARNING, logger="rlir.vpt"):
        ep, invalid = read_vpt_recording(*write_recording(tmp_path, "short_video", steps, n_video=9))
    assert len(ep) == 9 and len(invalid) == 9 and ep.actions.shape == (9, 9)
    assert "9 frames" in caplog.text and "12 lines" in caplog.text


def test_bad_json_line_names_file_and_line(tmp_path):
    mp4, js = write_recording(tmp_path, "bad", [step()] * 5)
    lines = js.read_text().splitlines()
    lines[2] = "{not json"
    js.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3"):
        read_vpt_recording(mp4, js)


def test_missing_or_unreadable_files(tmp_path):
    mp4, js = write_recording(tmp_path, "r", [step()] * 5)
    with pytest.raises(DataError, match="nope.mp4"):
        read_vpt_recording(tmp_path / "nope.mp4", js)
    with pytest.raises(DataError, match="nope.jsonl"):
        read_vpt_recording(mp4, tmp_path / "nope.jsonl")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(DataError, match="junk.mp4"):
        read_vpt_recording(junk, js)
    # a source directory with only unpaired files holds no recordings
    only = tmp_path / "only"
    only.mkdir()
    (only / "x.jsonl").write_text(json.dumps(step()) + "\n")
    with pytest.raises(DataError, match="no VPT recordings"):
        convert_vpt(only, tmp_path / "out")

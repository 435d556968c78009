"""Read VPT / MineWorld Minecraft recordings into the episode store (DESIGN.md Contract 2).

A recording is `<name>.mp4` (640x360 at 20 Hz in the release, any size accepted) and
`<name>.jsonl`: one JSON object per video frame, in order, holding the keys and mouse state
at that frame (OpenAI VPT's data loader, `data_loader.py` and `run_inverse_dynamics_model.py`).
Line t is the action taken at frame t, so it leads to frame t+1, as our contract wants.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from rlir.actions import GROUPS, buttons_to_actions
from rlir.data.preprocess import PreprocessConfig, segment
from rlir.data.store import Episode, EpisodeStore, split_for
from rlir.errors import DataError

log = logging.getLogger("rlir.vpt")

FPS = 20.0
CAMERA_SCALE = 360.0 / 2400.0   # degrees per mouse-delta unit (VPT's CAMERA_SCALER)
ATTACK_BUTTON, USE_BUTTON = 0, 1
KEYS = {   # our button name -> Minecraft key id
    "forward": "key.keyboard.w", "back": "key.keyboard.s",
    "left": "key.keyboard.a", "right": "key.keyboard.d",
    "sprint": "key.keyboard.left.control", "sneak": "key.keyboard.left.shift",
    "jump": "key.keyboard.space", "drop": "key.keyboard.q",
}


def read_video(path: str | Path, resolution: tuple[int, int]) -> np.ndarray:
    """All frames of an mp4 as uint8 RGB [T, H, W, 3], each resized to resolution (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file is missing")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open the video")
    h, w = resolution
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            # INTER_AREA averages the source pixels: the least aliasing when shrinking
            frames.append(cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise DataError(f"{path}: no frame could be decoded")
    return np.stack(frames).astype(np.uint8, copy=False)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: action file is missing")
    steps = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(step, dict):
            raise DataError(f"{path}: line {i} is not a JSON object")
        steps.append(step)
    return steps


def steps_to_actions(steps: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """jsonl objects -> (actions int16 [T,9], camera_deg float32 [T,2] (pitch, yaw), invalid bool [T])."""
    T = len(steps)
    pressed = {name: np.zeros(T, bool) for name in (*KEYS, "use", "attack")}
    cam = np.zeros((T, 2), np.float32)
    invalid = np.zeros(T, bool)
    attack_stuck = False
    for t, step in enumerate(steps):
        mouse = step.get("mouse") or {}       # a missing key means nothing pressed
        keys = set((step.get("keyboard") or {}).get("keys") or [])
        buttons = set(mouse.get("buttons") or [])
        new_buttons = list(mouse.get("newButtons") or [])
        # VPT quirk: some recordings start with attack held down by the recorder, not the player;
        # it stays stuck until the player really presses attack (0 appears in newButtons).
        if t == 0:
            attack_stuck = new_buttons == [ATTACK_BUTTON]
        elif attack_stuck and ATTACK_BUTTON in new_buttons:
            attack_stuck = False
        if attack_stuck:
            buttons.discard(ATTACK_BUTTON)
        for name, key in KEYS.items():
            pressed[name][t] = key in keys
        pressed["use"][t] = USE_BUTTON in buttons
        pressed["attack"][t] = ATTACK_BUTTON in buttons
        # dy > 0 is the mouse moving down = looking down, dx > 0 = turning right: our signs
        cam[t] = (float(mouse.get("dy") or 0.0) * CAMERA_SCALE, float(mouse.get("dx") or 0.0) * CAMERA_SCALE)
        # with a GUI open the mouse moves a cursor, so the camera label is meaningless
        invalid[t] = bool(step.get("isGuiOpen", False))
    actions = buttons_to_actions(**pressed, pitch_deg=cam[:, 0], yaw_deg=cam[:, 1])
    return actions, cam, invalid


def read_vpt_recording(mp4_path: str | Path, jsonl_path: str | Path,
                       resolution: tuple[int, int] = (48, 64)) -> tuple[Episode, np.ndarray]:
    """One recording -> (Episode with unquantised camera_deg, per-frame invalid flags)."""
    steps = read_jsonl(jsonl_path)
    frames = read_video(mp4_path, resolution)
    if len(frames) != len(steps):
        # recordings are sometimes cut short on one side; the common prefix is still aligned
        log.warning("%s: video has %d frames but %s has %d lines; using the first %d",
                    mp4_path, len(frames), jsonl_path, len(steps), min(len(frames), len(steps)))
    T = min(len(frames), len(steps))
    actions, cam, invalid = steps_to_actions(steps[:T])
    return Episode(frames[:T], actions, cam), invalid


def find_pairs(src_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, mp4, jsonl) for every mp4 with a jsonl beside it, sorted; lone files are skipped."""
    src = Path(src_dir)
    if not src.is_dir():
        raise DataError(f"{src}: source directory does not exist")
    pairs = []
    for mp4 in sorted(src.glob("*.mp4")):
        js = mp4.with_suffix(".jsonl")
        if js.is_file():
            pairs.append((mp4.stem, mp4, js))
        else:
            log.warning("%s: no %s beside it; skipped", mp4, js.name)
    for js in sorted(src.glob("*.jsonl")):
        if not js.with_suffix(".mp4").is_file():
            log.warning("%s: no %s beside it; skipped", js, js.with_suffix(".mp4").name)
    if not pairs:
        raise DataError(f"{src}: no VPT recordings (<name>.mp4 with <name>.jsonl) found")
    return pairs


def convert_vpt(src_dir: str | Path, out_dir: str | Path, resolution: tuple[int, int] = (48, 64),
                preprocess: PreprocessConfig | None = None, val_frac: float = 0.05, test_frac: float = 0.10,
                progress: bool = False) -> dict:
    """Convert every recording in src_dir into a new episode store at out_dir; return the totals."""
    from tqdm import tqdm
    cfg = preprocess or PreprocessConfig()
    pairs = find_pairs(src_dir)
    store = EpisodeStore.create(out_dir, metadata={
        "format": "rlir-episodes/1", "source": "vpt", "resolution": [int(resolution[0]), int(resolution[1])],
        "fps": FPS, "groups": list(GROUPS), "null_groups": {},
    })
    totals = {"recordings": 0, "raw_frames": 0, "kept": 0, "static": 0, "invalid": 0, "short": 0}
    n_episodes = 0
    for name, mp4, js in tqdm(pairs, desc="vpt", unit="rec", disable=not progress):
        ep, invalid = read_vpt_recording(mp4, js, resolution)
        segments, counts = segment(ep.frames, invalid, cfg)
        split = split_for(name, val_frac, test_frac)   # by recording: its segments never straddle splits
        for k, (s, e) in enumerate(segments):
            store.add(f"{name}-{k:02d}", ep.slice(s, e), split,
                      source={"game": "minecraft", "format": "vpt", "recording": name, "frames": [s, e]})
        n_episodes += len(segments)
        totals["recordings"] += 1
        totals["raw_frames"] += len(ep)
        for key in ("kept", "static", "invalid", "short"):
            totals[key] += counts[key]
    store.update_metadata({"preprocess": totals})
    return {**totals, "episodes": n_episodes}

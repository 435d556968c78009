"""The action space (DESIGN.md Contract 1), VPT's camera quantiser and action tokens.

One action per frame is 9 integers, in this order:

    0 fore_back     0 null, 1 forward, 2 back
    1 left_right    0 null, 1 left, 2 right
    2 sprint_sneak  0 null, 1 sprint, 2 sneak
    3 use           0 null, 1 use
    4 attack        0 null, 1 attack
    5 jump          0 null, 1 jump
    6 drop          0 null, 1 drop
    7 camera_pitch  0..10, 5 = no motion (positive degrees = looking down)
    8 camera_yaw    0..10, 5 = no motion (positive degrees = turning right)

Both keys of a pair pressed = null (MineWorld's rule).
"""
from __future__ import annotations

import numpy as np

GROUPS: tuple[str, ...] = (
    "fore_back", "left_right", "sprint_sneak", "use", "attack", "jump", "drop",
    "camera_pitch", "camera_yaw",
)
N_GROUPS = len(GROUPS)
N_CLASSES: tuple[int, ...] = (3, 3, 3, 2, 2, 2, 2, 11, 11)
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fore_back": ("null", "forward", "back"),
    "left_right": ("null", "left", "right"),
    "sprint_sneak": ("null", "sprint", "sneak"),
    "use": ("null", "use"),
    "attack": ("null", "attack"),
    "jump": ("null", "jump"),
    "drop": ("null", "drop"),
    "camera_pitch": tuple(str(i) for i in range(11)),
    "camera_yaw": tuple(str(i) for i in range(11)),
}
DISCRETE_GROUPS = GROUPS[:7]
CAMERA_GROUPS = GROUPS[7:]
PITCH, YAW = 7, 8

# VPT's mu-law camera quantiser (lib/actions.py CameraQuantizer, "mu_law" scheme).
CAMERA_MAXVAL = 10.0   # degrees; larger moves are clipped
CAMERA_BINSIZE = 2.0
CAMERA_MU = 10.0
N_CAMERA_BINS = int(2 * CAMERA_MAXVAL / CAMERA_BINSIZE) + 1  # 11
CAMERA_NULL_BIN = N_CAMERA_BINS // 2                          # 5


def camera_to_bin(deg) -> np.ndarray:
    """Degrees -> bin in 0..10.  v = sign(x) log(1 + mu|x|/m) / log(1 + mu) * m;  bin = round((v + m) / b)."""
    x = np.clip(np.asarray(deg, dtype=np.float64), -CAMERA_MAXVAL, CAMERA_MAXVAL)
    v = np.sign(x) * np.log1p(CAMERA_MU * np.abs(x) / CAMERA_MAXVAL) / np.log1p(CAMERA_MU) * CAMERA_MAXVAL
    # floor(y + 0.5) rather than np.round: banker's rounding would split ties unevenly
    return np.floor((v + CAMERA_MAXVAL) / CAMERA_BINSIZE + 0.5).astype(np.int64)


def bin_to_camera(b) -> np.ndarray:
    """Bin -> degrees at the bin centre (the inverse mu-law of v = b * binsize - maxval)."""
    v = np.asarray(b, dtype=np.float64) * CAMERA_BINSIZE - CAMERA_MAXVAL
    return np.sign(v) * (CAMERA_MAXVAL / CAMERA_MU) * (np.power(1.0 + CAMERA_MU, np.abs(v) / CAMERA_MAXVAL) - 1.0)


def camera_bin_edges() -> np.ndarray:
    """Positive degrees where the bin changes: about 0.27, 1.05, 2.32, 4.36, 7.66."""
    odd = np.arange(1, N_CAMERA_BINS, 2, dtype=np.float64)  # v = 1, 3, 5, 7, 9 halfway between centres
    return (CAMERA_MAXVAL / CAMERA_MU) * (np.power(1.0 + CAMERA_MU, odd / CAMERA_MAXVAL) - 1.0)


def _pair(a, b) -> np.ndarray:
    """Two keys of a pair -> 0 null, 1 first, 2 second; both pressed = null."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    return np.where(a & ~b, 1, np.where(b & ~a, 2, 0))


def buttons_to_actions(*, forward, back, left, right, sprint, sneak, use, attack, jump, drop,
                       pitch_deg, yaw_deg) -> np.ndarray:
    """Per-button states (scalars or arrays of equal shape [...]) -> int16 actions [..., 9]."""
    cols = [
        _pair(forward, back), _pair(left, right), _pair(sprint, sneak),
        np.asarray(use, dtype=bool), np.asarray(attack, dtype=bool),
        np.asarray(jump, dtype=bool), np.asarray(drop, dtype=bool),
        camera_to_bin(pitch_deg), camera_to_bin(yaw_deg),
    ]
    cols = np.broadcast_arrays(*[np.asarray(c) for c in cols])
    return np.stack(cols, axis=-1).astype(np.int16)


def null_action() -> np.ndarray:
    a = np.zeros(N_GROUPS, dtype=np.int16)
    a[PITCH] = a[YAW] = CAMERA_NULL_BIN
    return a


def validate_actions(actions: np.ndarray) -> str | None:
    """Return a description of the first problem with an actions array, or None if it is valid."""
    if actions.ndim != 2 or actions.shape[1] != N_GROUPS:
        return f"actions must have shape [T, {N_GROUPS}], got {list(actions.shape)}"
    for g, n in enumerate(N_CLASSES):
        col = actions[:, g]
        if col.size and (col.min() < 0 or col.max() >= n):
            return f"group {GROUPS[g]} has class ids outside 0..{n - 1}"
    return None


# --- Action tokens for the autoregressive world model ---------------------------------------
# Each group owns a disjoint block of ids, so one frame's action is 9 tokens, each from
# its own sub-vocabulary, framed by aBOS / aEOS (MineWorld's layout with our 9 groups).
TOKEN_OFFSETS: tuple[int, ...] = tuple(int(x) for x in np.cumsum((0,) + N_CLASSES[:-1]))
N_ACTION_CLASS_TOKENS = int(sum(N_CLASSES))   # 39
ACTION_BOS = N_ACTION_CLASS_TOKENS            # 39
ACTION_EOS = N_ACTION_CLASS_TOKENS + 1        # 40
ACTION_VOCAB_SIZE = N_ACTION_CLASS_TOKENS + 2  # 41
TOKENS_PER_ACTION = N_GROUPS + 2              # aBOS, 9 groups, aEOS


def actions_to_tokens(actions, offset: int = 0) -> np.ndarray:
    """[..., 9] class ids -> [..., 11] token ids: aBOS, one id per group, aEOS (all + offset)."""
    a = np.asarray(actions, dtype=np.int64)
    ids = a + np.asarray(TOKEN_OFFSETS, dtype=np.int64)
    bos = np.full(a.shape[:-1] + (1,), ACTION_BOS, dtype=np.int64)
    eos = np.full(a.shape[:-1] + (1,), ACTION_EOS, dtype=np.int64)
    return np.concatenate([bos, ids, eos], axis=-1) + offset


def tokens_to_actions(tokens, offset: int = 0) -> np.ndarray:
    """Inverse of actions_to_tokens; raises ValueError if a token is not of its group."""
    t = np.asarray(tokens, dtype=np.int64) - offset
    if t.shape[-1] != TOKENS_PER_ACTION or (t[..., 0] != ACTION_BOS).any() or (t[..., -1] != ACTION_EOS).any():
        raise ValueError("action tokens must be [..., aBOS, 9 group tokens, aEOS]")
    a = t[..., 1:-1] - np.asarray(TOKEN_OFFSETS, dtype=np.int64)
    if (a < 0).any() or (a >= np.asarray(N_CLASSES)).any():
        raise ValueError("an action token lies outside its group's block")
    return a.astype(np.int16)

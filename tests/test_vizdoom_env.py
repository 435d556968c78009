"""Signs and timing of the ViZDoom mapping, checked against the engine's own state and pixels."""
import math

import numpy as np
import pytest

from rlir.envs.vizdoom_env import DoomConfig, DoomEnv

NOKEYS = {}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = DoomEnv(DoomConfig(), (120, 160), tmp_path_factory.mktemp("doom"))
    e.reset("map01", seed=1)
    for _ in range(4):                   # turning is ignored for a few tics after spawning
        e.step(NOKEYS, 0.0, 0.0)
    yield e
    e.close()


def shift_x(a, b, rows=70, margin=20):
    """Horizontal shift (pixels) that best maps frame a onto frame b, above the weapon sprite."""
    a, b = a[:rows].astype(np.float32), b[:rows].astype(np.float32)
    err = {k: np.abs(b[:, margin:-margin] - np.roll(a, k, axis=1)[:, margin:-margin]).mean()
           for k in range(-margin, margin + 1)}
    return min(err, key=err.get)


def test_yaw_sign_and_timing(env):
    f0, v0 = env._observe()
    f1, v1, cam = env.step(NOKEYS, 0.0, 6.0)      # VPT: positive yaw = turn right
    assert cam[1] == pytest.approx(6.0, abs=0.1) and cam[0] == pytest.approx(0.0, abs=1e-3)
    assert ((v0["ANGLE"] - v1["ANGLE"]) % 360) == pytest.approx(6.0, abs=0.1)   # Doom's angle decreases
    assert shift_x(f0, f1) <= -5                   # the scene slides left in the very next frame
    f2, _, cam2 = env.step(NOKEYS, 0.0, 0.0)
    assert cam2[1] == pytest.approx(0.0, abs=1e-3)
    assert shift_x(f1, f2) == 0               # and nothing lags into the frame after
    _, _, cam3 = env.step(NOKEYS, 0.0, -3.0)
    assert cam3[1] == pytest.approx(-3.0, abs=0.1)


def test_pitch_sign(env):
    _, v0 = env._observe()
    _, v1, cam = env.step(NOKEYS, 4.0, 0.0)       # VPT: positive pitch = look down
    assert cam[0] == pytest.approx(4.0, abs=0.1) and v1["PITCH"] > v0["PITCH"]
    _, _, cam = env.step(NOKEYS, -4.0, 0.0)
    assert cam[0] == pytest.approx(-4.0, abs=0.1)


def test_pitch_clamp_is_recorded_as_applied(env):
    cams = [env.step(NOKEYS, -9.0, 0.0)[2][0] for _ in range(8)]   # look up past the clamp
    assert cams[0] == pytest.approx(-9.0, abs=0.1)
    assert abs(cams[-1]) < 0.1                                       # clamped: nothing applied, nothing recorded
    for _ in range(8):
        env.step(NOKEYS, 4.5, 0.0)


def test_forward_moves_along_facing_and_jump_rises(env):
    _, v0 = env._observe()
    moved = None
    for _ in range(3):
        _, v, _ = env.step({"forward": True}, 0.0, 0.0)
    dx, dy = v["POSITION_X"] - v0["POSITION_X"], v["POSITION_Y"] - v0["POSITION_Y"]
    if math.hypot(dx, dy) > 1:                      # not against a wall
        ang = math.radians(v0["ANGLE"])
        moved = (dx * math.cos(ang) + dy * math.sin(ang)) / math.hypot(dx, dy)
        assert moved > 0.9
    for _ in range(6):
        _, v, _ = env.step(NOKEYS, 0.0, 0.0)
    z0 = v["POSITION_Z"]
    _, v, _ = env.step({"jump": True}, 0.0, 0.0)
    assert v["POSITION_Z"] > z0 + 5                 # the jump shows in the same step

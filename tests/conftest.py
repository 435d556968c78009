import numpy as np
import pytest

from rlir.actions import N_CLASSES, N_GROUPS
from rlir.data.store import Episode


def make_episode(T: int = 20, hw=(12, 16), seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(T, *hw, 3), dtype=np.uint8)
    actions = np.stack([rng.integers(0, n, size=T) for n in N_CLASSES], axis=1).astype(np.int16)
    cam = rng.normal(0, 3, size=(T, 2)).astype(np.float32)
    assert actions.shape == (T, N_GROUPS)
    return Episode(frames, actions, cam)


@pytest.fixture
def episode():
    return make_episode()

"""bench/rlir_gain.py's pieces: clips spread over episodes, paired differences that are 0 against itself."""
import numpy as np

from bench.rlir_gain import action_table, scalar, spread_clips
from rlir.data.store import EpisodeStore
from tests.conftest import make_episode


def test_clips_are_spread_round_robin_over_episodes(tmp_path):
    s = EpisodeStore.create(tmp_path / "d", metadata={"resolution": [8, 8]})
    for i, T in enumerate((64, 16, 48)):
        s.add(f"e{i}", make_episode(T=T, hw=(8, 8), seed=i), split="test")
    w = spread_clips(s, 5)
    assert w == [("e0", 0), ("e1", 0), ("e2", 0), ("e0", 16), ("e2", 16)]
    assert len(spread_clips(s, 100)) == 4 + 1 + 3


def test_paired_difference_is_zero_against_itself_and_signed_otherwise():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 2, (20, 15, 9))
    true[..., 7:] = rng.integers(3, 8, (20, 15, 2))
    boots = rng.integers(0, 20, (200, 20))
    shown = (0, 1, 2, 4, 5, 6)
    same = action_table(true, true, shown, boots, base_pred=true)
    assert same["f1_macro_shown"]["mean"] == 1.0 and same["f1_macro_shown"]["minus_base"]["mean"] == 0.0
    worse = true.copy()
    worse[:, ::2, :7] = 0
    t = action_table(worse, true, shown, boots, base_pred=true)
    d = t["f1_macro_shown"]["minus_base"]
    assert d["mean"] < 0 and d["ci95"][1] < 0
    x = scalar(np.arange(10.0), np.arange(10.0) - 1, 0)
    assert x["minus_base"]["mean"] == 1.0 and x["minus_base"]["clips_higher"] == 10

"""The evaluation set (`fixed_clips`, which bench/rlir_gain.py's `spread_clips` reads): a capped set is spread
round-robin over episodes (the paired statistics: tests/test_paired.py)."""
from bench.rlir_gain import spread_clips
from rlir.data.sampler import fixed_clips
from rlir.data.store import EpisodeStore
from tests.conftest import make_episode


def test_clips_are_spread_round_robin_over_episodes(tmp_path):
    s = EpisodeStore.create(tmp_path / "d", metadata={"resolution": [8, 8]})
    for i, T in enumerate((64, 16, 48)):
        s.add(f"e{i}", make_episode(T=T, hw=(8, 8), seed=i), split="test")
    w = fixed_clips(s, 16, "test", max_clips=5)
    assert w == [("e0", 0), ("e1", 0), ("e2", 0), ("e0", 16), ("e2", 16)] == spread_clips(s, 5)
    assert len(spread_clips(s, 100)) == 4 + 1 + 3
    # uncapped: every window, episode by episode
    assert fixed_clips(s, 16, "test") == [("e0", 0), ("e0", 16), ("e0", 32), ("e0", 48), ("e1", 0),
                                          ("e2", 0), ("e2", 16), ("e2", 32)]

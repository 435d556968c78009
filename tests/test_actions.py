import numpy as np
import pytest

from rlir import actions as A


def test_bin_edges_match_vpt():
    np.testing.assert_allclose(A.camera_bin_edges(), [0.27, 1.05, 2.32, 4.36, 7.66], atol=0.01)


def test_bins_change_exactly_at_edges():
    for k, e in enumerate(A.camera_bin_edges()):
        assert A.camera_to_bin(e - 1e-6) == 5 + k and A.camera_to_bin(e + 1e-6) == 6 + k
        assert A.camera_to_bin(-e + 1e-6) == 5 - k and A.camera_to_bin(-e - 1e-6) == 4 - k


def test_quantiser_round_trip_and_clipping():
    bins = np.arange(11)
    np.testing.assert_array_equal(A.camera_to_bin(A.bin_to_camera(bins)), bins)
    assert A.bin_to_camera(5) == 0.0 and A.bin_to_camera(10) == pytest.approx(10.0)
    assert A.camera_to_bin(0.0) == A.CAMERA_NULL_BIN
    assert A.camera_to_bin(25.0) == 10 and A.camera_to_bin(-90.0) == 0
    # the centre of a bin lies between its edges, and degrees -> bin -> degrees stays in the bin
    x = np.linspace(-10, 10, 2001)
    np.testing.assert_array_equal(A.camera_to_bin(A.bin_to_camera(A.camera_to_bin(x))), A.camera_to_bin(x))


def test_pairs_and_buttons():
    a = A.buttons_to_actions(forward=[1, 0, 1, 0], back=[0, 1, 1, 0], left=[1, 0, 1, 0], right=[0, 1, 1, 0],
                             sprint=[1, 0, 1, 0], sneak=[0, 1, 1, 0], use=[1, 0, 0, 0], attack=[0, 1, 0, 0],
                             jump=[0, 0, 1, 0], drop=[0, 0, 0, 1], pitch_deg=[3.0, -3.0, 0, 0],
                             yaw_deg=[-12.0, 0.5, 0, 8.0])
    assert a.dtype == np.int16 and a.shape == (4, 9)
    assert a[:, 0].tolist() == [1, 2, 0, 0]   # both keys of a pair = null
    assert a[:, 1].tolist() == [1, 2, 0, 0]
    assert a[:, 2].tolist() == [1, 2, 0, 0]
    assert a[:, 3].tolist() == [1, 0, 0, 0] and a[:, 4].tolist() == [0, 1, 0, 0]
    assert a[:, 5].tolist() == [0, 0, 1, 0] and a[:, 6].tolist() == [0, 0, 0, 1]
    assert a[:, 7].tolist() == [8, 2, 5, 5]   # positive pitch = looking down = higher bin
    assert a[:, 8].tolist() == [0, 6, 5, 10]


def test_null_action_and_validation():
    n = A.null_action()
    assert n.tolist() == [0, 0, 0, 0, 0, 0, 0, 5, 5]
    assert A.validate_actions(n[None]) is None
    bad = n[None].copy()
    bad[0, 3] = 2
    assert "use" in A.validate_actions(bad)
    assert "shape" in A.validate_actions(np.zeros((3, 8), np.int16))


def test_action_tokens_disjoint_and_invertible():
    rng = np.random.default_rng(0)
    acts = np.stack([rng.integers(0, n, 50) for n in A.N_CLASSES], 1)
    tok = A.actions_to_tokens(acts, offset=1000)
    assert tok.shape == (50, A.TOKENS_PER_ACTION)
    assert (tok[:, 0] == 1000 + A.ACTION_BOS).all() and (tok[:, -1] == 1000 + A.ACTION_EOS).all()
    # each group owns its own block of ids
    for g in range(A.N_GROUPS):
        lo = 1000 + A.TOKEN_OFFSETS[g]
        assert ((tok[:, g + 1] >= lo) & (tok[:, g + 1] < lo + A.N_CLASSES[g])).all()
    assert tok.max() < 1000 + A.ACTION_VOCAB_SIZE
    np.testing.assert_array_equal(A.tokens_to_actions(tok, offset=1000), acts)
    wrong = tok.copy()
    wrong[0, 1] = 1000 + A.TOKEN_OFFSETS[1]   # a left_right token in the fore_back slot
    with pytest.raises(ValueError):
        A.tokens_to_actions(wrong, offset=1000)

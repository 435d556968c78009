import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from rlir.actions import GROUPS, N_CLASSES
from rlir.eval.action_metrics import action_metrics, confusions, prf_from_confusion


def random_actions(n, T, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, (n, T)) for k in N_CLASSES], -1)


def test_hand_computed_binary_group():
    # attack: truth 1 1 0 0, prediction 1 0 0 1 -> per class P = R = F1 = 0.5; macro 0.5, micro 0.5
    true = np.zeros((1, 4, 9), np.int64)
    pred = np.zeros((1, 4, 9), np.int64)
    true[..., 7:] = pred[..., 7:] = 5
    true[0, :, 4] = [1, 1, 0, 0]
    pred[0, :, 4] = [1, 0, 0, 1]
    m = action_metrics(pred, true, n_boot=0)
    assert m["per_group"]["attack"]["f1_macro"] == pytest.approx(0.5)
    assert m["per_group"]["attack"]["f1_micro"] == pytest.approx(0.5)
    # the other six groups are all-null in both: one label present, F1 = 1 (sklearn's rule)
    assert m["per_group"]["jump"]["f1_macro"] == 1.0
    assert m["metrics"]["f1_macro"] == pytest.approx((6 + 0.5) / 7)
    assert m["metrics"]["camera_yaw_bin_error"] == 0.0 and m["metrics"]["camera_yaw_accuracy"] == 1.0


def test_camera_bin_error_by_hand():
    true = np.zeros((1, 4, 9), np.int64)
    pred = np.zeros((1, 4, 9), np.int64)
    true[0, :, 8] = [5, 5, 7, 0]
    pred[0, :, 8] = [5, 6, 4, 0]
    true[0, :, 7] = pred[0, :, 7] = 5
    m = action_metrics(pred, true, n_boot=0)["metrics"]
    assert m["camera_yaw_bin_error"] == pytest.approx((0 + 1 + 3 + 0) / 4)
    assert m["camera_yaw_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    true = random_actions(7, 15, seed)
    pred = np.where(np.random.default_rng(seed + 10).random(true.shape) < 0.6, true, random_actions(7, 15, seed + 5))
    pred[..., 5] = 0                      # a group the model never predicts positive: zero_division path
    m = action_metrics(pred, true, n_boot=0)
    for g in range(7):
        t, p = true[..., g].ravel(), pred[..., g].ravel()
        for avg in ("macro", "micro"):
            P, R, F, _ = precision_recall_fscore_support(t, p, average=avg, zero_division=0)
            ours = m["per_group"][GROUPS[g]]
            assert ours[f"precision_{avg}"] == pytest.approx(P)
            assert ours[f"recall_{avg}"] == pytest.approx(R)
            assert ours[f"f1_{avg}"] == pytest.approx(F)


def test_bootstrap_ci_brackets_estimate_and_excluded_groups():
    true = random_actions(40, 15, 3)
    pred = np.where(np.random.default_rng(4).random(true.shape) < 0.7, true, random_actions(40, 15, 9))
    true[..., 3] = pred[..., 3] = 0      # `use` never shown
    m = action_metrics(pred, true, n_boot=200, exclude_groups=("use",))
    lo, hi = m["ci95"]["f1_macro"]
    assert lo < m["metrics"]["f1_macro"] < hi and hi - lo < 0.2
    assert m["metrics"]["f1_macro_shown"] < m["metrics"]["f1_macro"]   # the trivial 1.0 of `use` is gone
    assert m["per_group"]["use"]["f1_macro"] == 1.0


def test_confusion_shapes_and_errors():
    c = confusions(random_actions(3, 5, 0), random_actions(3, 5, 1))
    assert [x.shape for x in c] == [(3, k, k) for k in N_CLASSES]
    assert all(x.sum() == 15 for x in c)
    with pytest.raises(ValueError):
        confusions(np.zeros((2, 5, 9)), np.zeros((2, 4, 9)))
    assert prf_from_confusion(np.zeros((2, 2)))["f1_macro"] == 0.0

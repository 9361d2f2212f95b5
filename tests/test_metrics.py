import math

import numpy as np
import pytest
from sklearn.metrics import log_loss

from ichdet.evaluation.metrics import (
    evaluate_arrays,
    from_long,
    operating_thresholds,
    per_label_auc,
    prior_log_loss,
    sensitivity_specificity,
    threshold_for_sensitivity,
    to_long,
    weighted_log_loss,
)
from ichdet.labels import LABELS


def test_weighted_log_loss_hand_computed():
    y = np.array([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=float)
    p = np.full((2, 6), 0.5)
    # every label contributes ln 2 whatever the truth: the weighted mean is ln 2
    assert weighted_log_loss(y, p) == pytest.approx(math.log(2))
    p2 = p.copy()
    p2[0, 5] = 0.9  # row 0: 'any' (weight 2) now -ln 0.9 instead of ln 2
    row0 = (5 * math.log(2) + 2 * -math.log(0.9)) / 7
    row1 = (6 * math.log(2) + math.log(2)) / 7
    assert weighted_log_loss(y, p2) == pytest.approx((row0 + row1) / 2)


def test_weighted_log_loss_equals_weighted_sklearn_log_losses():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.2).astype(float)
    y[:, 5] = y[:, :5].max(axis=1)
    p = np.clip(rng.random((200, 6)), 0.01, 0.99)
    w = np.array([1, 1, 1, 1, 1, 2.0])
    expected = sum(w[i] * log_loss(y[:, i], p[:, i]) for i in range(6)) / w.sum()
    assert weighted_log_loss(y, p) == pytest.approx(expected, rel=1e-9)


def test_prior_baseline_is_the_weighted_entropy():
    y = np.zeros((10, 6))
    y[:2, 4] = y[:2, 5] = 1
    entropy = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert prior_log_loss(y) == pytest.approx((entropy + 2 * entropy) / 7, rel=1e-6)


def test_auc_sensitivity_and_thresholds():
    y = np.zeros((6, 6))
    y[[0, 1, 2], 5] = 1
    p = np.zeros((6, 6))
    p[:, 5] = [0.9, 0.8, 0.3, 0.4, 0.2, 0.1]
    auc = per_label_auc(y, p)
    assert auc["any"] == pytest.approx(8 / 9) and math.isnan(auc["epidural"])
    sens, spec = sensitivity_specificity(y, p, 0.5)["any"]
    assert (sens, spec) == (pytest.approx(2 / 3), 1.0)
    assert threshold_for_sensitivity(y[:, 5], p[:, 5], target=1.0) == pytest.approx(0.3)
    assert threshold_for_sensitivity(y[:, 5], p[:, 5], target=0.6) == pytest.approx(0.8)
    op = operating_thresholds(y, p, target=1.0)["any"]
    assert op == {
        "threshold": pytest.approx(0.3),
        "sensitivity": 1.0,
        "specificity": pytest.approx(2 / 3),
    }
    report = evaluate_arrays(y, p)
    assert report["images"] == 6 and report["prevalence"]["any"] == 0.5


def test_long_form_round_trip():
    probs = np.arange(12, dtype=float).reshape(2, 6) / 12
    frame = to_long(["ID_a", "ID_b"], probs)
    assert frame["ID"].tolist()[:2] == ["ID_a_epidural", "ID_a_intraparenchymal"]
    assert len(frame) == 12
    wide = from_long(frame)
    assert list(wide.columns) == list(LABELS)
    np.testing.assert_allclose(wide.loc[["ID_a", "ID_b"]].to_numpy(), probs)

"""Tests of the calibration and confidence figures of dsn.evaluation (hand-computed values, known cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsn import evaluation


def test_ece_hand_computed() -> None:
    # 4 epochs, 2 classes, 15 bins. Confidences 0.9, 0.9 (bin 13: (12/15, 13/15]... 0.9 -> ceil(13.5)-1 = 13),
    # 0.6 (ceil(9)-1 = 8) and 0.55 (ceil(8.25)-1 = 8).
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])  # right, wrong, right, right
    # bin 13: confidence 0.9, accuracy 0.5 -> |gap| 0.4, weight 2/4
    # bin 8: confidence 0.575, accuracy 1.0 -> |gap| 0.425, weight 2/4
    expected = 0.5 * 0.4 + 0.5 * 0.425
    assert evaluation.expected_calibration_error(proba, y, n_bins=15) == pytest.approx(expected)
    # unscored epochs are left out
    assert evaluation.expected_calibration_error(np.vstack([proba, [[1.0, 0.0]]]), np.r_[y, -1]) == pytest.approx(expected)
    b = evaluation.reliability_bins(proba, y)
    assert b["count"].sum() == 4 and b["count"][13] == 2 and b["count"][8] == 2
    assert math.isnan(evaluation.expected_calibration_error(proba[:0], y[:0]))


def test_brier_hand_computed() -> None:
    proba = np.array([[0.9, 0.1], [0.1, 0.9]])
    y = np.array([0, 0])
    assert evaluation.brier_score(proba, y) == pytest.approx(((0.1**2 + 0.1**2) + (0.9**2 + 0.9**2)) / 2)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_scaling(true_t: float) -> None:
    rng = np.random.default_rng(0)
    n, c = 4000, 5
    z = rng.normal(size=(n, c)) * 2.0
    p_true = np.exp(evaluation._log_softmax(z))
    y = np.array([rng.choice(c, p=row) for row in p_true])  # labels drawn from softmax(z): T = 1 is right for z
    t_hat = evaluation.fit_temperature(z * true_t, y)  # logits scaled by true_t need T = true_t
    assert t_hat == pytest.approx(true_t, rel=0.08)
    # log-probabilities give the same temperature as logits
    assert evaluation.fit_temperature(np.log(p_true) * true_t, y) == pytest.approx(t_hat, rel=1e-4)
    # recalibrating lowers the ECE of the mis-scaled probabilities and keeps the argmax
    raw = np.exp(evaluation._log_softmax(z * true_t))
    cal = evaluation.apply_temperature(raw, t_hat)
    assert evaluation.expected_calibration_error(cal, y) < evaluation.expected_calibration_error(raw, y)
    np.testing.assert_array_equal(cal.argmax(1), raw.argmax(1))
    np.testing.assert_allclose(cal.sum(1), 1.0, atol=1e-5)


def test_confidence_and_entropy() -> None:
    top, ent = evaluation.confidence(np.array([[1.0, 0, 0, 0, 0], [0.2] * 5, [0.5, 0.5, 0, 0, 0]]))
    np.testing.assert_allclose(top, [1.0, 0.2, 0.5])
    np.testing.assert_allclose(ent, [0.0, 1.0, math.log(2) / math.log(5)], atol=1e-12)


def test_pooled_calibration_uses_each_folds_temperature() -> None:
    from types import SimpleNamespace

    from dsn.workflows.calibration import pooled_calibration, split_figures

    rng = np.random.default_rng(1)
    folds, cal_parts, raw_parts, ys = [], [], [], []
    for t in (0.5, 3.0):
        z = rng.normal(size=(500, 5)) * 2
        y = rng.integers(0, 5, 500)
        raw = np.exp(evaluation._log_softmax(z / 0.7))
        folds.append({"predictions": {"finetune": [SimpleNamespace(y_true=y, proba=raw)]},
                      "metrics": {"finetune": {"calibration/temperature": t}}})
        raw_parts.append(raw)
        cal_parts.append(evaluation.apply_temperature(raw, t))
        ys.append(y)
    out = pooled_calibration(folds, "finetune")
    y = np.concatenate(ys)
    assert out["ece_raw"] == pytest.approx(evaluation.expected_calibration_error(np.concatenate(raw_parts), y))
    assert out["ece"] == pytest.approx(evaluation.expected_calibration_error(np.concatenate(cal_parts), y))
    assert out["brier"] == pytest.approx(evaluation.brier_score(np.concatenate(cal_parts), y))
    # confident vs flagged accuracy: the split at the threshold of the calibrated top-class probability
    figs = split_figures(np.concatenate(cal_parts), y, 1.0, threshold=0.5)
    assert out["acc_flagged"] == pytest.approx(figs["acc_flagged"])
    top = np.concatenate(cal_parts).max(1)
    assert out["flagged_frac"] == pytest.approx((top < 0.5).mean())
    assert pooled_calibration(folds, "pretrain") == {}

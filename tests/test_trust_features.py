"""Tests of dsn.trust.features: per-stage Gaussians with a tied covariance (Mahalanobis feature shift)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsn.errors import DsnError
from dsn.trust import check_features, combine, fit_feature_reference
from dsn.trust.features import epoch_distances, fit_class_gaussians, night_feature_score, unpack

D = 60  # feature dimension
K = 5


def _model(seed: int = 0):
    """Class means (spread apart) and a random correlated covariance factor."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3.0, (K, D))
    factor = rng.normal(0, 1.0, (D, D)) / np.sqrt(D)
    return means, factor


def _draw(means, factor, n, rng, shift=None, scale=1.0):
    y = rng.integers(0, K, n)
    x = means[y] + scale * rng.standard_normal((n, D)) @ factor.T
    if shift is not None:
        x = x + shift
    return x, y


def _reference(seed: int = 0, **kw):
    means, factor = _model(seed)
    rng = np.random.default_rng(seed + 1)
    x, y = _draw(means, factor, 3000, rng)
    val = [_draw(means, factor, 400, rng)[0] for _ in range(3)]
    return fit_feature_reference(x, y, val, n_components=16, **kw), means, factor, rng


def test_same_gaussians_are_below_the_threshold():
    ref, means, factor, rng = _reference()
    for _ in range(5):
        x, _ = _draw(means, factor, 500, rng)
        res = check_features(ref, x)
        assert res.level == "ok", res.reason
        assert 0.7 < res.value < 1.3  # about 1 on data like the training epochs
    assert combine(check_features(ref, _draw(means, factor, 500, rng)[0])).verdict == "trusted"


@pytest.mark.parametrize("kind", ["offset", "scale", "out_of_subspace"])
def test_shifted_features_are_above_the_threshold(kind):
    ref, means, factor, rng = _reference()
    if kind == "offset":  # every epoch moved along the data's own directions
        x, _ = _draw(means, factor, 500, rng, shift=4.0 * factor[:, 0] / np.linalg.norm(factor[:, 0]) * 3)
    elif kind == "scale":  # an amplifier gain: features stretched
        x, _ = _draw(means * 2.5, factor, 500, rng, scale=2.5)
    else:  # new energy in directions the training epochs never used
        x, _ = _draw(means, factor, 500, rng)
        x = x + rng.standard_normal(x.shape) * 1.5
    res = check_features(ref, x)
    assert res.level in ("check", "do_not_use"), res.reason
    assert res.value > ref["threshold"] and res.beyond > 0.5
    v = combine(res)
    assert v.verdict != "trusted" and v.rules == ["feature_shift"] and "feature_shift" in v.reasons[0]


def test_far_shift_is_do_not_use_and_threshold_follows_validation():
    ref, means, factor, rng = _reference()
    x, _ = _draw(means * 10, factor, 300, rng, scale=10)
    assert check_features(ref, x).level == "do_not_use"
    assert ref["threshold"] == pytest.approx(np.quantile(ref["val_scores"], 0.95) * 1.5)
    ref2, *_ = _reference(floor=5.0)
    assert ref2["threshold"] == 5.0


def test_reference_is_json_ready_and_reads_back():
    ref, means, factor, rng = _reference()
    back = json.loads(json.dumps(ref))
    x, _ = _draw(means, factor, 200, rng)
    assert check_features(back, x).value == pytest.approx(check_features(ref, x).value)
    assert back["components"]["shape"] == [16, D] and back["precision"]["shape"] == [16, 16]
    assert 0 <= back["shrinkage"] <= 1
    assert isinstance(back["components"]["float32_b64"], str)  # packed: a plain string in the spec
    # compact: the packed arrays take about 4/3 bytes per float32 (base64), under half of their JSON numbers
    assert len(json.dumps(back["components"])) < 0.5 * len(json.dumps(unpack(back["components"]).tolist()))
    # a reference stored as nested lists (before packing) reads back the same
    listed = {**ref, **{k: unpack(ref[k]).tolist() for k in ("mean", "components", "precision")}}
    assert check_features(listed, x).value == pytest.approx(check_features(ref, x).value, rel=1e-6)


def test_predicted_class_distance_is_at_least_the_nearest():
    means, factor = _model()
    rng = np.random.default_rng(3)
    x, y = _draw(means, factor, 2000, rng)
    g = fit_class_gaussians(x, y, n_components=16)
    xt, yt = _draw(means, factor, 300, rng)
    nearest = epoch_distances(g, xt)
    wrong = epoch_distances(g, xt, (yt + 1) % K)
    assert np.all(epoch_distances(g, xt, yt) >= nearest - 1e-9)
    assert np.median(wrong) > 1.5 * np.median(nearest)  # the wrong class's mean is far
    # a class with too few epochs has no mean and is skipped
    y2 = np.where(y == 2, -1, y)
    y2[np.flatnonzero(y == 2)[:3]] = 2  # 3 epochs of N2: fewer than MIN_CLASS_EPOCHS
    g2 = fit_class_gaussians(x, y2, n_components=16)
    assert g2["class_means"][2] is None
    assert night_feature_score(g2, xt, summary="trimmed") > 0


def test_bad_inputs_raise_one_line_errors():
    ref, means, factor, rng = _reference()
    with pytest.raises(DsnError, match=r"shape \(n_epochs, 60\)"):
        check_features(ref, np.zeros((10, 7)))
    with pytest.raises(DsnError, match="NaN"):
        check_features(ref, np.full((3, D), np.nan))
    with pytest.raises(DsnError, match="labels"):
        fit_class_gaussians(np.zeros((10, 4)), np.zeros(3))
    with pytest.raises(DsnError, match="val_nights"):
        fit_feature_reference(np.zeros((10, 4)), np.zeros(10), [])
    with pytest.raises(DsnError, match="fit_feature_reference"):
        check_features({"threshold": 1.0}, np.zeros((3, D)))

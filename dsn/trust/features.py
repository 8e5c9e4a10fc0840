"""Feature-level shift: are the night's network features where the training nights' features were?

A model applied to another site's recordings can write an ordinary-looking hypnogram from features it has
never seen. This detector looks at the epoch encoder's output (the CNN features that the sequence model
reads) and measures how far each epoch's feature vector lies from the training epochs of its nearest stage,
as the Mahalanobis detector of Lee, Lee, Lee & Shin ("A simple unified framework for detecting
out-of-distribution samples and adversarial attacks", NeurIPS 2018): per-class means and **one shared
(tied) covariance**, fitted on labelled training epochs.

The CNN's features have thousands of dimensions (3072 for the paper's network at 100 Hz) and a model spec
must stay small, so the Gaussians live in a probabilistic-PCA model of the features (Tipping & Bishop 1999):

* the features are centred and projected on their first ``n_components`` principal directions (fitted on
  the training epochs); in that subspace each class ``k`` has its mean ``mu_k`` and all classes share the
  covariance ``S``, shrunk towards a scaled identity (``(1 - a) S + a tr(S)/d I``; ``a`` by the
  Ledoit-Wolf formula unless given), so a few hundred epochs give a well-conditioned inverse;
* what the projection leaves out (the residual) is scored by its energy over the training epochs' mean
  residual energy: a night whose features move *out of* the subspace (new artefacts, another montage) is
  seen too, not only one that moves inside it.

An epoch's distance is ``sqrt((min_k m_k^2 / d + r^2 / r0^2) / 2)`` with ``m_k`` the Mahalanobis distance to
class ``k`` in the ``d``-dimensional subspace, ``r`` the residual norm and ``r0^2`` its training mean: each
part is about 1 on training epochs, so the distance is about 1 there. (``classes="predicted"`` takes the
distance to the epoch's predicted class instead of the nearest one.) A night's score is a robust summary of
its epochs' distances (``median`` by default, or a 10 % ``trimmed`` mean): a few artefacts do not move it,
a shifted night does.

The threshold (:func:`fit_feature_reference`) comes from the scores of the validation nights, as
:mod:`dsn.trust.shift`'s: their ``quantile`` (0.95) times ``margin`` (1.5), at least ``floor``; a night is
``check`` above it and ``do_not_use`` above ``severe`` (2) times it. The reference is JSON-ready (lists and
floats; the large arrays, about 100 000 numbers for 3072 features and 32 components, packed as base64 float32
strings: about 0.5 MB of JSON, :func:`pack`) to live in a model spec's ``calibration``; :func:`check_features` gives a :class:`FeatureShiftResult`, a finding that
:func:`dsn.trust.verdict.combine` accepts.

Pure numpy.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dsn.data.labels import N_CLASSES
from dsn.errors import DsnError

__all__ = ["FeatureShiftResult", "check_features", "epoch_distances", "fit_class_gaussians", "fit_feature_reference",
           "night_feature_score"]

N_COMPONENTS = 32
QUANTILE = 0.95
MARGIN = 1.5
FLOOR = 0.0
SEVERE = 2.0
SUMMARIES = ("median", "trimmed")
CLASS_MODES = ("nearest", "predicted")
#: Fewest labelled epochs of a class for its mean to be kept (a class with fewer is left out of the minimum).
MIN_CLASS_EPOCHS = 5


@dataclass(frozen=True)
class FeatureShiftResult:
    """The feature-level shift of one night.

    Attributes
    ----------
    name : str
        ``"feature_shift"`` (the detector's name in a verdict).
    value : float
        The night's score (about 1 on training nights; see the module docstring).
    threshold : float
    level : str
        ``"ok"``, ``"check"`` (score > threshold) or ``"do_not_use"`` (score > ``severe`` x threshold).
    reason : str
        One line with the score, the threshold and the share of epochs beyond it.
    beyond : float
        Share of the night's epochs whose own distance exceeds the threshold.
    """

    name: str
    value: float
    threshold: float
    level: str
    reason: str
    beyond: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _features(x: Any, what: str, n_features: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or (n_features is not None and a.shape[1] != n_features):
        want = f"(n_epochs, {n_features})" if n_features is not None else "(n_epochs, n_features)"
        raise DsnError(f"{what}: expected features of shape {want}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DsnError(f"{what}: features hold NaN or infinite values; score the night again")
    return a


def _ledoit_wolf(z: np.ndarray, cov: np.ndarray) -> float:
    """The Ledoit-Wolf shrinkage intensity of ``cov`` (the covariance of the centred rows ``z``) towards
    ``tr(cov)/d I``."""
    n, d = z.shape
    mu = np.trace(cov) / d
    delta = np.sum((cov - mu * np.eye(d)) ** 2)
    if delta <= 0:
        return 0.0
    zz = z * z
    beta = (np.sum(zz.T @ zz) / n - np.sum(cov**2)) / n  # sum over samples of ||z z^T - cov||^2 / n^2
    return float(np.clip(beta / delta, 0.0, 1.0))


def _principal_directions(xc: np.ndarray, d: int, oversample: int = 10, power: int = 4) -> np.ndarray:
    """The first ``d`` principal directions (rows) of the centred rows ``xc``: an exact SVD when small, else the
    randomized range finder with power iterations (Halko, Martinsson & Tropp 2011; a fixed seed), which
    costs O(n D d) instead of O(n D min(n, D)) for thousands of features."""
    n, dim = xc.shape
    k = d + oversample
    if min(n, dim) <= 2 * k:
        return np.linalg.svd(xc, full_matrices=False)[2][:d]
    q = xc @ np.random.default_rng(0).standard_normal((dim, k))
    for _ in range(power):
        q = xc @ _orthonormal(xc.T @ _orthonormal(q))
    return np.linalg.svd(_orthonormal(q).T @ xc, full_matrices=False)[2][:d]


def _orthonormal(q: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``q``'s (tall, thin): Cholesky QR twice through the small Gram matrix
    (measured much faster than LAPACK's QR on a loaded 2-core machine)."""
    for _ in range(2):
        g = q.T @ q
        g += 1e-12 * np.trace(g) / len(g) * np.eye(len(g))
        q = np.linalg.solve(np.linalg.cholesky(g), q.T).T
    return q


def fit_class_gaussians(features: Any, labels: Any, n_components: int = N_COMPONENTS,
                        shrinkage: float | None = None, n_classes: int = N_CLASSES) -> dict[str, Any]:
    """Class means and one tied, shrunk covariance of labelled epoch features, in a PCA subspace.

    Parameters
    ----------
    features : array-like, shape (n_epochs, n_features)
        Epoch-encoder features of labelled training epochs.
    labels : array-like, shape (n_epochs,)
        Their stages (0 .. n_classes-1; negative = unscored, left out).
    n_components : int, default 32
        Dimension of the subspace (at most ``n_features`` and the number of epochs minus one).
    shrinkage : float in [0, 1], optional
        Weight of the scaled identity in the tied covariance (default: Ledoit-Wolf).
    n_classes : int, default 5

    Returns
    -------
    dict
        JSON-ready: ``mean``, ``components`` (d x n_features), ``class_means`` (one list per class, None for a
        class with fewer than :data:`MIN_CLASS_EPOCHS` epochs), ``precision`` (d x d), ``residual_scale``,
        ``shrinkage``, ``n_epochs`` (per class).
    """
    x = _features(features, "features")
    y = np.asarray(labels).astype(np.int64).ravel()
    if y.shape != (len(x),):
        raise DsnError(f"labels: expected one stage per feature row ({len(x)}), got shape {np.shape(labels)}")
    keep = (y >= 0) & (y < n_classes)
    x, y = x[keep], y[keep]
    counts = np.bincount(y, minlength=n_classes)
    if (counts >= MIN_CLASS_EPOCHS).sum() < 1 or len(x) < 3:
        raise DsnError(f"features: {len(x)} labelled epochs ({counts.tolist()} per stage); fit the class Gaussians "
                       f"on the training nights' epochs (at least {MIN_CLASS_EPOCHS} of one stage)")
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise DsnError(f"shrinkage={shrinkage}: must be in [0, 1] (or None for Ledoit-Wolf)")
    mean = x.mean(axis=0)
    xc = x - mean
    d = int(max(1, min(n_components, x.shape[1], len(x) - 1)))
    comps = _principal_directions(xc, d)
    z = xc @ comps.T
    means = np.full((n_classes, d), np.nan)
    for k in range(n_classes):
        if counts[k] >= MIN_CLASS_EPOCHS:
            means[k] = z[y == k].mean(axis=0)
    known = ~np.isnan(means[:, 0])
    zr = z - np.where(known[y][:, None], means[np.where(known[y], y, 0)], z.mean(axis=0))
    cov = zr.T @ zr / len(zr)
    a = _ledoit_wolf(zr, cov) if shrinkage is None else float(shrinkage)
    cov = (1 - a) * cov + a * np.trace(cov) / d * np.eye(d)
    resid = np.sum(xc**2, axis=1) - np.sum(z**2, axis=1)
    r0 = float(max(np.mean(resid), 1e-12 * max(float(np.mean(np.sum(xc**2, axis=1))), 1e-30)))
    return {"mean": pack(mean), "components": pack(comps),
            "class_means": [m.tolist() if ok else None for m, ok in zip(means, known)],
            "precision": pack(np.linalg.inv(cov)), "residual_scale": r0, "shrinkage": a,
            "n_epochs": counts.tolist()}


def pack(a: np.ndarray) -> dict[str, Any]:
    """``a`` as float32 bytes in base64 with its shape: JSON-ready, a quarter of the size of JSON numbers, and a
    plain ``str`` (``torch.load(weights_only=True)`` reads it). :func:`unpack` reverses it."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"float32_b64": base64.b64encode(a.tobytes()).decode("ascii"), "shape": list(a.shape)}


def unpack(v: Any) -> np.ndarray:
    """A :func:`pack`'d array (or nested lists, as references stored before packing) as float64."""
    if isinstance(v, Mapping) and "float32_b64" in v:
        raw = np.frombuffer(base64.b64decode(v["float32_b64"]), dtype="<f4")
        return raw.reshape([int(n) for n in v["shape"]]).astype(np.float64)
    return np.asarray(v, dtype=np.float64)


def _arrays(gauss: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    try:
        mean, comps = unpack(gauss["mean"]), np.atleast_2d(unpack(gauss["components"]))
        means = np.array([np.nan * np.ones(len(comps)) if m is None else m for m in gauss["class_means"]], float)
        prec, r0 = unpack(gauss["precision"]), float(gauss["residual_scale"])
    except (KeyError, TypeError, ValueError) as e:
        raise DsnError(f"feature reference: missing or bad entry {e}; build it with "
                       "dsn.trust.features.fit_feature_reference") from None
    return mean, comps, means, prec, r0


def epoch_distances(gauss: Mapping[str, Any], features: Any, predicted: Any = None) -> np.ndarray:
    """Each epoch's distance from the training epochs (about 1 on them; see the module docstring).

    Parameters
    ----------
    gauss : mapping
        :func:`fit_class_gaussians`'s result (or a :func:`fit_feature_reference` reference).
    features : array-like, shape (n_epochs, n_features)
    predicted : array-like of int, shape (n_epochs,), optional
        The predicted stage of each epoch: distance to that class instead of the nearest one (an epoch
        predicted as a class without a mean falls back to the nearest).

    Returns
    -------
    ndarray, shape (n_epochs,)
    """
    mean, comps, means, prec, r0 = _arrays(gauss)
    x = _features(features, "features", len(mean)) - mean
    d = len(comps)
    z = x @ comps.T
    known = ~np.isnan(means[:, 0])
    diff = z[:, None, :] - means[None, known, :]  # (n, K_known, d)
    m2 = np.einsum("nkd,de,nke->nk", diff, prec, diff)
    if predicted is None:
        m2_min = m2.min(axis=1)
    else:
        p = np.asarray(predicted).astype(np.int64).ravel()
        idx = np.full(len(known), -1)
        idx[known] = np.arange(known.sum())
        col = np.where((p >= 0) & (p < len(known)), idx[np.clip(p, 0, len(known) - 1)], -1)
        m2_min = np.where(col >= 0, m2[np.arange(len(x)), np.maximum(col, 0)], m2.min(axis=1))
    resid = np.maximum(np.sum(x**2, axis=1) - np.sum(z**2, axis=1), 0.0)
    return np.sqrt((m2_min / d + resid / r0) / 2.0)


def _summary(dist: np.ndarray, how: str) -> float:
    if how not in SUMMARIES:
        raise DsnError(f"summary={how!r}: the night's score is one of {list(SUMMARIES)}")
    if not len(dist):
        raise DsnError("features: a night with no epoch has no feature score; leave it out")
    if how == "median":
        return float(np.median(dist))
    lo, hi = np.quantile(dist, [0.1, 0.9])
    return float(dist[(dist >= lo) & (dist <= hi)].mean())


def night_feature_score(gauss: Mapping[str, Any], features: Any, predicted: Any = None,
                        summary: str = "median") -> float:
    """A night's score: ``summary`` (``median`` or 10 % ``trimmed`` mean) of :func:`epoch_distances`."""
    return _summary(epoch_distances(gauss, features, predicted), summary)


def fit_feature_reference(train_features: Any, train_labels: Any, val_nights: Sequence[Any],
                          val_predicted: Sequence[Any] | None = None, n_components: int = N_COMPONENTS,
                          shrinkage: float | None = None, classes: str = "nearest", summary: str = "median",
                          quantile: float = QUANTILE, margin: float = MARGIN, floor: float = FLOOR,
                          severe: float = SEVERE) -> dict[str, Any]:
    """What :func:`check_features` needs: class Gaussians of training epochs, a threshold from validation nights.

    Parameters
    ----------
    train_features, train_labels
        Labelled training epochs' features and stages (:func:`fit_class_gaussians`).
    val_nights : sequence of array-like, each (n_epochs, n_features)
        Features of each validation night (nights the Gaussians were not fitted on).
    val_predicted : sequence of array-like, optional
        Each validation night's predicted stages (needed with ``classes="predicted"``).
    n_components, shrinkage
        See :func:`fit_class_gaussians`.
    classes : {"nearest", "predicted"}
        Distance to the nearest class mean, or to the predicted class's.
    summary : {"median", "trimmed"}
        How a night's epoch distances become its score.
    quantile, margin, floor, severe
        threshold = max(quantile of the validation nights' scores x margin, floor); ``do_not_use`` above
        ``severe`` x threshold.

    Returns
    -------
    dict
        JSON-ready: :func:`fit_class_gaussians`'s keys plus ``classes``, ``summary``, ``val_scores``,
        ``threshold``, ``severe``.
    """
    if classes not in CLASS_MODES:
        raise DsnError(f"classes={classes!r}: one of {list(CLASS_MODES)}")
    if not 0.0 < quantile <= 1.0 or margin < 1.0 or floor < 0.0 or severe < 1.0:
        raise DsnError(f"feature shift threshold: need 0 < quantile <= 1, margin >= 1, floor >= 0, severe >= 1; got "
                       f"quantile={quantile}, margin={margin}, floor={floor}, severe={severe}")
    if not len(val_nights):
        raise DsnError("val_nights: the threshold needs at least one validation night's features")
    if classes == "predicted" and (val_predicted is None or len(val_predicted) != len(val_nights)):
        raise DsnError("classes='predicted' needs val_predicted: each validation night's predicted stages")
    gauss = fit_class_gaussians(train_features, train_labels, n_components, shrinkage)
    pred = val_predicted if classes == "predicted" else [None] * len(val_nights)
    scores = np.array([night_feature_score(gauss, f, p, summary) for f, p in zip(val_nights, pred)])
    threshold = max(float(np.quantile(scores, quantile)) * margin, floor)
    return {**gauss, "classes": classes, "summary": summary, "val_scores": scores.tolist(), "threshold": threshold,
            "severe": float(severe)}


def check_features(reference: Mapping[str, Any], features: Any, predicted: Any = None) -> FeatureShiftResult:
    """The feature-level shift of one night against a :func:`fit_feature_reference` reference.

    Parameters
    ----------
    reference : mapping
        :func:`fit_feature_reference`'s result.
    features : array-like, shape (n_epochs, n_features)
        The night's epoch-encoder features (e.g. the scored period's).
    predicted : array-like of int, optional
        The night's predicted stages (used when the reference was fitted with ``classes="predicted"``).

    Returns
    -------
    FeatureShiftResult
    """
    try:
        threshold, severe = float(reference["threshold"]), float(reference.get("severe", SEVERE))
        how, classes = reference.get("summary", "median"), reference.get("classes", "nearest")
    except (KeyError, TypeError, ValueError) as e:
        raise DsnError(f"feature reference: missing or bad entry {e}; build it with "
                       "dsn.trust.features.fit_feature_reference") from None
    dist = epoch_distances(reference, features, predicted if classes == "predicted" else None)
    score = _summary(dist, how)
    beyond = float(np.mean(dist > threshold))
    level = "do_not_use" if score > severe * threshold else "check" if score > threshold else "ok"
    word = {"ok": "<=", "check": ">", "do_not_use": f"> {severe:g} x"}[level]
    reason = (f"feature_shift: network features {score:.2f} {word} threshold {threshold:.2f} from the training "
              f"nights' ({100 * beyond:.0f} % of epochs beyond it)")
    return FeatureShiftResult("feature_shift", score, threshold, level, reason, beyond)

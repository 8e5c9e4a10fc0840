"""Prediction-level shift: does the model answer on this night as it answers on its validation nights?

Black-box shift detection (BBSE: Lipton, Wang & Smola, "Detecting and correcting for label shift with black
box predictors", ICML 2018) looks at the model's outputs only. On validation nights the confusion matrix
``C`` (rows true stage, columns predicted) gives ``M[j, i] = P(predicted j | true i)``. Under pure label
shift a night's predicted-stage distribution ``mu`` is ``M @ q`` for the night's true stage distribution
``q``, so ``q_hat = M^-1 @ mu`` estimates it; the score is the total variation distance
``0.5 * sum |q_hat - p|`` from the validation stage distribution ``p``. Two things raise it:

* a night whose stages the model sees as far from the validation nights' mix (72 % REM where the
  validation nights had a fifth): the estimated true distribution is far from ``p``;
* outputs that no true stage mix explains (covariate shift: another recorder, another site): ``q_hat`` gets
  negative components, whose absolute values add to the distance (``q_hat`` is not clipped on purpose).

``method="tv"`` is the plain alternative without the inverse: the total variation of the night's predicted
distribution from the mean predicted distribution of the validation nights.

The threshold (:func:`fit_reference`) comes from the same score on each validation night: its
``quantile`` (default 0.95, so one or two validation nights give their largest) times ``margin`` (1.25),
and at least ``floor`` (0.15: healthy nights differ from the mean mix by up to about that much, so a
handful of similar validation nights must not make the detector fire on ordinary nights). A night is
``check`` above the threshold and ``do_not_use`` above ``severe`` (2) times it.

Pure numpy; the reference is JSON-ready (lists and floats) to live in a model spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dsn.data.labels import N_CLASSES, STAGES
from dsn.errors import DsnError

__all__ = ["ShiftResult", "check_shift", "fit_reference", "shift_score"]

QUANTILE = 0.95
MARGIN = 1.25
FLOOR = 0.15
SEVERE = 2.0
#: Tikhonov term added to ``M`` before inverting it (relative to its largest singular value): a stage the
#: model never predicts (an empty column) or two stages it confuses completely make ``M`` singular.
RIDGE = 1e-3
METHODS = ("bbse", "tv")


@dataclass(frozen=True)
class ShiftResult:
    """The prediction-level shift of one night.

    Attributes
    ----------
    name : str
        ``"prediction_shift"`` (the detector's name in a verdict).
    value : float
        The score (a total variation distance, 0 to 1; above 1 only with negative BBSE estimates).
    threshold : float
    level : str
        ``"ok"``, ``"check"`` (score > threshold) or ``"do_not_use"`` (score > ``severe`` x threshold).
    reason : str
        One line with the score, the threshold and the stage the shift is largest in.
    estimate : dict of str to float
        The night's estimated stage distribution (BBSE) or predicted distribution (tv), by stage name.
    """

    name: str
    value: float
    threshold: float
    level: str
    reason: str
    estimate: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(x: Any, what: str, n: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape[-1:] != (n,) or not np.all(np.isfinite(a)) or (a < 0).any():
        raise DsnError(f"{what}: expected non-negative counts over the {n} stages {list(STAGES[:n])}, "
                       f"got shape {a.shape}")
    return a


def _distribution(counts: np.ndarray, what: str) -> np.ndarray:
    total = counts.sum(axis=-1, keepdims=True)
    if (total <= 0).any():
        raise DsnError(f"{what}: a night with no scored epoch has no stage distribution; leave it out")
    return counts / total


def _inverse(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pinv of M regularised, p)`` from a confusion matrix with rows true, columns predicted."""
    true_counts = confusion.sum(axis=1)
    if (true_counts <= 0).all():
        raise DsnError("confusion: an empty confusion matrix; compute it on the validation nights")
    p = true_counts / true_counts.sum()
    cond = confusion / np.maximum(true_counts[:, None], 1e-12)  # P(pred | true), rows true
    m = cond.T  # M[pred, true]
    lam = RIDGE * np.linalg.norm(m, 2)
    inv = np.linalg.solve(m.T @ m + lam**2 * np.eye(len(m)), m.T)
    return inv, p


def shift_score(confusion: Any, night_counts: Any, method: str = "bbse",
                val_pred_counts: Any = None) -> tuple[float | np.ndarray, np.ndarray, np.ndarray]:
    """The shift score of one or more nights.

    Parameters
    ----------
    confusion : array-like, shape (K, K)
        Validation confusion matrix, rows true stage, columns predicted (counts).
    night_counts : array-like, shape (K,) or (n_nights, K)
        Predicted-stage counts of the night(s).
    method : {"bbse", "tv"}
        ``bbse``: total variation between the BBSE estimate of the night's true stage distribution and the
        validation stage distribution; ``tv``: total variation between the night's predicted distribution and
        the validation nights' mean predicted distribution (needs ``val_pred_counts``).
    val_pred_counts : array-like, shape (n_val_nights, K), optional
        Predicted-stage counts of the validation nights (for ``tv``).

    Returns
    -------
    (score, estimate, reference)
        The score (float, or an array for several nights), the night's distribution it compared (BBSE
        estimate of the true stages, or the predicted one) and the distribution it compared it with.
    """
    if method not in METHODS:
        raise DsnError(f"method={method!r}: the shift score is one of {list(METHODS)}")
    conf = _counts(confusion, "confusion", np.asarray(confusion).shape[-1])
    k = conf.shape[-1]
    if conf.shape != (k, k):
        raise DsnError(f"confusion: expected a square matrix (rows true, columns predicted), got shape {conf.shape}")
    mu = _distribution(_counts(night_counts, "night_counts", k), "night_counts")
    if method == "bbse":
        inv, ref = _inverse(conf)
        est = mu @ inv.T
    else:
        if val_pred_counts is None:
            raise DsnError("method='tv' needs val_pred_counts: the predicted-stage counts of the validation nights")
        ref = _distribution(_counts(val_pred_counts, "val_pred_counts", k), "val_pred_counts").mean(axis=0)
        est = mu
    score = 0.5 * np.abs(est - ref).sum(axis=-1)
    return (float(score) if np.ndim(score) == 0 else score), est, ref


def fit_reference(confusion: Any, val_pred_counts: Any, method: str = "bbse", quantile: float = QUANTILE,
                  margin: float = MARGIN, floor: float = FLOOR, severe: float = SEVERE) -> dict[str, Any]:
    """What :func:`check_shift` needs, fitted on the validation nights (JSON-ready, for the model spec).

    Parameters
    ----------
    confusion : array-like, shape (K, K)
        Validation confusion matrix pooled over the validation nights (rows true, columns predicted).
    val_pred_counts : array-like, shape (n_val_nights, K)
        Predicted-stage counts of each validation night.
    method, quantile, margin, floor, severe
        See the module docstring: threshold = max(quantile of the validation nights' scores x margin, floor).

    Returns
    -------
    dict
        ``method``, ``confusion``, ``val_pred_counts`` (lists), ``val_scores``, ``threshold``, ``severe``.
    """
    if not 0.0 < quantile <= 1.0 or margin < 1.0 or floor < 0.0 or severe < 1.0:
        raise DsnError(f"shift threshold: need 0 < quantile <= 1, margin >= 1, floor >= 0, severe >= 1; got "
                       f"quantile={quantile}, margin={margin}, floor={floor}, severe={severe}")
    val = np.atleast_2d(np.asarray(val_pred_counts, dtype=np.float64))
    scores, _, _ = shift_score(confusion, val, method, val)
    scores = np.atleast_1d(scores)
    threshold = max(float(np.quantile(scores, quantile)) * margin, floor)
    return {"method": method, "confusion": np.asarray(confusion, dtype=np.float64).tolist(),
            "val_pred_counts": val.tolist(), "val_scores": scores.tolist(), "threshold": threshold,
            "severe": float(severe)}


def check_shift(reference: Mapping[str, Any], night_counts: Any,
                class_names: Sequence[str] = STAGES[:N_CLASSES]) -> ShiftResult:
    """The prediction-level shift of one night against a :func:`fit_reference` reference.

    Parameters
    ----------
    reference : mapping
        :func:`fit_reference`'s result.
    night_counts : array-like, shape (K,)
        The night's predicted-stage counts (e.g. ``np.bincount(stages, minlength=5)``).
    class_names : sequence of str
        Stage names for the reason and the estimate.

    Returns
    -------
    ShiftResult
    """
    try:
        method, threshold = reference["method"], float(reference["threshold"])
        severe = float(reference.get("severe", SEVERE))
        score, est, ref = shift_score(reference["confusion"], night_counts, method, reference.get("val_pred_counts"))
    except (KeyError, TypeError) as e:
        raise DsnError(f"shift reference: missing or bad entry {e}; build it with dsn.trust.shift.fit_reference") from None
    names = list(class_names)[: len(est)]
    worst = int(np.argmax(np.abs(est - ref)))
    level = "do_not_use" if score > severe * threshold else "check" if score > threshold else "ok"
    word = {"ok": "<=", "check": ">", "do_not_use": f"> {severe:g} x"}[level]
    what = "estimated" if method == "bbse" else "predicted"
    reason = (f"prediction_shift: score {score:.2f} {word} threshold {threshold:.2f} "
              f"({what} {names[worst]} {100 * est[worst]:.0f} % vs {100 * ref[worst]:.0f} % on validation nights)")
    return ShiftResult("prediction_shift", float(score), threshold, level, reason,
                       {n: float(v) for n, v in zip(names, est)})

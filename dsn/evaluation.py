"""Evaluation of sleep staging: confusion matrices and every figure derived from one (numpy only).

This module sits below everything that evaluates: the systems' torchmetrics state
(:class:`dsn.systems.metrics.SleepStageMetrics`), ``dsn fit``'s selection and evaluation, ``dsn cv``'s
pooled figures, ``dsn predict``'s agreement with an expert hypnogram and :mod:`dsn.hypnogram`. It imports
neither torch nor the systems nor the hypnogram module.

Stages are class indices in :data:`dsn.data.labels.STAGES` order (``0 = W ... 4 = REM``); a negative
label (:data:`~dsn.data.labels.IGNORE_INDEX` ``= -1``, or ``-2``) marks an unscored epoch, which is left
out of every count.

Absent-class policy
-------------------
A class that occurs in **neither** the targets nor the predictions of the evaluated epochs (e.g. a
validation night without N3) has an *undefined* F1 (``0 / 0``):

* its per-class ``f1_<stage>`` is ``NaN`` ("not applicable"), not ``0.0`` -- a 0 would read as "the
  model failed N3" when there simply was no N3 to find;
* ``f1_macro`` is the mean over the classes present in the targets **or** the predictions, i.e.
  ``sklearn.metrics.f1_score(y, p, average="macro", labels=present_labels)`` (equivalently
  ``zero_division=np.nan``), which is also what torchmetrics' ``MulticlassF1Score(average="macro")``
  does.

A class present in the targets but never predicted (or predicted but never in the targets) has a
well-defined F1 of ``0.0`` and counts in the macro average. Cohen's kappa is ``NaN`` when chance
agreement is 1 (a single class in both targets and predictions), as in
``sklearn.metrics.cohen_kappa_score``. With no epochs at all every metric is ``NaN``. Precision
(recall) is ``NaN`` for a class never predicted (never true). Aggregate NaN-aware (``np.nanmean``) when
averaging per-night values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dsn.data.labels import IGNORE_INDEX, STAGES

#: Low-confidence threshold on the calibrated top-class probability of a model whose spec has none
#: (``dsn predict --low_confidence`` overrides either).
LOW_CONFIDENCE = 0.5

__all__ = [
    "agreement",
    "apply_temperature",
    "brier_score",
    "confidence",
    "confusion_matrix",
    "confusion_of",
    "expected_calibration_error",
    "fit_temperature",
    "format_report",
    "metrics_from_confusion",
    "reliability_bins",
]


# --------------------------------------------------------------------------------------------
# Confusion matrices
# --------------------------------------------------------------------------------------------
def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int = len(STAGES), ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Count (true, predicted) pairs of class indices.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (n_epochs,)
        Expert and predicted class indices (any shape, flattened; equal sizes).
    n_classes : int, default 5
        Number of classes ``C``.
    ignore_index : int, default ``IGNORE_INDEX`` (-1)
        Label of epochs to leave out. Every negative value (true or predicted) is also left out: the
        project writes unscored epochs as ``-1`` or ``-2``.

    Returns
    -------
    numpy.ndarray
        ``(C, C)`` int64 counts; rows are true classes, columns predicted classes.

    Raises
    ------
    ValueError
        If the sizes differ or a kept value is ``>= n_classes``.
    """
    t = np.asarray(y_true).reshape(-1).astype(np.int64, copy=False)
    p = np.asarray(y_pred).reshape(-1).astype(np.int64, copy=False)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    keep = (t != ignore_index) & (t >= 0) & (p >= 0)
    t, p = t[keep], p[keep]
    if t.size and max(int(t.max()), int(p.max())) >= n_classes:
        raise ValueError(f"class index {max(int(t.max()), int(p.max()))} out of range for {n_classes} classes")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def confusion_of(preds: Iterable[Any], n_classes: int = len(STAGES)) -> np.ndarray:
    """Pooled confusion counts over scored epochs of several recordings.

    Parameters
    ----------
    preds : iterable of objects
        Each with ``y_true`` (``(n_epochs,)`` int, ``-1`` masked) and either ``y_pred`` (``(n_epochs,)``
        int) or ``proba`` (``(n_epochs, C)``, argmax taken), e.g. :class:`dsn.workflows.fit.Prediction`.
    n_classes : int, default 5
        Number of classes ``C``.

    Returns
    -------
    numpy.ndarray
        ``(C, C)`` int64 counts, rows true, columns predicted.
    """
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for p in preds:
        y_pred = getattr(p, "y_pred", None)
        if y_pred is None:
            y_pred = np.asarray(p.proba).argmax(-1)
        cm += confusion_matrix(p.y_true, y_pred, n_classes)
    return cm


# --------------------------------------------------------------------------------------------
# Figures from a confusion matrix
# --------------------------------------------------------------------------------------------
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, NaN where ``den == 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def metrics_from_confusion(
    cm: Any, class_names: Sequence[str] = STAGES, precision_recall: bool = False
) -> dict[str, float]:
    """Sleep-staging figures of a confusion matrix.

    Parameters
    ----------
    cm : array_like
        ``(C, C)`` non-negative counts; rows are true classes, columns predicted classes.
    class_names : sequence of str, default ``STAGES``
        One name per class, in class-index order; used for the per-class keys.
    precision_recall : bool, default False
        Also return ``precision_<name>`` (correct / predicted as that class) and ``recall_<name>``
        (correct / truly that class) for every class, after the F1 keys.

    Returns
    -------
    dict of str to float
        ``acc`` (micro accuracy), ``f1_macro``, ``kappa`` (unweighted Cohen's kappa), ``f1_<name>`` for
        every class (and the precision / recall keys if asked), without any split prefix. Undefined
        values are ``NaN`` (see the module docstring for the absent-class policy).

    Raises
    ------
    ValueError
        If ``cm`` is not square or does not match ``class_names``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n_classes = len(class_names)
    if cm.ndim != 2 or cm.shape != (n_classes, n_classes):
        raise ValueError(f"cm must have shape ({n_classes}, {n_classes}), got {cm.shape}")

    total = cm.sum()
    tp = np.diag(cm)
    true_count = cm.sum(axis=1)  # support (row sums)
    pred_count = cm.sum(axis=0)  # predicted (column sums)
    f1 = _ratio(2.0 * tp, true_count + pred_count)  # 2TP / (2TP + FP + FN)

    nan = float("nan")
    if total > 0:
        p_o = float(tp.sum() / total)
        p_e = float((true_count * pred_count).sum() / total**2)
        acc = p_o
        kappa = (p_o - p_e) / (1.0 - p_e) if p_e < 1.0 else nan
        f1_macro = float(np.nanmean(f1))  # at least one class is present when total > 0
    else:
        acc = kappa = f1_macro = nan

    out = {"acc": acc, "f1_macro": f1_macro, "kappa": float(kappa)}
    out.update({f"f1_{name}": float(v) for name, v in zip(class_names, f1, strict=True)})
    if precision_recall:
        out.update({f"precision_{n}": float(v) for n, v in zip(class_names, _ratio(tp, pred_count), strict=True)})
        out.update({f"recall_{n}": float(v) for n, v in zip(class_names, _ratio(tp, true_count), strict=True)})
    return out


def agreement(y_true: Any, y_pred: Any, class_names: Sequence[str] = STAGES) -> dict[str, Any]:
    """Epoch-by-epoch agreement between an expert hypnogram and a predicted one.

    Epochs where either hypnogram is unscored (negative) are left out. The inputs are not validated
    beyond their sizes; :func:`dsn.hypnogram.agreement` checks them first and names the bad value.

    Parameters
    ----------
    y_true, y_pred : array_like of int, shape (n_epochs,)
        Expert and predicted stage indices (``-1`` = unscored).
    class_names : sequence of str, default ``STAGES``
        Class names in index order (keys of the per-class values).

    Returns
    -------
    dict
        ``confusion``: ndarray (C, C) int64, rows true, columns predicted; ``n_epochs``: epochs
        compared; ``n_ignored``: epochs left out; then every key of :func:`metrics_from_confusion`
        with ``precision_recall=True``.
    """
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    n_epochs = int(cm.sum())
    out: dict[str, Any] = {"confusion": cm, "n_epochs": n_epochs, "n_ignored": int(np.size(y_true)) - n_epochs}
    out |= metrics_from_confusion(cm, class_names, precision_recall=True)
    return out


# --------------------------------------------------------------------------------------------
# Calibration and confidence of class probabilities
# --------------------------------------------------------------------------------------------
def _scored(proba: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(n, C)`` float64 probabilities and ``(n,)`` labels of the scored epochs (negative labels dropped)."""
    p = np.asarray(proba, dtype=np.float64)
    t = np.asarray(y).reshape(-1).astype(np.int64, copy=False)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"proba must be (n_epochs, n_classes) with n_epochs = {t.size} labels, got {p.shape}")
    keep = t >= 0
    return p[keep], t[keep]


def reliability_bins(proba: Any, y: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability: per confidence bin, the mean confidence, the accuracy and the count.

    Parameters
    ----------
    proba : array_like, shape (n_epochs, n_classes)
        Class probabilities.
    y : array_like of int, shape (n_epochs,)
        True classes; negative (unscored) epochs are left out.
    n_bins : int, default 15
        Equal-width bins over ``[0, 1]``; an epoch of confidence ``c`` falls in bin
        ``ceil(c * n_bins) - 1`` (right edges included, ``c = 0`` in the first bin).

    Returns
    -------
    dict of str to numpy.ndarray
        ``edges`` ``(n_bins + 1,)``, ``confidence`` and ``accuracy`` ``(n_bins,)`` (NaN in empty bins),
        ``count`` ``(n_bins,)`` int64.
    """
    p, t = _scored(proba, y)
    conf = p.max(axis=1) if p.size else np.zeros(0)
    correct = (p.argmax(axis=1) == t).astype(np.float64) if p.size else np.zeros(0)
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "confidence": _ratio(np.bincount(which, weights=conf, minlength=n_bins), count),
        "accuracy": _ratio(np.bincount(which, weights=correct, minlength=n_bins), count),
        "count": count,
    }


def expected_calibration_error(proba: Any, y: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error: ``sum_b (n_b / n) |accuracy_b - confidence_b|``.

    Parameters
    ----------
    proba, y, n_bins
        As in :func:`reliability_bins` (15 equal-width bins by default; unscored epochs left out).

    Returns
    -------
    float
        ECE in ``[0, 1]``; NaN without scored epochs.
    """
    b = reliability_bins(proba, y, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    filled = b["count"] > 0
    gap = np.abs(b["accuracy"][filled] - b["confidence"][filled])
    return float((b["count"][filled] * gap).sum() / n)


def brier_score(proba: Any, y: Any) -> float:
    """Multi-class Brier score: mean over epochs of ``sum_c (p_c - [y = c])^2`` (0 is perfect, 2 the worst).

    Parameters
    ----------
    proba, y
        ``(n_epochs, n_classes)`` probabilities and ``(n_epochs,)`` true classes (negative: left out).

    Returns
    -------
    float
        The score; NaN without scored epochs.
    """
    p, t = _scored(proba, y)
    if t.size == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(t.size), t] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def fit_temperature(logits: Any, y: Any, bounds: tuple[float, float] = (0.05, 20.0), tol: float = 1e-6) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Parameters
    ----------
    logits : array_like, shape (n_epochs, n_classes)
        Logits, or log-probabilities (``log(proba)``: the same softmax, so the same ``T``).
    y : array_like of int, shape (n_epochs,)
        True classes; negative (unscored) epochs are left out.
    bounds : (float, float), default (0.05, 20)
        Search interval of ``T``.
    tol : float, default 1e-6
        Tolerance on ``log T``.

    Returns
    -------
    float
        ``T > 0``: above 1 softens over-confident probabilities, below 1 sharpens them; 1.0 without scored
        epochs.

    Notes
    -----
    The NLL is convex in ``1 / T`` (a log-sum-exp of a linear function of it, minus a linear term), so it
    has one minimum, found by golden-section search over ``log T``.
    """
    z, t = _scored(np.nan_to_num(np.asarray(logits, dtype=np.float64), neginf=-1e4), y)
    if t.size == 0:
        return 1.0
    z_true = z[np.arange(t.size), t]

    def nll(log_t: float) -> float:
        zs = z / math.exp(log_t)
        m = zs.max(axis=1)
        return float((m + np.log(np.exp(zs - m[:, None]).sum(axis=1)) - z_true / math.exp(log_t)).mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2.0))


def apply_temperature(proba: Any, temperature: float) -> np.ndarray:
    """Recalibrate probabilities: ``softmax(log(proba) / T)`` (the same class order and argmax).

    Parameters
    ----------
    proba : array_like, shape (..., n_classes)
        Class probabilities (a softmax, or an average of softmaxes).
    temperature : float
        ``T > 0`` from :func:`fit_temperature`; 1 returns the probabilities unchanged (renormalised).

    Returns
    -------
    numpy.ndarray
        Float32 probabilities of the same shape, rows summing to 1.
    """
    p = np.asarray(proba, dtype=np.float64)
    with np.errstate(divide="ignore"):
        z = np.maximum(np.log(p), -1e4) / float(temperature)
    return np.exp(_log_softmax(z)).astype(np.float32)


def confidence(proba: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch confidence: the top-class probability and the normalised entropy.

    Parameters
    ----------
    proba : array_like, shape (n_epochs, n_classes)
        Class probabilities.

    Returns
    -------
    top : numpy.ndarray, shape (n_epochs,)
        Probability of the predicted class, in ``[1 / C, 1]``.
    entropy : numpy.ndarray, shape (n_epochs,)
        ``-sum_c p_c log p_c / log C`` in ``[0, 1]``: 0 for a certain prediction, 1 for a uniform one.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba must be (n_epochs, n_classes >= 2), got {p.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1) / math.log(p.shape[1])
    return p.max(axis=1), np.clip(h, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.3f}"


def format_report(metrics: Mapping[str, Any], split: str, class_names: Sequence[str] = STAGES) -> str:
    """Format a small per-stage F1 table for the terminal.

    Parameters
    ----------
    metrics : mapping of str to float (or 0-d tensor / array)
        Output of :meth:`dsn.systems.metrics.SleepStageMetrics.compute` (keys ``f"{split}/..."``) or of
        :func:`metrics_from_confusion` (unprefixed keys).
    split : str
        Split name, shown in the header and used to look up prefixed keys.
    class_names : sequence of str, default ``STAGES``
        Stages to list, in order.

    Returns
    -------
    str
        Multi-line table; undefined values (absent stages) are shown as ``n/a``.
    """

    def get(name: str) -> float:
        for key in (f"{split}/{name}", name):
            if key in metrics:
                return float(metrics[key])
        return float("nan")

    width = max(8, len(split) + 2, *(len(n) for n in class_names))
    rule = "-" * (width + 7)
    lines = [f"{'[' + split + ']':<{width}} {'F1':>6}", rule]
    lines += [f"{name:<{width}} {_fmt(get(f'f1_{name}'))}" for name in class_names]
    lines.append(rule)
    for label, key in (("macro-F1", "f1_macro"), ("accuracy", "acc"), ("kappa", "kappa")):
        lines.append(f"{label:<{width}} {_fmt(get(key))}")
    return "\n".join(lines)

"""Prediction-level shift: does the model answer on this night as it answers on its validation nights?

The default test (``method="chi2"``) asks whether the night's predicted stage shares could come from a night
like the validation nights, scored by this model, with an explicit false-alarm rate. It must mean something
with the one or two validation nights a small fit has, so the between-night spread is not estimated from them:

* the expected predicted shares are ``mu0 = M p``, with ``p`` the validation nights' true stage mix and
  ``M[j, i] = P(predicted j | true i)`` their confusion matrix (black-box shift detection, below);
* a healthy night's true shares vary around ``p`` with the between-subject standard deviations of adult stage
  shares in normative polysomnography (:data:`SHARE_SD`: W 8, N1 5, N2 9, N3 8, REM 6 points of the scored
  period; BOULOS and OHAYON of :file:`norms.yaml` report about 4-6 for N1, 7-9 for N2, 6-8 for N3, 5-7 for
  REM, rounded up here), widened by ``1 + 1/n_val`` because ``p`` itself comes from ``n_val`` nights; the
  model passes that spread on as ``M diag(sd^2) M^T``, and its per-epoch confusion adds a multinomial term over
  the night's ``n`` epochs (the between-night spread already holds the randomness of the true stage bouts);
* the night's statistic is the Mahalanobis distance ``d^2`` of its predicted shares from ``mu0`` in the K-1
  free dimensions (shares add up to 1), which is chi-square with K-1 degrees of freedom under that null:
  ``check`` above its ``1 - false_alarm`` quantile (1 %: 13.3 for 5 stages), ``do_not_use`` above its
  ``1 - severe_alarm`` quantile (0.01 %: 23.5). Nothing is fitted on test nights; nothing depends on how
  many validation nights agree with each other.

This null is a night of the training population; a population with another stage mix (older sleepers, short
recordings, whose first cycles are rich in N3) is a real shift of the predicted mix and is reported as such.

The earlier scores stay available (``method="bbse"`` and ``"tv"``, thresholds from the validation nights' own
scores; references stored by older fits keep working):

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

#: Between-night standard deviation of each stage's share of the scored period (W, N1, N2, N3, REM) in healthy
#: adults (module docstring); other class sets use :data:`DEFAULT_SD` for every class.
SHARE_SD = (0.08, 0.05, 0.09, 0.08, 0.06)
DEFAULT_SD = 0.08
#: Epochs per independent sample of the multinomial term (the model's per-epoch confusion: one).
EPOCHS_PER_SAMPLE = 1
FALSE_ALARM = 0.01
SEVERE_ALARM = 1e-4
QUANTILE = 0.95
MARGIN = 1.25
FLOOR = 0.15
SEVERE = 2.0
#: Tikhonov term added to ``M`` before inverting it (relative to its largest singular value): a stage the
#: model never predicts (an empty column) or two stages it confuses completely make ``M`` singular.
RIDGE = 1e-3
METHODS = ("chi2", "bbse", "tv")


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


def _chi2_score(conf: np.ndarray, counts: np.ndarray, share_sd: Sequence[float], n_val: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(d2, night shares, expected shares mu0, z per stage)`` of the ``chi2`` test (module docstring)."""
    k = conf.shape[-1]
    true_counts = conf.sum(axis=1)
    if (true_counts <= 0).all():
        raise DsnError("confusion: an empty confusion matrix; compute it on the validation nights")
    p = true_counts / true_counts.sum()
    cond = np.where(true_counts[:, None] > 0, conf / np.maximum(true_counts[:, None], 1e-12), np.eye(k))
    m = cond.T  # M[pred, true]
    mu0 = m @ p
    sd = np.asarray(share_sd, dtype=np.float64)
    between = m @ np.diag(sd**2 * (1.0 + 1.0 / max(int(n_val), 1))) @ m.T
    n = np.atleast_1d(counts.sum(axis=-1)).astype(np.float64)
    share = counts / counts.sum(axis=-1, keepdims=True)
    h = np.linalg.svd(np.eye(k) - 1.0 / k, full_matrices=False)[0][:, : k - 1]  # basis of the shares' free dimensions
    diff = np.atleast_2d(share - mu0)
    d2, z = np.empty(len(diff)), np.empty_like(diff)
    for i, (dv, ni) in enumerate(zip(diff, n)):
        cov = between + (np.diag(mu0) - np.outer(mu0, mu0)) * EPOCHS_PER_SAMPLE / ni
        hd = h.T @ dv
        d2[i] = float(hd @ np.linalg.solve(h.T @ cov @ h + 1e-12 * np.eye(k - 1), hd))
        z[i] = dv / np.sqrt(np.maximum(np.diag(cov), 1e-12))
    one = counts.ndim == 1
    return (d2[0] if one else d2), share, mu0, (z[0] if one else z)


def _share_sd(k: int) -> list[float]:
    return list(SHARE_SD) if k == len(SHARE_SD) else [DEFAULT_SD] * k


def shift_score(confusion: Any, night_counts: Any, method: str = "chi2",
                val_pred_counts: Any = None, share_sd: Sequence[float] | None = None,
                n_val: int | None = None) -> tuple[float | np.ndarray, np.ndarray, np.ndarray]:
    """The shift score of one or more nights.

    Parameters
    ----------
    confusion : array-like, shape (K, K)
        Validation confusion matrix, rows true stage, columns predicted (counts).
    night_counts : array-like, shape (K,) or (n_nights, K)
        Predicted-stage counts of the night(s).
    method : {"chi2", "bbse", "tv"}
        ``chi2`` (default): the chi-square statistic of the night's predicted shares against the shares expected
        of a validation-like night (module docstring); ``bbse``: total variation between the BBSE estimate of
        the night's true stage distribution and the validation stage distribution; ``tv``: total variation
        between the night's predicted distribution and the validation nights' mean predicted distribution.
    val_pred_counts : array-like, shape (n_val_nights, K), optional
        Predicted-stage counts of the validation nights (for ``tv``; for ``chi2`` their number is ``n_val``).
    share_sd : sequence of float, optional
        ``chi2``: between-night standard deviation of each stage's share (default :data:`SHARE_SD`).
    n_val : int, optional
        ``chi2``: number of validation nights behind ``confusion`` (default: ``len(val_pred_counts)`` or 1).

    Returns
    -------
    (score, estimate, reference)
        The score (float, or an array for several nights), the night's distribution it compared (predicted
        shares for ``chi2`` and ``tv``, BBSE estimate of the true shares for ``bbse``) and the distribution it
        compared it with.
    """
    if method not in METHODS:
        raise DsnError(f"method={method!r}: the shift score is one of {list(METHODS)}")
    conf = _counts(confusion, "confusion", np.asarray(confusion).shape[-1])
    k = conf.shape[-1]
    if conf.shape != (k, k):
        raise DsnError(f"confusion: expected a square matrix (rows true, columns predicted), got shape {conf.shape}")
    counts = _counts(night_counts, "night_counts", k)
    mu = _distribution(counts, "night_counts")
    if method == "chi2":
        if n_val is None:
            n_val = len(np.atleast_2d(val_pred_counts)) if val_pred_counts is not None else 1
        score, est, ref, _ = _chi2_score(conf, counts, share_sd or _share_sd(k), n_val)
        return (float(score) if np.ndim(score) == 0 else score), est, ref
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


def _chi2_quantile(alarm: float, df: int) -> float:
    from scipy.stats import chi2

    return float(chi2.isf(alarm, df))


def fit_reference(confusion: Any, val_pred_counts: Any, method: str = "chi2", quantile: float = QUANTILE,
                  margin: float = MARGIN, floor: float = FLOOR, severe: float = SEVERE,
                  false_alarm: float = FALSE_ALARM, severe_alarm: float = SEVERE_ALARM,
                  share_sd: Sequence[float] | None = None) -> dict[str, Any]:
    """What :func:`check_shift` needs, fitted on the validation nights (JSON-ready, for the model spec).

    Parameters
    ----------
    confusion : array-like, shape (K, K)
        Validation confusion matrix pooled over the validation nights (rows true, columns predicted).
    val_pred_counts : array-like, shape (n_val_nights, K)
        Predicted-stage counts of each validation night.
    method : {"chi2", "bbse", "tv"}
        See :func:`shift_score`.
    false_alarm, severe_alarm : float
        ``chi2``: the false-alarm rates of ``check`` (default 1 %) and ``do_not_use`` (0.01 %) under the null:
        the thresholds are the chi-square (K-1 degrees of freedom) quantiles ``1 - rate``.
    share_sd : sequence of float, optional
        ``chi2``: between-night standard deviation of each stage's share (default :data:`SHARE_SD`).
    quantile, margin, floor, severe
        ``bbse`` and ``tv``: threshold = max(quantile of the validation nights' scores x margin, floor);
        ``do_not_use`` above ``severe`` x threshold.

    Returns
    -------
    dict
        ``method``, ``confusion``, ``val_pred_counts`` (lists), ``val_scores``, ``threshold``, ``severe``
        (and for ``chi2``: ``severe_threshold``, ``false_alarm``, ``severe_alarm``, ``share_sd``, ``n_val``).
    """
    if not 0.0 < quantile <= 1.0 or margin < 1.0 or floor < 0.0 or severe < 1.0:
        raise DsnError(f"shift threshold: need 0 < quantile <= 1, margin >= 1, floor >= 0, severe >= 1; got "
                       f"quantile={quantile}, margin={margin}, floor={floor}, severe={severe}")
    if not 0.0 < severe_alarm <= false_alarm < 1.0:
        raise DsnError(f"shift false-alarm rates: need 0 < severe_alarm <= false_alarm < 1; got "
                       f"false_alarm={false_alarm}, severe_alarm={severe_alarm}")
    val = np.atleast_2d(np.asarray(val_pred_counts, dtype=np.float64))
    k = val.shape[-1]
    sd = list(share_sd) if share_sd is not None else _share_sd(k)
    scores, _, _ = shift_score(confusion, val, method, val, sd, len(val))
    scores = np.atleast_1d(scores)
    out = {"method": method, "confusion": np.asarray(confusion, dtype=np.float64).tolist(), "val_pred_counts": val.tolist(),
           "val_scores": scores.tolist()}
    if method == "chi2":
        threshold = _chi2_quantile(false_alarm, k - 1)
        return {**out, "threshold": threshold, "severe": _chi2_quantile(severe_alarm, k - 1) / threshold,
                "severe_threshold": _chi2_quantile(severe_alarm, k - 1), "false_alarm": float(false_alarm),
                "severe_alarm": float(severe_alarm), "share_sd": [float(v) for v in sd], "n_val": len(val)}
    threshold = max(float(np.quantile(scores, quantile)) * margin, floor)
    return {**out, "threshold": threshold, "severe": float(severe)}


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
        severe_threshold = float(reference.get("severe_threshold", severe * threshold))
        score, est, ref = shift_score(reference["confusion"], night_counts, method, reference.get("val_pred_counts"),
                                      reference.get("share_sd"), reference.get("n_val"))
    except (KeyError, TypeError) as e:
        raise DsnError(f"shift reference: missing or bad entry {e}; build it with dsn.trust.shift.fit_reference") from None
    names = list(class_names)[: len(est)]
    level = "do_not_use" if score > severe_threshold else "check" if score > threshold else "ok"
    if method == "chi2":
        z = _chi2_score(np.asarray(reference["confusion"], float), np.asarray(night_counts, float),
                        reference.get("share_sd") or _share_sd(len(est)), reference.get("n_val") or 1)[3]
        worst = int(np.argmax(np.abs(z)))
        word = {"ok": "<=", "check": ">", "do_not_use": ">"}[level]
        bound = severe_threshold if level == "do_not_use" else threshold
        alarm = float(reference.get("severe_alarm" if level == "do_not_use" else "false_alarm", FALSE_ALARM))
        reason = (f"prediction_shift: chi-square {score:.1f} {word} {bound:.1f} (false-alarm rate {100 * alarm:g} %; "
                  f"predicted {names[worst]} {100 * est[worst]:.0f} % where a night like the validation nights "
                  f"gives {100 * ref[worst]:.0f} %)")
    else:
        worst = int(np.argmax(np.abs(est - ref)))
        word = {"ok": "<=", "check": ">", "do_not_use": f"> {severe:g} x"}[level]
        what = "estimated" if method == "bbse" else "predicted"
        reason = (f"prediction_shift: score {score:.2f} {word} threshold {threshold:.2f} "
                  f"({what} {names[worst]} {100 * est[worst]:.0f} % vs {100 * ref[worst]:.0f} % on validation nights)")
    return ShiftResult("prediction_shift", float(score), threshold, level, reason,
                       {n: float(v) for n, v in zip(names, est)})

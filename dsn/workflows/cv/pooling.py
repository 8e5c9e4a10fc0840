"""The figures of a cross-validation from its folds' test (and validation) predictions: pure arithmetic,
no file, no tracking store.

Each stage's test predictions of all folds are pooled into one confusion matrix (accuracy, macro-F1, Cohen's
kappa, per-class precision / recall / F1), beside the per-fold spread (mean ± sd of the fold figures); the
validation subjects of every fold are pooled the same way, and both get the pooled calibration figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: DeepSleepNet, Sleep-EDF-20 Fpz-Cz, 20-fold CV (Supratak et al. 2017, Table III/IV).
PAPER_ROW = {"acc": 0.820, "f1_macro": 0.769, "kappa": 0.76, "f1_W": 0.847, "f1_N1": 0.466, "f1_N2": 0.859,
             "f1_N3": 0.848, "f1_REM": 0.824}


def stage_figures(preds_by_fold: Sequence[Sequence[Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Pooled and per-fold figures of one stage from its per-fold test predictions.

    Returns a dict with ``pooled`` (acc, f1_macro, kappa, f1_/precision_/recall_<class>), ``confusion``
    (pooled counts, rows true), ``n_epochs``, ``per_fold`` (the same figures per fold), ``mean`` and ``sd``.
    """
    from dsn.evaluation import confusion_of, metrics_from_confusion

    cms = [confusion_of(p, len(class_names)) for p in preds_by_fold]
    pooled_cm = np.sum(cms, axis=0) if cms else np.zeros((len(class_names),) * 2, dtype=np.int64)
    per_fold = [metrics_from_confusion(cm, class_names, precision_recall=True) for cm in cms]
    keys = list(per_fold[0]) if per_fold else []
    mean = {k: float(np.nanmean([f[k] for f in per_fold])) for k in keys}
    sd = {k: float(np.nanstd([f[k] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0 for k in keys}
    return {"pooled": metrics_from_confusion(pooled_cm, class_names, precision_recall=True), "confusion": pooled_cm.tolist(), "n_epochs": int(pooled_cm.sum()),
            "per_fold": per_fold, "mean": mean, "sd": sd}


def summarise(folds: list[dict[str, Any]], stages: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """``cv_summary.json``: per stage figures; the final stage's also at the top level (``pooled.f1_macro``).

    Each stage's (and each validation block's) ``calibration``: ECE / Brier of the raw and the calibrated
    probabilities (each fold's test epochs calibrated with that fold's own temperature) and the accuracy of
    confident vs flagged epochs (each fold's own threshold) over the pooled epochs
    (:func:`dsn.workflows.calibration.pooled_calibration`).
    """
    from dsn.workflows.calibration import pooled_calibration

    out: dict[str, Any] = {"n_folds": len(folds), "class_names": list(class_names), "paper_sleep_edf20_fpzcz": PAPER_ROW,
                           "folds": [{k: v for k, v in f.items() if k not in ("predictions", "val_predictions")} for f in folds],
                           "stages": {}}
    for stage in stages:
        out["stages"][stage] = stage_figures([f["predictions"][stage] for f in folds], class_names)
        out["stages"][stage]["calibration"] = pooled_calibration(folds, stage)
    # the validation subjects of every fold, pooled the same way: what recipes should be compared on
    out["validation"] = {stage: {k: v for k, v in stage_figures([f.get("val_predictions", {}).get(stage, []) for f in folds],
                                                               class_names).items() if k != "per_fold"}
                         for stage in stages}
    for stage in stages:
        out["validation"][stage]["calibration"] = pooled_calibration(folds, stage, "val_predictions")
    final = out["stages"][stages[-1]]
    out.update({k: final[k] for k in ("pooled", "confusion", "n_epochs", "mean", "sd", "calibration")})
    out["final_stage"] = stages[-1]
    return out

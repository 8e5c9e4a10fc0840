"""Epoch-level sleep-staging metrics (accuracy, macro-F1, Cohen's kappa, per-stage F1).

Everything is derived from a single confusion matrix accumulated with
:class:`torchmetrics.classification.MulticlassConfusionMatrix`. Its state is one
``(C, C)`` integer tensor reduced with ``sum`` across processes, so the metrics are
exact over the whole split (not an average of per-batch values) and synchronise
correctly under DDP without any Python-side lists.

Absent-class policy
-------------------
A class that occurs in **neither** the targets nor the predictions of the evaluated
split (e.g. a validation night without N3) has an *undefined* F1 (``0 / 0``):

* its per-class ``f1_<stage>`` is ``NaN`` ("not applicable"), not ``0.0`` -- a 0 would
  read as "the model failed N3" when there simply was no N3 to find;
* ``f1_macro`` is the mean over the classes present in the targets **or** the
  predictions, i.e. ``sklearn.metrics.f1_score(y, p, average="macro",
  labels=present_labels)`` (equivalently ``zero_division=np.nan``), which is also
  what torchmetrics' ``MulticlassF1Score(average="macro")`` does (torchmetrics'
  ``average="none"`` would report the absent class as ``0.0`` instead of ``NaN``).

A class present in the targets but never predicted (or predicted but never in the
targets) has a well-defined F1 of ``0.0`` and counts in the macro average.
Cohen's kappa is ``NaN`` when chance agreement is 1 (a single class in both targets
and predictions), as in ``sklearn.metrics.cohen_kappa_score``. With no accumulated
epochs at all every metric is ``NaN``. Aggregate NaN-aware (``np.nanmean``) when
averaging per-night values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from dsn.data.labels import IGNORE_INDEX, STAGES

__all__ = ["SleepStageMetrics", "format_report", "metrics_from_confusion"]


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str] = STAGES) -> dict[str, float]:
    """Compute sleep-staging metrics from a confusion matrix.

    Parameters
    ----------
    cm : numpy.ndarray
        ``(C, C)`` non-negative counts; rows are true classes, columns predicted classes.
    class_names : sequence of str, default ``STAGES``
        One name per class, in class-index order; used for the ``f1_<name>`` keys.

    Returns
    -------
    dict of str to float
        ``acc`` (micro accuracy), ``f1_macro``, ``kappa`` (unweighted Cohen's kappa) and
        ``f1_<name>`` for every class, without any split prefix. Undefined values are
        ``NaN`` (see the module docstring for the absent-class policy).

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
    denom = true_count + pred_count  # == 2TP + FP + FN
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1.0), np.nan)

    nan = float("nan")
    if total > 0:
        acc = float(tp.sum() / total)
        p_o = tp.sum() / total
        p_e = float((true_count * pred_count).sum() / total**2)
        kappa = float((p_o - p_e) / (1.0 - p_e)) if p_e < 1.0 else nan
        f1_macro = float(np.nanmean(f1))  # at least one class is present when total > 0
    else:
        acc = kappa = f1_macro = nan

    out = {"acc": acc, "f1_macro": f1_macro, "kappa": kappa}
    out.update({f"f1_{name}": float(v) for name, v in zip(class_names, f1, strict=True)})
    return out


class SleepStageMetrics(torch.nn.Module):
    """Whole-split sleep-staging metrics backed by one torchmetrics confusion matrix.

    Use one instance per split (``train``/``val``/``test``) as an attribute of a
    LightningModule so that its state follows the module's device. Call
    :meth:`update` every step, :meth:`compute` at epoch end (values are already
    synchronised across DDP ranks, so log them with ``sync_dist=False``), then
    :meth:`reset`.

    Parameters
    ----------
    split : str
        Prefix of the keys returned by :meth:`compute` (``f"{split}/acc"``, ...).
    n_classes : int, default 5
        Number of classes.
    class_names : sequence of str, default ``STAGES``
        Class names in index order, used for the per-class keys ``f1_<name>``.
    ignore_index : int, default ``IGNORE_INDEX``
        Target value of epochs to drop (unscored / movement).

    Notes
    -----
    A class absent from both targets and predictions gets ``f1_<name> = NaN`` and is
    left out of ``f1_macro``; see the module docstring.
    """

    def __init__(
        self,
        split: str,
        n_classes: int = 5,
        class_names: Sequence[str] = STAGES,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if len(class_names) != n_classes:
            raise ValueError(f"len(class_names)={len(class_names)} != n_classes={n_classes}")
        self.split = split
        self.n_classes = n_classes
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        # Ignored entries are dropped in ``update``; torchmetrics validates the rest
        # (any other out-of-range target raises instead of being silently counted).
        self.confmat = MulticlassConfusionMatrix(num_classes=n_classes, ignore_index=None)

    def _flatten(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Turn logits/indices and targets into 1-D class-index tensors, ignored entries dropped."""
        preds = preds.detach()
        target = target.detach()
        if preds.ndim == target.ndim + 1:  # logits / probabilities, class dim last
            if preds.shape[:-1] != target.shape or preds.shape[-1] != self.n_classes:
                raise ValueError(
                    f"logits shape {tuple(preds.shape)} does not match target shape "
                    f"{tuple(target.shape)} with {self.n_classes} classes in the last dim"
                )
            preds = preds.argmax(dim=-1)
        elif preds.ndim == target.ndim:  # class indices
            if preds.shape != target.shape:
                raise ValueError(f"preds shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
            if preds.is_floating_point():
                raise ValueError(
                    "floating-point preds must be logits with a trailing class dimension; "
                    "pass class indices as an integer tensor"
                )
        else:
            raise ValueError(f"incompatible shapes: preds {tuple(preds.shape)}, target {tuple(target.shape)}")
        preds = preds.reshape(-1).long()
        target = target.reshape(-1).long()
        keep = target != self.ignore_index
        return preds[keep], target[keep]

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Parameters
        ----------
        preds : torch.Tensor
            Logits or probabilities of shape ``(N, C)`` or ``(B, L, C)`` (argmax over the
            last dim), or integer class indices of shape ``(N,)`` or ``(B, L)``.
        target : torch.Tensor
            Integer labels of shape ``(N,)`` or ``(B, L)``; entries equal to
            ``ignore_index`` are dropped.
        """
        p, t = self._flatten(preds, target)
        self.confmat.update(p, t)

    def confusion_matrix(self) -> Tensor:
        """Return the accumulated (DDP-synchronised) confusion matrix.

        Returns
        -------
        torch.Tensor
            ``(C, C)`` int64 counts; rows are true classes, columns predicted classes.
        """
        return self.confmat.compute().long()

    def compute(self) -> dict[str, Tensor]:
        """Compute the metrics over everything accumulated since the last reset.

        Returns
        -------
        dict of str to torch.Tensor
            Float32 scalars (on the state's device) keyed ``f"{split}/{name}"`` for
            ``name`` in ``acc``, ``f1_macro``, ``kappa``, ``f1_<stage>``.
        """
        cm = self.confusion_matrix()
        values = metrics_from_confusion(cm.cpu().numpy(), self.class_names)
        return {f"{self.split}/{k}": torch.tensor(v, dtype=torch.float32, device=cm.device) for k, v in values.items()}

    def reset(self) -> None:
        """Clear the accumulated confusion matrix."""
        self.confmat.reset()

    def forward(self, preds: Tensor, target: Tensor) -> None:
        """Alias of :meth:`update` (so the module can be called)."""
        self.update(preds, target)


def _fmt(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.3f}"


def format_report(
    metrics: Mapping[str, float | Tensor],
    split: str,
    class_names: Sequence[str] = STAGES,
) -> str:
    """Format a small per-stage F1 table for the terminal.

    Parameters
    ----------
    metrics : mapping of str to float or torch.Tensor
        Output of :meth:`SleepStageMetrics.compute` (keys ``f"{split}/..."``) or of
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

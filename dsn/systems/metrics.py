"""Epoch-level sleep-staging metrics of the systems (accuracy, macro-F1, Cohen's kappa, per-stage F1).

:class:`SleepStageMetrics` is a torchmetrics :class:`~torchmetrics.classification.MulticlassConfusionMatrix`:
its state is one ``(C, C)`` integer tensor reduced with ``sum`` across processes, so the metrics are exact
over the whole split (not an average of per-batch values) and synchronise correctly under DDP. Every figure
is derived from that matrix by :func:`dsn.evaluation.metrics_from_confusion` (absent-class policy: see
:mod:`dsn.evaluation`), which is re-exported here with :func:`~dsn.evaluation.format_report`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from dsn.data.labels import IGNORE_INDEX, STAGES
from dsn.evaluation import format_report, metrics_from_confusion

__all__ = ["SleepStageMetrics", "format_report", "metrics_from_confusion"]


class SleepStageMetrics(MulticlassConfusionMatrix):
    """Whole-split sleep-staging metrics: a torchmetrics confusion matrix whose ``compute()`` returns the figures.

    Use one instance per split (``train``/``val``/``test``) as an attribute of a LightningModule so that
    its state follows the module's device. Call :meth:`update` every step, :meth:`compute` at epoch end
    (values are already synchronised across DDP ranks, so log them with ``sync_dist=False`` or a ``max``
    reduction), then :meth:`reset`.

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
    ``update`` accepts the class dimension *last* (``(B, L, C)`` logits, the systems' layout; torchmetrics
    expects it second) and counts without boolean-mask indexing: every pair goes to a fixed-size histogram
    whose extra bin collects the ignored epochs, so a step never waits for the device to know how many
    epochs were scored. Arguments are checked by shape only (``validate_args=False``); an out-of-range
    target fails in the scatter (``RuntimeError``) instead of being counted.
    """

    def __init__(
        self,
        split: str,
        n_classes: int = 5,
        class_names: Sequence[str] = STAGES,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if len(class_names) != n_classes:
            raise ValueError(f"len(class_names)={len(class_names)} != n_classes={n_classes}")
        super().__init__(num_classes=n_classes, ignore_index=ignore_index, validate_args=False)
        self.split = split
        self.n_classes = n_classes
        self.class_names = tuple(class_names)

    def _labels(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (class dim last) or indices and targets -> two flat int64 tensors of equal size."""
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
        return preds.detach().reshape(-1).long(), target.detach().reshape(-1).long()

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Parameters
        ----------
        preds : torch.Tensor
            Logits or probabilities of shape ``(N, C)`` or ``(B, L, C)`` (argmax over the last dim), or
            integer class indices of shape ``(N,)`` or ``(B, L)``.
        target : torch.Tensor
            Integer labels of shape ``(N,)`` or ``(B, L)``; entries equal to ``ignore_index`` are dropped.
        """
        p, t = self._labels(preds, target)
        c = self.n_classes
        cell = torch.where(t == self.ignore_index, c * c, t * c + p)  # ignored -> the extra bin
        counts = torch.zeros(c * c + 1, dtype=torch.long, device=cell.device)
        counts.scatter_add_(0, cell, torch.ones_like(cell))
        self.confmat += counts[: c * c].reshape(c, c)

    def confusion_matrix(self) -> Tensor:
        """Return the accumulated confusion matrix, summed over DDP processes.

        Returns
        -------
        torch.Tensor
            ``(C, C)`` int64 counts; rows are true classes, columns predicted classes.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            return self.confmat.clone().long()

    def compute(self) -> dict[str, Tensor]:
        """Compute the metrics over everything accumulated since the last reset (synchronised state).

        Returns
        -------
        dict of str to torch.Tensor
            Float32 scalars (on the state's device) keyed ``f"{split}/{name}"`` for ``name`` in ``acc``,
            ``f1_macro``, ``kappa``, ``f1_<stage>``.
        """
        values = metrics_from_confusion(self.confmat.cpu().numpy(), self.class_names)
        dev = self.confmat.device
        return {f"{self.split}/{k}": torch.tensor(v, dtype=torch.float32, device=dev) for k, v in values.items()}

"""Shared machinery of the training systems: metrics per split, kept predictions, Adam parameter groups."""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from dsn.data.labels import IGNORE_INDEX, N_CLASSES
from dsn.systems.metrics import SleepStageMetrics

EVAL_SPLITS = ("val", "test")

#: Which first conv layers get L2: the official code's small branch, the paper's both, or none.
L2Layers = Literal["small", "both", "none"]


class SleepSystem(L.LightningModule):
    """Base of :class:`PretrainSystem` and :class:`FinetuneSystem` (not used on its own).

    Keeps one :class:`SleepStageMetrics` per split, logs ``{split}/loss`` and the whole-split metrics
    at the end of every epoch, and keeps the last evaluation's targets and predictions
    (:attr:`eval_outputs`) and confusion matrix (:attr:`confusion`) for reports and figures.
    """

    def __init__(self, n_outputs: int = N_CLASSES):
        super().__init__()
        self.metrics = nn.ModuleDict({f"{s}_metrics": SleepStageMetrics(s, n_classes=n_outputs) for s in ("train", *EVAL_SPLITS)})
        self.confusion: dict[str, np.ndarray] = {}
        self.eval_outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.last_metrics: dict[str, float] = {}
        self._eval_buffer: dict[str, list[tuple[Tensor, Tensor]]] = {}

    # -- helpers for subclasses
    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)

    def _step_end(self, split: str, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        batch = int((y != IGNORE_INDEX).sum())
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=max(batch, 1), prog_bar=split == "train")
        preds = logits.argmax(-1)
        self.metrics[f"{split}_metrics"].update(preds, y)
        if split in EVAL_SPLITS:
            self._eval_buffer.setdefault(split, []).append((y.detach().reshape(-1).cpu(), preds.detach().reshape(-1).cpu()))

    def _epoch_end(self, split: str) -> None:
        m = self.metrics[f"{split}_metrics"]
        values = m.compute()
        self.confusion[split] = m.confusion_matrix().cpu().numpy()
        m.reset()
        if split == "train":  # the oversampled training set: accuracy and macro-F1 only
            values = {k: v for k, v in values.items() if k in ("train/acc", "train/f1_macro")}
        self.last_metrics.update({k: float(v) for k, v in values.items()})
        macro = values.pop(f"{split}/f1_macro", None)
        self.log_dict(values)
        if macro is not None:  # the live validation macro-F1 in the progress bar
            self.log(f"{split}/f1_macro", macro, prog_bar=split != "train")
        buf = self._eval_buffer.pop(split, [])
        if buf:
            self.eval_outputs[split] = (torch.cat([b[0] for b in buf]).numpy(), torch.cat([b[1] for b in buf]).numpy())

    def _shared_step(self, batch, split: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    @staticmethod
    def l2_groups(
        decayed: list[nn.Parameter], params: list[nn.Parameter], lr: float, weight_decay: float
    ) -> list[dict]:
        """Adam groups: ``decayed`` with coupled L2 ``weight_decay`` (the official ``wd * sum(w**2) / 2``
        loss term), the rest of ``params`` without."""
        ids = {id(p) for p in decayed}
        groups = [{"params": [p for p in params if id(p) in ids], "lr": lr, "weight_decay": weight_decay}]
        groups.append({"params": [p for p in params if id(p) not in ids], "lr": lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]


"""What a fit returns: per-recording predictions, one stage's result, the whole fit's result.

The small module that the stage steps, the callbacks and the recorder all import (it imports nothing
of :mod:`dsn.workflows`), so no file of the workflow core imports back from :mod:`dsn.workflows.fit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsn.evaluation import confusion_of  # re-exported: the pooled confusion counts of predictions

__all__ = ["FitResult", "Prediction", "StageResult", "confusion_of", "load_predictions", "save_predictions"]


@dataclass
class Prediction:
    """A model's output over one recording.

    Attributes
    ----------
    name : recording name (``SC4001E0``).
    subject : subject id (``SC400``).
    y_true : ndarray (n_epochs,) int64 expert labels (``-1`` masked).
    proba : ndarray (n_epochs, n_classes) float32 class probabilities.
    """

    name: str
    subject: str
    y_true: np.ndarray
    proba: np.ndarray

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(-1)


@dataclass
class StageResult:
    """What one stage produced: its run, the selected model's metrics, confusion matrices and predictions."""

    name: str
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)  # "val/f1_macro", "test/kappa", ...
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (C, C) counts
    predictions: dict[str, list[Prediction]] = field(default_factory=dict)  # split -> per recording
    selected_epoch: int | None = None
    best_checkpoint: str | None = None
    selected_checkpoint: str | None = None
    model_uri: str | None = None
    scorer: Any = field(default=None, repr=False)  # the selected model (a SleepScorer), in memory
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train (trainer.fit), evaluate, log


@dataclass
class FitResult:
    """The result of :func:`dsn.workflows.run.run_fit`."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    stages: list[StageResult]
    registered: tuple[str, str] | None = None  # (registered-model name, version)
    wall_seconds: float = 0.0  # the whole run_fit call, from config check to the last log
    data_summary: dict = field(default_factory=dict, repr=False)  # subjects, recordings, class counts per split

    @property
    def parent_run_id(self) -> str:  # the fit's own top-level run
        return self.run_id

    def stage(self, name: str) -> StageResult:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this fit (stages run: {[s.name for s in self.stages]})")

    @property
    def final(self) -> StageResult | None:
        return self.stages[-1] if self.stages else None

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.final.metrics) if self.final else {}


def save_predictions(path: str | Path, preds: Sequence[Prediction]) -> None:
    """Write predictions to one ``.npz`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"names": np.array([p.name for p in preds]), "subjects": np.array([p.subject for p in preds])}
    for i, p in enumerate(preds):
        arrays[f"y_{i}"] = np.asarray(p.y_true)
        arrays[f"p_{i}"] = np.asarray(p.proba, dtype=np.float32)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)


def load_predictions(path: str | Path) -> list[Prediction]:
    """Read predictions written by :func:`save_predictions`."""
    with np.load(path) as z:
        return [Prediction(str(n), str(s), z[f"y_{i}"], z[f"p_{i}"]) for i, (n, s) in enumerate(zip(z["names"], z["subjects"]))]

"""``dsn cv``: subject-wise k-fold cross-validation, the paper's evaluation, with pooled figures.

Each fold is :func:`dsn.workflows.run.run_fit` (both stages; validation subjects drawn from the
training side of the fold) nested under one cv parent run. The test predictions of all folds are
pooled into one confusion matrix, from which accuracy, macro-F1, Cohen's kappa and per-class
precision / recall / F1 are computed, for the CNN-only stage and for the full model, beside the
per-fold spread (mean ± sd of the fold figures) and the paper's published row.

Resumable fold by fold: running the same command again finds the cv run by its config, skips the
finished folds (their predictions are read back from disk) and resumes an interrupted one.

Its modules, imports running one way (pooling, report <- procs <- store <- runner <- command):

- :mod:`~dsn.workflows.cv.pooling`: the pooled and per-fold figures (pure arithmetic);
- :mod:`~dsn.workflows.cv.report`: the tables (:class:`~dsn.workflows.cv.report.MetricTable`, shared with
  ``dsn evaluate``), the one-line notes and the ``--out`` folder;
- :mod:`~dsn.workflows.cv.procs`: file locks and the ``--parallel`` fold processes;
- :mod:`~dsn.workflows.cv.store`: the cv run in the tracking store, fold states, fold results read back;
- :mod:`~dsn.workflows.cv.runner`: sequential, one-fold, parallel and collect runs, registration;
- :mod:`~dsn.workflows.cv.command`: the command: its parser, ``parse``, ``run``, ``render`` and :func:`main`.
"""

from __future__ import annotations

from dsn.workflows.cv.command import CV_KEYS, build_parser, fit_config, main
from dsn.workflows.cv.pooling import PAPER_ROW, stage_figures, summarise
from dsn.workflows.cv.report import MetricTable, format_calibration, format_fold, format_missing, format_summary
from dsn.workflows.cv.runner import FOLD_DEVICES, run_cv
from dsn.workflows.cv.store import fold_states

__all__ = ["CV_KEYS", "FOLD_DEVICES", "PAPER_ROW", "MetricTable", "build_parser", "fit_config", "fold_states",
           "format_calibration", "format_fold", "format_missing", "format_summary", "main", "run_cv",
           "stage_figures", "summarise"]

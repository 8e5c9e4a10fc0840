"""What ``dsn cv`` shows and writes: the metric table (shared with ``dsn evaluate``), the paper-style cv table,
the one-line notes of ``--fold`` and ``--collect``, and the ``--out`` folder. Text is returned, never printed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MetricTable:
    """A table of headline figures: accuracy, macro-F1 and kappa, then the F1 of each class.

    Accuracy and F1 are shown in % with one decimal, kappa as a fraction with three; a missing or NaN figure
    is ``n/a``. ``count``: an optional column between the label and the figures (``("epochs", 8)``: its
    title and width), filled by :meth:`row`'s ``count``.
    """

    class_names: Sequence[str]
    label_width: int = 34
    cell_width: int = 11
    count: tuple[str, int] | None = None

    @property
    def columns(self) -> list[str]:
        return ["acc", "f1_macro", "kappa", *[f"f1_{c}" for c in self.class_names]]

    def _lead(self, label: str, count: Any = "") -> str:
        return f"{label:<{self.label_width}}" + (f"{count:>{self.count[1]}}" if self.count else "")

    def header(self) -> str:
        """The column titles (``MF1``, ``F1 W`` ...)."""
        names = (c.replace("f1_macro", "MF1").replace("f1_", "F1 ") for c in self.columns)
        return self._lead("", self.count[0] if self.count else "") + "".join(f"{n:>{self.cell_width}}" for n in names)

    def cell(self, column: str, value: float | None) -> str:
        w = self.cell_width
        if value is None or math.isnan(value):
            return f"{'n/a':>{w}}"
        return f"{value:>{w}.3f}" if column == "kappa" else f"{100 * value:>{w}.1f}"

    def row(self, label: str, values: Mapping[str, float], count: Any = "") -> str:
        """One row of figures (``values[column]``; a missing one is ``n/a``)."""
        return self._lead(label, count) + "".join(self.cell(c, values.get(c, float("nan"))) for c in self.columns)

    def spread_row(self, label: str, mean: Mapping[str, float], sd: Mapping[str, float]) -> str:
        """``mean±sd`` of each figure (blank where the mean is missing or NaN)."""
        w = self.cell_width
        return self._lead(label) + "".join(
            f"{'':>{w}}" if math.isnan(mean.get(c, float('nan'))) else
            (f"{mean[c]:.2f}±{sd[c]:.2f}".rjust(w) if c == "kappa" else f"{100 * mean[c]:.1f}±{100 * sd[c]:.1f}".rjust(w))
            for c in self.columns
        )  # fmt: skip


def format_summary(summary: dict[str, Any]) -> str:
    """The paper-style table: pooled figures of each stage, the fold spread, and the paper's row."""
    table = MetricTable(summary["class_names"])
    head = table.header()
    lines = [f"Cross-validation, {summary['n_folds']} folds, {summary['n_epochs']} test epochs pooled", head, "-" * len(head)]
    for stage, fig in summary["stages"].items():
        label = "CNN only (pretrain)" if stage == "pretrain" else "full model (finetune)"
        lines.append(table.row(f"dsn {label}, pooled", fig["pooled"]))
        val = summary.get("validation", {}).get(stage)
        if val and val.get("n_epochs"):
            lines.append(table.row("  validation subjects, pooled", val["pooled"]))
        lines.append(table.spread_row("  per fold, mean±sd", fig["mean"], fig["sd"]))
    lines.append(table.row("paper: Sleep-EDF-20 Fpz-Cz (2017)", summary["paper_sleep_edf20_fpzcz"]))
    lines.append("(acc, MF1, F1 in %; kappa as a fraction; compare recipes on the validation rows, "
                 "report the test rows)")
    cal = [format_calibration(stage, fig["calibration"]) for stage, fig in summary["stages"].items() if fig.get("calibration")]
    if cal:
        lines += ["Calibration, pooled test epochs (each fold's own temperature and low-confidence threshold):", *cal]
    return "\n".join(lines)


def format_calibration(stage: str, c: dict[str, float]) -> str:
    """One line: pooled ECE and Brier before -> after calibration, accuracy of confident vs flagged epochs."""
    from dsn.workflows.calibration import format_figures

    return f"  {stage}: {format_figures(c)}"


def fold_list(folds: Sequence[int]) -> str:
    return ", ".join(str(k) for k in folds)


def format_fold(res: dict[str, Any]) -> str:
    """One line after ``dsn cv --fold K``: the fold's run, and which folds are still missing."""
    k, n = res["fold"], res["n_folds"]
    head = f"fold {k} ({k + 1}/{n}) {'trained' if res['trained'] else 'had finished earlier'}: run {res['run_id']} of cv run {res['cv_run_id']}"
    missing = res["missing_folds"]
    if missing:
        return f"{head}; folds not finished yet: {fold_list(missing)} (dsn cv --collect with the same options pools the finished ones)"
    return f"{head}; every fold has finished: dsn cv --collect with the same options pools them"


def format_missing(summary: dict[str, Any]) -> str:
    """One line naming the folds a pooled summary lacks ('' when none is missing)."""
    missing = summary.get("missing_folds") or []
    if not missing:
        return ""
    return (f"folds missing (not finished): {fold_list(missing)} of {summary['n_folds'] + len(missing)}; these figures pool "
            "the others; train the missing ones with dsn cv --fold K (or --parallel N) and the same options")


def write_out(folder: Path, summary: dict[str, Any]) -> None:
    """``--out``: ``cv_summary.json`` and each stage's row-normalised pooled confusion matrix (PNG)."""
    import numpy as np

    from dsn import plots
    from dsn.hypnogram import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "cv_summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float))
    for stage, fig in summary["stages"].items():
        f = plots.confusion_matrix_figure(np.array(fig["confusion"]), normalize=True, title=f"{stage}: pooled test confusion")
        f.savefig(folder / f"confusion_{stage}.png", dpi=120)

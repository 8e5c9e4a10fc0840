"""Headless matplotlib figures for reports and MLflow artifacts.

Every function builds a :class:`matplotlib.figure.Figure` directly (object-oriented
API with an attached Agg canvas) instead of going through :mod:`matplotlib.pyplot`.
Consequently importing this module never changes the global backend (no
``matplotlib.use``, so an interactive session or notebook is left alone), no
display is needed, and figures are not registered in pyplot's figure manager, so
they are garbage-collected normally and never need ``plt.close``. Save them with
``fig.savefig(path)`` or ``mlflow.log_figure(fig, "name.png")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from dsn.data.labels import IGNORE_INDEX, STAGES, true_runs

__all__ = ["confusion_matrix_figure", "hypnogram_figure", "training_curves_figure"]

#: Top-to-bottom order of the stages on a clinical hypnogram.
CLINICAL_ORDER: tuple[str, ...] = ("W", "REM", "N1", "N2", "N3")


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_matrix_figure(
    cm: np.ndarray,
    class_names: Sequence[str] = STAGES,
    normalize: bool = False,
    title: str = "",
) -> Figure:
    """Plot an annotated confusion matrix.

    Parameters
    ----------
    cm : numpy.ndarray
        ``(C, C)`` counts; rows are true classes, columns predicted classes.
    class_names : sequence of str, default ``STAGES``
        Tick labels in class-index order.
    normalize : bool, default False
        If True, show row-normalised values (per-class recall, rows sum to 1); the
        y tick labels then carry each row's support ``n``. Rows without support are
        shown as ``-``.
    title : str, default ""
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with ``xlabel="Predicted"`` and ``ylabel="True"`` plus a colour bar.
    """
    counts = np.asarray(cm)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"cm must have shape ({n}, {n}), got {counts.shape}")
    support = counts.sum(axis=1)
    if normalize:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = counts / support[:, None].astype(np.float64)
        values[support == 0] = np.nan
        vmax = 1.0
    else:
        values = counts.astype(np.float64)
        vmax = max(float(values.max()), 1.0)

    fig = _new_figure((1.1 * n + 1.8, 1.0 * n + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true" if normalize else "epochs")

    for i in range(n):
        for j in range(n):
            v = values[i, j]
            if np.isnan(v):
                text = "-"
            elif normalize:
                text = f"{v:.2f}"
            else:
                text = f"{int(counts[i, j])}"
            color = "white" if not np.isnan(v) and v > 0.5 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)

    ax.set_xticks(range(n), labels=list(class_names))
    ylabels = [f"{name}\n(n={int(s)})" for name, s in zip(class_names, support, strict=True)]
    ax.set_yticks(range(n), labels=ylabels if normalize else list(class_names))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if title:
        ax.set_title(title)
    return fig


def hypnogram_figure(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    epoch_sec: float = 30.0,
    title: str = "",
    class_names: Sequence[str] = STAGES,
) -> Figure:
    """Plot expert and model hypnograms of one night, one above the other.

    Stages are drawn as step plots in clinical order (W at the top, then REM, N1,
    N2, N3) against time in hours. Epochs equal to ``IGNORE_INDEX`` are gaps in
    the corresponding trace; epochs unscored by the expert are shaded grey in both
    panels. Epochs where both are scored and disagree are shaded red in the model
    panel, whose label reports the agreement (accuracy) over scored epochs.

    Parameters
    ----------
    y_true : numpy.ndarray
        ``(T,)`` expert labels (class indices or ``IGNORE_INDEX``).
    y_pred : numpy.ndarray
        ``(T,)`` model labels (class indices or ``IGNORE_INDEX``).
    epoch_sec : float, default 30.0
        Epoch duration in seconds.
    title : str, default ""
        Figure title.
    class_names : sequence of str, default ``STAGES``
        Class names in index order. Names found in the clinical order are placed
        accordingly; any others follow below in index order.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes sharing the time axis: ``axes[0]`` expert, ``axes[1]`` model.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred lengths differ: {y_true.shape} vs {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("empty hypnogram")
    n_classes = len(class_names)

    # Class index -> vertical level (0 = top).
    order = [class_names.index(s) for s in CLINICAL_ORDER if s in class_names]
    order += [i for i in range(n_classes) if i not in order]
    level = np.empty(n_classes, dtype=np.float64)
    level[order] = np.arange(n_classes)

    def to_levels(y: np.ndarray) -> np.ndarray:
        valid = (y >= 0) & (y < n_classes)
        out = np.full(y.shape, np.nan)
        out[valid] = level[y[valid].astype(int)]
        return out

    hours = np.arange(y_true.size + 1) * (epoch_sec / 3600.0)
    scored = y_true != IGNORE_INDEX
    both = scored & (y_pred != IGNORE_INDEX)
    mismatch = both & (y_true != y_pred)
    agreement = float((~mismatch[both]).mean()) if both.any() else float("nan")

    fig = _new_figure((11.0, 4.8))
    axes = fig.subplots(2, 1, sharex=True)
    panels = (
        (axes[0], y_true, "Expert", "tab:blue"),
        (axes[1], y_pred, f"Model\n(agreement {agreement:.1%})", "tab:orange"),
    )
    for ax, y, label, color in panels:
        lv = to_levels(y)
        # Repeat the last value so that the final epoch spans its full 30 s.
        ax.step(hours, np.append(lv, lv[-1:]), where="post", color=color, linewidth=1.2)
        for start, stop in true_runs(~scored):
            ax.axvspan(hours[start], hours[stop], color="0.85", linewidth=0, zorder=0)
        ax.set_yticks(range(n_classes), labels=[class_names[i] for i in order])
        ax.set_ylim(n_classes - 0.5, -0.5)  # level 0 (W) at the top
        ax.set_ylabel(label)
        ax.grid(axis="y", color="0.92", linewidth=0.8)
        ax.set_xlim(hours[0], hours[-1] if hours[-1] > 0 else 1.0)
    for start, stop in true_runs(mismatch):
        axes[1].axvspan(hours[start], hours[stop], color="tab:red", alpha=0.3, linewidth=0, zorder=0)
    axes[1].set_xlabel("Time (h)")
    handles = []
    if (~scored).any():
        handles.append(Patch(color="0.85", label="unscored"))
    if mismatch.any():
        handles.append(Patch(color="tab:red", alpha=0.3, label="disagreement"))
    if handles:
        fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def training_curves_figure(
    history: Mapping[str, Sequence[float]],
    title: str = "",
    xlabel: str = "epoch",
) -> Figure:
    """Plot training curves: losses on the left, other metrics on the right.

    Parameters
    ----------
    history : mapping of str to sequence of float
        Metric name (e.g. ``"train/loss"``, ``"val/f1_macro"``) -> one value per
        epoch. Keys containing ``"loss"`` go to the left panel.
    title : str, default ""
        Figure title.
    xlabel : str, default "epoch"
        Label of the shared x axis.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: ``axes[0]`` losses, ``axes[1]`` other metrics.
    """
    fig = _new_figure((10.0, 3.8))
    ax_loss, ax_metric = fig.subplots(1, 2, sharex=True)
    for name, values in history.items():
        y = np.asarray(values, dtype=np.float64)
        ax = ax_loss if "loss" in name else ax_metric
        ax.plot(np.arange(1, y.size + 1), y, marker="o", markersize=3, label=name)
    for ax, ylabel in ((ax_loss, "loss"), (ax_metric, "metric")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(color="0.92")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


#: Colour of each stage in :func:`hypnodensity_figure` (by stage name; others cycle through tab10).
STAGE_COLORS: dict[str, str] = {
    "W": "#f2b134",
    "N1": "#9ecae1",
    "N2": "#4292c6",
    "N3": "#08306b",
    "REM": "#d6604d",
}


def hypnodensity_figure(
    stages: np.ndarray,
    proba: np.ndarray,
    epoch_sec: float = 30.0,
    title: str | None = None,
    class_names: Sequence[str] = STAGES,
    low_confidence: np.ndarray | None = None,
) -> Figure:
    """Plot a predicted night: the hypnogram on top, the hypnodensity beneath.

    The hypnogram is drawn like :func:`hypnogram_figure` (step plot, clinical order with W at the
    top, unscored epochs as grey gaps). The hypnodensity stacks the class probabilities of every
    epoch (one colour per stage, N3 at the bottom up to W at the top, so the bands follow the
    hypnogram's levels); each column sums to 1.

    Parameters
    ----------
    stages : numpy.ndarray
        ``(T,)`` predicted class indices (``IGNORE_INDEX`` = unscored).
    proba : numpy.ndarray
        ``(T, C)`` class probabilities, rows summing to 1.
    epoch_sec : float, default 30.0
        Epoch duration in seconds.
    title : str, optional
        Figure title.
    class_names : sequence of str, default ``STAGES``
        Class names in index order (``C`` of them).
    low_confidence : numpy.ndarray, optional
        ``(T,)`` booleans: epochs flagged as low-confidence, shaded (hatched red) on the hypnogram.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes sharing the time axis in hours, ``[0, T * epoch_sec / 3600]``: ``axes[0]`` the
        hypnogram, ``axes[1]`` the hypnodensity (y in ``[0, 1]``, legend in class order).

    Raises
    ------
    ValueError
        If the shapes do not match, the night is empty or ``epoch_sec <= 0``.
    """
    y = np.asarray(stages).reshape(-1)
    p = np.asarray(proba, dtype=np.float64)
    n_classes = len(class_names)
    if y.size == 0:
        raise ValueError("empty hypnogram")
    if p.shape != (y.size, n_classes):
        raise ValueError(f"proba must have shape ({y.size}, {n_classes}) to match stages, got {p.shape}")
    if not epoch_sec > 0:
        raise ValueError(f"epoch_sec must be positive, got {epoch_sec}")

    order = [class_names.index(s) for s in CLINICAL_ORDER if s in class_names]
    order += [i for i in range(n_classes) if i not in order]
    level = np.empty(n_classes, dtype=np.float64)
    level[order] = np.arange(n_classes)
    valid = (y >= 0) & (y < n_classes)
    lv = np.full(y.shape, np.nan)
    lv[valid] = level[y[valid].astype(int)]

    hours = np.arange(y.size + 1) * (epoch_sec / 3600.0)
    fig = _new_figure((11.0, 4.8))
    ax_hyp, ax_dens = fig.subplots(2, 1, sharex=True, height_ratios=(1.0, 1.3))

    ax_hyp.step(hours, np.append(lv, lv[-1:]), where="post", color="tab:orange", linewidth=1.2)
    for start, stop in true_runs(~valid):
        ax_hyp.axvspan(hours[start], hours[stop], color="0.85", linewidth=0, zorder=0)
    if low_confidence is not None:
        flagged = np.asarray(low_confidence, dtype=bool).reshape(-1)
        if flagged.shape != y.shape:
            raise ValueError(f"low_confidence must have shape {y.shape} to match stages, got {flagged.shape}")
        for i, (start, stop) in enumerate(true_runs(flagged)):
            ax_hyp.axvspan(hours[start], hours[stop], color="tab:red", alpha=0.18, linewidth=0, zorder=0,
                           label="low confidence" if i == 0 else None)
        if flagged.any():
            ax_hyp.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax_hyp.set_yticks(range(n_classes), labels=[class_names[i] for i in order])
    ax_hyp.set_ylim(n_classes - 0.5, -0.5)
    ax_hyp.set_ylabel("Stage")
    ax_hyp.grid(axis="y", color="0.92", linewidth=0.8)

    palette = [f"C{i}" for i in range(10)]
    colors = [STAGE_COLORS.get(name, palette[i % 10]) for i, name in enumerate(class_names)]
    stack = order[::-1]  # bottom -> top: deepest level first, W last
    values = np.vstack([p, p[-1:]]).T  # repeat the last epoch so it spans its full width
    polys = ax_dens.stackplot(
        hours,
        values[stack],
        colors=[colors[i] for i in stack],
        labels=[class_names[i] for i in stack],
        step="post",
        linewidth=0,
    )
    by_class = dict(zip(stack, polys))
    ax_dens.legend(
        [by_class[i] for i in range(n_classes)],
        list(class_names),
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        frameon=False,
    )
    ax_dens.set_ylim(0.0, 1.0)
    ax_dens.set_ylabel("Probability")
    ax_dens.set_xlabel("Time (h)")
    ax_dens.set_xlim(hours[0], hours[-1])
    if title:
        fig.suptitle(title)
    return fig


__all__ += ["hypnodensity_figure"]


def reliability_figure(raw: Mapping[str, np.ndarray], calibrated: Mapping[str, np.ndarray] | None = None,
                       title: str = "") -> Figure:
    """Reliability diagram: accuracy against confidence per bin, before and after calibration.

    Parameters
    ----------
    raw, calibrated : mapping
        Outputs of :func:`dsn.evaluation.reliability_bins` (``edges``, ``confidence``, ``accuracy``,
        ``count``) for the raw and the calibrated probabilities (``calibrated`` optional).
    title : str, default ""
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes, both in ``[0, 1]``: the diagonal (perfect calibration), one marker line per input (empty
        bins left out) and, beneath, the share of epochs per bin of the raw probabilities as bars.
    """
    fig = _new_figure((5.2, 5.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    edges = np.asarray(raw["edges"])
    share = np.asarray(raw["count"], dtype=np.float64) / max(1, int(np.sum(raw["count"])))
    ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color="0.85", label="share of epochs")
    for bins, label, color in ((raw, "raw softmax", "tab:orange"), (calibrated, "calibrated", "tab:blue")):
        if bins is None:
            continue
        filled = np.asarray(bins["count"]) > 0
        ax.plot(np.asarray(bins["confidence"])[filled], np.asarray(bins["accuracy"])[filled], marker="o",
                markersize=4, color=color, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Confidence (top-class probability)")
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


__all__ += ["reliability_figure"]

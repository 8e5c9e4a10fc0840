"""Smoke/structure tests of dsn.plots (headless)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from dsn.data.labels import IGNORE_INDEX, STAGES
from dsn.plots import confusion_matrix_figure, hypnogram_figure, training_curves_figure

CM = np.array(
    [
        [84, 4, 4, 5, 3],
        [0, 19, 0, 0, 1],
        [10, 10, 481, 13, 6],
        [0, 0, 0, 0, 0],  # no N3 in this night
        [5, 5, 4, 3, 193],
    ]
)


def _night(seed: int = 0, n: int = 960) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 5, n // 20), 20)[:n]
    p = y.copy()
    flip = rng.random(n) < 0.1
    p[flip] = rng.integers(0, 5, flip.sum())
    y[100:130] = IGNORE_INDEX
    return y, p


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_is_headless_and_leaves_backend_alone() -> None:
    # In a fresh interpreter with no display: importing dsn.plots neither imports pyplot
    # nor changes the configured backend, and figures still render to PNG.
    code = (
        "import sys, io, matplotlib\n"
        "before = matplotlib.rcParams._get_backend_or_none()\n"
        "import dsn.plots as P\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get_backend_or_none() == before\n"
        "fig = P.confusion_matrix_figure(__import__('numpy').eye(5, dtype=int))\n"
        "buf = io.BytesIO(); fig.savefig(buf, format='png'); assert buf.tell() > 0\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
    assert type(confusion_matrix_figure(CM).canvas).__name__ == "FigureCanvasAgg"


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_figure(tmp_path: Path, normalize: bool) -> None:
    fig = confusion_matrix_figure(CM, normalize=normalize, title="val")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Predicted"
    assert ax.get_ylabel() == "True"
    assert ax.get_title() == "val"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(STAGES)
    ylabels = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
    assert ylabels == list(STAGES)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == CM.size
    if normalize:
        assert texts[0] == f"{84 / CM[0].sum():.2f}"
        assert texts[3 * 5 : 4 * 5] == ["-"] * 5  # N3 row has no support
        assert "(n=0)" in ax.get_yticklabels()[3].get_text()
    else:
        assert texts[0] == "84" and texts[2 * 5 + 2] == "481"
    _save(fig, tmp_path / "cm.png")


def test_confusion_matrix_figure_shape_check() -> None:
    with pytest.raises(ValueError):
        confusion_matrix_figure(np.zeros((4, 4)))


def test_hypnogram_figure(tmp_path: Path) -> None:
    y, p = _night()
    fig = hypnogram_figure(y, p, epoch_sec=30.0, title="night 1")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "night 1"
    ax_true, ax_pred = fig.axes[:2]
    for ax in (ax_true, ax_pred):
        # Clinical order, W at the top (y axis inverted).
        assert [t.get_text() for t in ax.get_yticklabels()] == ["W", "REM", "N1", "N2", "N3"]
        lo, hi = ax.get_ylim()
        assert lo > hi
    assert ax_pred.get_xlabel() == "Time (h)"
    assert ax_true.get_xlim() == pytest.approx((0.0, 960 * 30 / 3600))
    # IGNORE_INDEX epochs are gaps (NaN) in the expert trace, not drawn as a stage.
    ydata = np.asarray(ax_true.lines[0].get_ydata(), dtype=float)
    assert np.isnan(ydata[100:130]).all()
    assert not np.isnan(ydata[:100]).any()
    # W (class 0) is drawn at level 0, N3 (class 3) at the bottom level 4.
    levels = dict(zip(y[:100].tolist(), ydata[:100].tolist(), strict=True))
    assert levels.get(0, 0.0) == 0.0 and levels.get(3, 4.0) == 4.0
    assert "agreement" in ax_pred.get_ylabel()
    _save(fig, tmp_path / "hypno.png")


def test_hypnogram_edge_cases(tmp_path: Path) -> None:
    y = np.array([0, 0, IGNORE_INDEX, IGNORE_INDEX, 2, 3, 4])
    p = np.array([0, 1, 2, IGNORE_INDEX, 2, 3, IGNORE_INDEX])  # prediction gaps too
    fig = hypnogram_figure(y, p)
    assert np.isnan(np.asarray(fig.axes[1].lines[0].get_ydata(), dtype=float)[[3, 6]]).all()
    _save(fig, tmp_path / "edge.png")
    # All unscored and a single epoch both still render.
    _save(hypnogram_figure(np.full(5, IGNORE_INDEX), np.zeros(5, dtype=int)), tmp_path / "unscored.png")
    _save(hypnogram_figure(np.array([1]), np.array([1])), tmp_path / "one.png")
    with pytest.raises(ValueError):
        hypnogram_figure(np.zeros(3, dtype=int), np.zeros(4, dtype=int))


def test_training_curves_figure(tmp_path: Path) -> None:
    history = {"train/loss": [1.2, 0.9, 0.7], "val/loss": [1.1, 1.0, 0.9], "val/f1_macro": [0.4, 0.6, 0.7]}
    fig = training_curves_figure(history, title="run")
    ax_loss, ax_metric = fig.axes[:2]
    assert [line.get_label() for line in ax_loss.lines] == ["train/loss", "val/loss"]
    assert [line.get_label() for line in ax_metric.lines] == ["val/f1_macro"]
    _save(fig, tmp_path / "curves.png")


def test_hypnodensity_figure() -> None:
    import io

    from dsn.plots import hypnodensity_figure

    y, _ = _night(seed=3, n=240)  # 2 h, with unscored epochs 100..129
    rng = np.random.default_rng(3)
    proba = rng.random((y.size, 5)) + 4.0 * np.eye(5)[np.clip(y, 0, 4)]
    proba /= proba.sum(axis=1, keepdims=True)
    fig = hypnodensity_figure(y, proba, epoch_sec=30.0, title="SC4001E0")
    assert isinstance(fig, Figure) and fig.get_suptitle() == "SC4001E0"
    ax_hyp, ax_dens = fig.axes[:2]
    for ax in (ax_hyp, ax_dens):
        assert ax.get_xlim() == pytest.approx((0.0, 240 * 30 / 3600))
    assert ax_dens.get_xlabel() == "Time (h)" and ax_dens.get_ylim() == (0.0, 1.0)
    # Hypnogram as in hypnogram_figure: clinical order, W on top, unscored epochs are gaps.
    assert [t.get_text() for t in ax_hyp.get_yticklabels()] == ["W", "REM", "N1", "N2", "N3"]
    ydata = np.asarray(ax_hyp.lines[0].get_ydata(), dtype=float)
    assert np.isnan(ydata[100:130]).all() and not np.isnan(ydata[:100]).any()
    # One stacked band per stage; the top band reaches 1 (probabilities sum to 1).
    assert len(ax_dens.collections) == 5
    assert [t.get_text() for t in ax_dens.get_legend().get_texts()] == list(STAGES)
    top = max(c.get_paths()[0].vertices[:, 1].max() for c in ax_dens.collections)
    assert top == pytest.approx(1.0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n" and len(buf.getvalue()) > 1000
    # A single epoch renders; mismatched shapes are refused.
    hypnodensity_figure(np.array([2]), np.eye(5)[[2]]).savefig(io.BytesIO(), format="png", dpi=30)
    with pytest.raises(ValueError, match="proba"):
        hypnodensity_figure(np.zeros(3, dtype=int), np.zeros((3, 4)))

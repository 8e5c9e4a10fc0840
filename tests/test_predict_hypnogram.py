"""`dsn predict --hypnogram` reads every data-set profile's hypnogram format (NSRR XML, BIDS events, CSV, EDF+)
and places it by the start times, as `dsn fit` does: the agreement figures come from the right labels."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from dsn.cli import main as cli
from dsn.data import hypnograms
from dsn.data.datasets import find_recordings
from dsn.data.labels import IGNORE_INDEX
from dsn.data.synth_layouts import write_layout

FROZEN = Path(__file__).resolve().parent / "data" / "artifact-v1.0"  # a small EEG Fpz-Cz model at 100 Hz
CHANNEL = {"nsrr": "EEG", "bids": "Fpz-Cz", "generic": "Fpz-Cz"}


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict[str, Path]:
    """One synthetic 1-h night in each of the nsrr, bids and generic layouts (`dsn synth --layout`)."""
    root = tmp_path_factory.mktemp("layouts")
    for layout in CHANNEL:
        write_layout(root / layout, layout, subjects=1, nights=1, hours=1.0, seed=3, progress=False)
    return {layout: root / layout for layout in CHANNEL}


def _predict(psg: Path, hyp: Path, out: Path, home: Path, channel: str | None = None) -> tuple[dict, np.ndarray]:
    """Run `dsn predict PSG --hypnogram HYP`; its summary and predicted stages."""
    from dsn.hypnogram import read_csv

    argv = ["predict", str(psg), "--model", str(FROZEN), "--out", str(out), "--hypnogram", str(hyp),
            "--tracking.home", str(home)]
    assert cli(argv + (["--channel", channel] if channel else [])) == 0
    summary = next(json.loads(p.read_text()) for p in out.glob("*_summary.json"))
    return summary, read_csv(next(out.glob("*_hypnogram.csv"))).stages


def _expected(y_true: np.ndarray, stages: np.ndarray) -> dict:
    from dsn.hypnogram import agreement

    return agreement(y_true, stages, ["W", "N1", "N2", "N3", "REM"])


@pytest.mark.parametrize("layout", ["nsrr", "bids", "generic"])
def test_predict_hypnogram_of_every_format_gives_the_fit_labels(layout, nights, tmp_path):
    files = find_recordings(nights[layout], layout)[0]
    kind = {"nsrr": ".xml", "bids": "_events.tsv", "generic": ".csv"}[layout]
    assert files.hypnogram.name.endswith(kind)
    summary, stages = _predict(files.psg, files.hypnogram, tmp_path / "out", tmp_path, CHANNEL[layout])
    # the labels dsn fit trains on for this night (its profile's reader, label map and start-time rule)
    y_fit = hypnograms.stage_labels(files, len(stages))
    y_fit[y_fit == hypnograms.UNANNOTATED] = IGNORE_INDEX
    assert (y_fit >= 0).sum() > 0.9 * len(y_fit)
    ag = summary["agreement"]
    want = _expected(y_fit, stages)
    assert ag["confusion"] == want["confusion"].tolist()
    assert ag["n_epochs"] == want["n_epochs"] and ag["kappa"] == pytest.approx(want["kappa"])
    assert ag["f1_macro"] == pytest.approx(want["f1_macro"]) and ag["acc"] == pytest.approx(want["acc"])
    # rows of the confusion matrix are the expert's stage counts
    counts = [int((y_fit == k).sum()) for k in range(5)]
    assert np.asarray(ag["confusion"]).sum(1).tolist() == counts


def test_predict_hypnogram_csv_read_as_written(nights, tmp_path):
    """A hand-written CSV (one AASM stage name per 30-s epoch, under a header) gives exactly those labels."""
    files = find_recordings(nights["generic"], "generic")[0]
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 120)
    truth[:4] = IGNORE_INDEX
    names = {-1: "?", 0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "REM"}
    hyp = tmp_path / "expert.csv"
    hyp.write_text("epoch,stage\n" + "".join(f"{i},{names[int(s)]}\n" for i, s in enumerate(truth)))
    summary, stages = _predict(files.psg, hyp, tmp_path / "out", tmp_path, "Fpz-Cz")
    assert summary["agreement"]["confusion"] == _expected(truth, stages)["confusion"].tolist()
    assert summary["agreement"]["n_epochs"] == 116


def test_predict_hypnogram_placed_by_its_start_time(synth_dir, tmp_path):
    """An EDF+ hypnogram starting 30 min after its recording (its header says so) scores the night from
    epoch 60 on: the old reader placed it at the recording's start."""
    from dsn.data.edf import read_header
    from dsn.hypnogram import write_edf_hypnogram

    files = find_recordings(synth_dir)[0]
    n = int(read_header(files.psg).duration // 30)
    y = hypnograms.stage_labels(files, n)
    y[y == hypnograms.UNANNOTATED] = IGNORE_INDEX
    late = write_edf_hypnogram(tmp_path / "late-Hypnogram.edf", y[60:], 30.0,
                               start=read_header(files.psg).start + dt.timedelta(minutes=30))
    summary, stages = _predict(files.psg, late, tmp_path / "out", tmp_path)
    shifted = np.r_[np.full(60, IGNORE_INDEX), y[60:]]
    assert summary["agreement"]["confusion"] == _expected(shifted, stages)["confusion"].tolist()
    assert summary["agreement"]["n_epochs"] == int((shifted >= 0).sum())


def test_predict_hypnogram_of_another_night_is_one_line(synth_dir, tmp_path, capsys):
    from dsn.data.edf import read_header
    from dsn.hypnogram import write_edf_hypnogram

    files = find_recordings(synth_dir)[0]
    far = write_edf_hypnogram(tmp_path / "far-Hypnogram.edf", np.full(100, 2), 30.0,
                              start=read_header(files.psg).start - dt.timedelta(days=805, hours=3))
    argv = ["predict", str(files.psg), "--model", str(FROZEN), "--out", str(tmp_path / "out"),
            "--hypnogram", str(far), "--tracking.home", str(tmp_path)]
    assert cli(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # the two start times and a readable difference, not "(-69562800--69559800 s)"
    assert "far-Hypnogram.edf: its scored stages (-805 d 3:00:00 to -805 d 2:10:00 from the start of" in err
    start = read_header(files.psg).start
    assert f"starts {start - dt.timedelta(days=805, hours=3):%Y-%m-%d %H:%M:%S}, the recording {start:%Y-%m-%d %H:%M:%S}" in err
    assert "-69562800 s from the recording's start (-805 d 3:00:00)" in err
    assert "--69" not in err and "Pair each recording with its own" in err

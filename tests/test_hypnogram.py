"""Tests of dsn.hypnogram: sleep statistics (hand-computed), agreement, CSV and EDF+ hypnogram files."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

from dsn.data.errors import DataError
from dsn.data.hypnograms import epoch_labels, read_edf_annotations
from dsn.data.labels import STAGES
from dsn.errors import DsnError
from dsn.hypnogram import (
    agreement,
    atomic_write,
    format_sleep_statistics,
    read_csv,
    sleep_statistics,
    write_csv,
    write_edf_hypnogram,
)

W, N1, N2, N3, R, U = 0, 1, 2, 3, 4, -1
NAN = float("nan")


def _check(stats: dict[str, float], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(stats[key]), (key, stats[key])
        else:
            assert stats[key] == pytest.approx(value), (key, stats[key], value)


# ------------------------------------------------------------------------------------------
# Sleep statistics
# ------------------------------------------------------------------------------------------
def test_sleep_statistics_typical_night():
    #            0  1  2  3   4   5   6   7  8   9   10 11 12 13 14 15  16 17
    h = np.array([W, W, W, N1, N1, N2, N2, W, N2, N3, N3, W, W, R, R, N2, W, W])
    s = sleep_statistics(h)  # 30-s epochs: 0.5 min each
    _check(
        s,
        {
            "TIB": 18 * 0.5,
            "SPT": 13 * 0.5,  # epochs 3..15
            "WASO": 3 * 0.5,  # epochs 7, 11, 12
            "TST": 10 * 0.5,
            "SOL": 3 * 0.5,
            "SE": 100 * 10 / 18,
            "SME": 100 * 10 / 13,
            "N_awakenings": 2,  # [7] and [11, 12]; the final wake (16, 17) is after the SPT
            "W": 8 * 0.5,
            "N1": 1.0,
            "N2": 2.0,
            "N3": 1.0,
            "REM": 1.0,
            "NREM": 4.0,
            "Unscored": 0.0,
            "%N1": 20.0,
            "%N2": 40.0,
            "%N3": 20.0,
            "%REM": 20.0,
            "%NREM": 80.0,
            "Lat_N1": 1.5,
            "Lat_N2": 2.5,
            "Lat_N3": 4.5,
            "Lat_REM": 6.5,  # from the start of the recording (YASA), not from sleep onset
        },
    )
    assert s["Lat_REM"] - s["SOL"] == pytest.approx(5.0)  # AASM REM latency
    assert all(isinstance(v, float) for v in s.values())


def test_sleep_statistics_no_sleep():
    s = sleep_statistics(np.array([W, W, U, W]))
    _check(
        s,
        {
            "TIB": 2.0,
            "SPT": 0.0,
            "TST": 0.0,
            "WASO": NAN,
            "SOL": NAN,
            "SE": 0.0,
            "SME": NAN,
            "N_awakenings": NAN,
            "W": 1.5,
            "Unscored": 0.5,
            "%N1": NAN,
            "%REM": NAN,
            "%NREM": NAN,
            "Lat_N1": NAN,
            "Lat_REM": NAN,
        },
    )


def test_sleep_statistics_unscored_epochs():
    #            0  1  2   3   4  5  6  7  8   9  10
    h = np.array([W, U, N2, N2, U, W, U, W, N2, R, U])
    s = sleep_statistics(h)
    _check(
        s,
        {
            "TIB": 11 * 0.5,  # unscored epochs are time in bed
            "SOL": 2 * 0.5,  # an unscored epoch is not sleep onset
            "SPT": 8 * 0.5,  # epochs 2..9
            "TST": 4 * 0.5,  # unscored epochs are not sleep ...
            "WASO": 2 * 0.5,  # ... nor wake: SPT = TST + WASO + 2 unscored
            "Unscored": 4 * 0.5,
            "N_awakenings": 1,  # W ? W inside the SPT is one awakening
            "SE": 100 * 4 / 11,
            "SME": 50.0,
            "%N1": 0.0,
            "%N2": 75.0,
            "%N3": 0.0,
            "%REM": 25.0,
            "Lat_N1": NAN,
            "Lat_N2": 1.0,
            "Lat_N3": NAN,
            "Lat_REM": 4.5,
        },
    )


def test_sleep_statistics_sleep_to_the_end_and_epoch_length():
    s = sleep_statistics(np.array([W, N1, N2, N2, N3]), epoch_sec=20.0)
    third = 1 / 3  # one 20-s epoch in minutes
    _check(
        s,
        {
            "TIB": 5 * third,
            "SPT": 4 * third,
            "TST": 4 * third,
            "WASO": 0.0,
            "SOL": third,
            "SE": 80.0,
            "SME": 100.0,
            "N_awakenings": 0,
            "Lat_N3": 4 * third,
        },
    )
    # Asleep from the first epoch, one awakening.
    _check(sleep_statistics([N2, W, N2]), {"SOL": 0.0, "WASO": 0.5, "N_awakenings": 1, "SME": 100 * 2 / 3})


@pytest.mark.parametrize(
    "bad", [np.array([], dtype=int), np.zeros((2, 2), dtype=int), np.array([0, 5]), np.array([0.5, 1.0]), [0, -3]]
)
def test_sleep_statistics_rejects_bad_input(bad):
    with pytest.raises(DataError) as info:
        sleep_statistics(bad)
    assert isinstance(info.value, DsnError)
    with pytest.raises(DataError, match="epoch_sec"):
        sleep_statistics(np.array([0, 1]), epoch_sec=0)


def test_format_sleep_statistics():
    text = format_sleep_statistics(sleep_statistics(np.array([W, W, W, N1, N1, N2, N2, W, N2, N3, N3, W, W, R, R])))
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    # 9 sleep epochs out of 15; SPT = epochs 3..14 with wake at 7 and 11-12.
    assert lines["Total sleep time (TST)"].split()[-2:] == ["4.5", "min"]
    assert lines["Sleep efficiency (SE)"].split()[-2:] == ["60.0", "%"]
    assert lines["Awakenings"].split()[-1] == "2"
    rem = next(line for line in text.splitlines() if line.startswith("REM "))
    assert rem.split() == ["REM", "1.0", f"{100 * 2 / 9:.1f}", "6.5"]
    empty = format_sleep_statistics(sleep_statistics(np.array([W, W])))
    sol = next(line for line in empty.splitlines() if line.startswith("Sleep onset latency"))
    assert sol.split()[-2:] == ["n/a", "min"]
    assert "Unscored" not in text and "Unscored" in format_sleep_statistics(sleep_statistics([W, U, N2]))


# ------------------------------------------------------------------------------------------
# Agreement
# ------------------------------------------------------------------------------------------
def test_agreement_hand_computed():
    y_true = np.array([W, W, N1, N2, N2, N3, R, U, R])
    y_pred = np.array([W, N1, N1, N2, N3, N3, R, N2, U])
    a = agreement(y_true, y_pred)
    assert a["n_epochs"] == 7 and a["n_ignored"] == 2
    cm = np.zeros((5, 5), dtype=int)
    for t, p in [(W, W), (W, N1), (N1, N1), (N2, N2), (N2, N3), (N3, N3), (R, R)]:
        cm[t, p] += 1
    np.testing.assert_array_equal(a["confusion"], cm)
    assert a["acc"] == pytest.approx(5 / 7)
    for name, f1 in zip(STAGES, [2 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0]):
        assert a[f"f1_{name}"] == pytest.approx(f1)
    assert a["f1_macro"] == pytest.approx(11 / 15)
    # p_o = 5/7, p_e = (2*1 + 1*2 + 2*1 + 1*2 + 1*1) / 49 = 9/49
    assert a["kappa"] == pytest.approx((5 / 7 - 9 / 49) / (1 - 9 / 49))
    precision = {"W": 1.0, "N1": 0.5, "N2": 1.0, "N3": 0.5, "REM": 1.0}
    recall = {"W": 0.5, "N1": 1.0, "N2": 0.5, "N3": 1.0, "REM": 1.0}
    for name in STAGES:
        assert a[f"precision_{name}"] == pytest.approx(precision[name])
        assert a[f"recall_{name}"] == pytest.approx(recall[name])


def test_agreement_absent_classes_and_errors():
    a = agreement([W, W, N2], [W, N2, N2])
    assert math.isnan(a["precision_N1"]) and math.isnan(a["recall_N1"]) and math.isnan(a["f1_N1"])
    assert a["precision_N2"] == pytest.approx(0.5) and a["recall_W"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="3 epochs.*4"):
        agreement([0, 1, 2], [0, 1, 2, 3])
    with pytest.raises(DataError, match="7"):
        agreement([0, 7], [0, 1])


# ------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------
def _proba(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random((n, 5))
    return p / p.sum(axis=1, keepdims=True)


def test_csv_round_trip(tmp_path: Path):
    onsets = np.array([0.0, 30.0, 60.0, 12345.678, 28800.0])
    stages = np.array([W, R, U, N2, N3])
    proba = _proba(5)
    path = write_csv(tmp_path / "night.csv", onsets, stages, proba, STAGES)
    lines = path.read_text().splitlines()
    assert lines[0] == "onset_s,stage,p_W,p_N1,p_N2,p_N3,p_REM"
    assert lines[1].split(",")[:2] == ["0", "W"] and lines[2].split(",")[:2] == ["30", "REM"]
    assert lines[3].split(",")[1] == "?" and lines[4].split(",")[0] == "12345.678"
    assert len(lines) == 6
    back = read_csv(path)
    np.testing.assert_array_equal(back.onsets, onsets)
    np.testing.assert_array_equal(back.stages, stages)
    np.testing.assert_allclose(back.proba, proba, atol=5e-7)
    assert back.class_names == STAGES
    onsets2, stages2, proba2, names2 = back  # unpacks like a tuple
    assert proba2.shape == (5, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["night.csv"]  # no temporary file left


def test_csv_errors(tmp_path: Path):
    with pytest.raises(DataError, match="shapes do not match"):
        write_csv(tmp_path / "a.csv", np.zeros(3), np.zeros(3, dtype=int), np.zeros((3, 4)))
    assert not any(tmp_path.iterdir())
    bad = tmp_path / "bad.csv"
    bad.write_text("time,label\n0,W\n")
    with pytest.raises(DataError, match="bad.csv.*header"):
        read_csv(bad)
    bad.write_text("onset_s,stage,p_W,p_N1\n0,W,0.5,0.5\n30,N9,0.5,0.5\n")
    with pytest.raises(DataError, match="line 3.*N9"):
        read_csv(bad)
    with pytest.raises(DataError, match="not found"):
        read_csv(tmp_path / "missing.csv")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(DataError, match="does not exist"):
        with atomic_write(tmp_path / "nope" / "x.txt"):
            pass


# ------------------------------------------------------------------------------------------
# EDF+ hypnogram
# ------------------------------------------------------------------------------------------
def test_edf_hypnogram_round_trip(tmp_path: Path):
    import mne
    from edfio import read_edf

    stages = np.array([W, W, N1, N2, N2, N3, N3, R, U, U, W, N2])
    start = dt.datetime(1989, 4, 24, 22, 15, 3)
    path = write_edf_hypnogram(tmp_path / "SC4001E0-Hypnogram.edf", stages, start=start)
    expected_desc = [
        "Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage 3",
        "Sleep stage R", "Sleep stage ?", "Sleep stage W", "Sleep stage 2",
    ]  # fmt: skip
    expected_onset = [0, 60, 90, 150, 210, 240, 300, 330]
    expected_dur = [60, 30, 60, 60, 30, 60, 30, 30]

    hyp = read_edf_annotations(path)
    onsets, durations, labels = hyp.onsets, hyp.durations, hyp.labels
    assert labels == expected_desc
    np.testing.assert_allclose(onsets, expected_onset)
    np.testing.assert_allclose(durations, expected_dur)
    np.testing.assert_array_equal(epoch_labels(onsets, durations, labels, n_epochs=stages.size), stages)

    ann = mne.read_annotations(path)
    assert list(ann.description) == expected_desc
    np.testing.assert_allclose(ann.onset, expected_onset)
    np.testing.assert_allclose(ann.duration, expected_dur)

    edf = read_edf(path)
    assert edf.num_signals == 0
    assert (edf.startdate, edf.starttime) == (start.date(), start.time())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SC4001E0-Hypnogram.edf"]


def test_edf_hypnogram_long_night_other_epoch_and_no_start(tmp_path: Path):
    rng = np.random.default_rng(1)
    stages = np.repeat(rng.integers(-1, 5, 150), rng.integers(1, 12, 150))  # ~900 epochs, many runs
    path = write_edf_hypnogram(tmp_path / "h.edf", stages, epoch_sec=20.0)
    hyp = read_edf_annotations(path)
    onsets, durations, labels = hyp.onsets, hyp.durations, hyp.labels
    assert all(a != b for a, b in zip(labels[:-1], labels[1:]))  # runs are merged
    np.testing.assert_allclose(onsets[1:], onsets[:-1] + durations[:-1])  # contiguous
    assert onsets[-1] + durations[-1] == pytest.approx(stages.size * 20.0)
    y = epoch_labels(onsets, durations, labels, n_epochs=stages.size, epoch_sec=20.0)
    np.testing.assert_array_equal(y, stages)


def test_edf_hypnogram_errors_and_atomicity(tmp_path: Path, monkeypatch):
    import edfio

    with pytest.raises(DataError, match="1985"):
        write_edf_hypnogram(tmp_path / "a.edf", [0, 1], start=dt.datetime(1970, 1, 1))
    with pytest.raises(DataError, match="stage value 9"):
        write_edf_hypnogram(tmp_path / "a.edf", [0, 9])
    assert not any(tmp_path.iterdir())
    # A write that fails half-way leaves the previous file as it was and no temporary file.
    target = tmp_path / "h.edf"
    write_edf_hypnogram(target, [0, 1, 2])
    before = target.read_bytes()

    def broken_write(self, target):
        Path(target).write_bytes(b"0       partial")
        raise OSError("disk full")

    monkeypatch.setattr(edfio.Edf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_edf_hypnogram(target, [0, 1, 2, 3])
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h.edf"]


def test_edf_annotations_without_any_still_write_a_readable_file(tmp_path):
    """A night with no flagged epoch: the low-confidence file is still written (EDF+ needs one annotation)."""
    import mne

    from dsn.hypnogram import write_edf_annotations

    path = write_edf_annotations(tmp_path / "none.edf", [], empty_text="No low-confidence epochs")
    ann = mne.read_annotations(path)
    assert list(ann.description) == ["No low-confidence epochs"] and list(ann.duration) == [0.0]

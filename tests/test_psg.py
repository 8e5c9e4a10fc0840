"""Tests of dsn.data.psg.read_epochs on tiny EDF files written with edfio."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from dsn.data.edf import read_eeg
from dsn.data.errors import DataError
from dsn.data.psg import ScoringInput, read_epochs
from dsn.errors import DsnError

START = dt.datetime(1989, 4, 24, 22, 15, 3)


def _sine(fs: float, seconds: float, freq: float, amp: float = 40.0) -> np.ndarray:
    t = np.arange(int(round(fs * seconds))) / fs
    return amp * np.sin(2 * np.pi * freq * t)


def _write_psg(path: Path, channels: dict[str, tuple[np.ndarray, float]], start: dt.datetime = START) -> Path:
    """Write an EDF with ``{label: (signal in uV, sampling rate)}``, 1-s data records."""
    from edfio import Edf, EdfSignal, Recording

    signals = [
        EdfSignal(x, fs, label=label, physical_dimension="uV", physical_range=(-300.0, 300.0))
        for label, (x, fs) in channels.items()
    ]
    edf = Edf(signals, recording=Recording(startdate=start.date()), starttime=start.time(), data_record_duration=1)
    edf.write(path)
    return path


def test_reads_epochs_at_the_file_rate(tmp_path: Path):
    fs, seconds = 100.0, 95.0  # 3 whole epochs + 5 s
    eeg = _sine(fs, seconds, 10.0) + np.linspace(-50, 50, int(fs * seconds))
    path = _write_psg(
        tmp_path / "SC4001E0-PSG.edf",
        {"EEG Fpz-Cz": (eeg, fs), "EOG horizontal": (_sine(fs, seconds, 0.5), fs), "Temp rectal": (np.zeros(95), 1.0)},
    )
    rec = read_epochs(path)
    assert isinstance(rec, ScoringInput)
    assert rec.name == "SC4001E0" and rec.path == path and rec.channel == "EEG Fpz-Cz"
    assert rec.x.shape == (3, 1, 3000) and rec.x.dtype == np.float32
    assert rec.n_epochs == 3 and rec.epoch_sec == 30.0
    np.testing.assert_array_equal(rec.onsets, [0.0, 30.0, 60.0])
    assert rec.sfreq == rec.source_sfreq == 100.0
    assert rec.n_dropped_samples == 500
    assert rec.start == START
    # Microvolts, sample for sample (16-bit quantisation of a +-300 uV range: < 0.01 uV).
    np.testing.assert_allclose(rec.x.reshape(-1), eeg[:9000], atol=0.01)
    # Another channel and a file name without -PSG.
    other = read_epochs(path.rename(tmp_path / "night.edf"), channels="EOG horizontal")
    assert other.name == "night"
    np.testing.assert_allclose(other.x.reshape(-1), _sine(fs, seconds, 0.5)[:9000], atol=0.01)


def test_resamples_down(tmp_path: Path):
    # 200 Hz file, 100 Hz model: a 5 Hz + 11 Hz signal is kept (below the new Nyquist frequency).
    seconds = 65.0
    path = _write_psg(
        tmp_path / "x.edf", {"EEG Fpz-Cz": (_sine(200.0, seconds, 5.0) + _sine(200.0, seconds, 11.0, 20.0), 200.0)}
    )
    rec = read_epochs(path, sfreq=100.0)
    assert rec.source_sfreq == 200.0 and rec.sfreq == 100.0
    assert rec.x.shape == (2, 1, 3000)
    assert rec.n_dropped_samples == 500  # 6500 samples at 100 Hz, 6000 used
    expected = (_sine(100.0, seconds, 5.0) + _sine(100.0, seconds, 11.0, 20.0))[:6000]
    got = rec.x.reshape(-1)
    middle = slice(200, 5800)  # away from the filter's edge effects
    assert np.max(np.abs(got[middle] - expected[middle])) < 1.0  # uV, on a 60-uV signal


def test_sleep_edf_shaped_file_with_1hz_channels(tmp_path: Path):
    from dsn.data.synth import write_recording

    psg, _ = write_recording(tmp_path, subject=0, night=1, hours=0.05, seed=0)  # 6 epochs
    rec = read_epochs(psg)
    assert rec.name == "SC4001E0" and rec.x.shape == (6, 1, 3000) and rec.n_dropped_samples == 0
    assert rec.source_sfreq == 100.0
    signal, _ = read_eeg(psg, "EEG Fpz-Cz")
    np.testing.assert_array_equal(rec.x.reshape(-1), signal)
    assert rec.start is not None and rec.start.tzinfo is None


def test_rate_below_the_model(tmp_path: Path):
    path = _write_psg(tmp_path / "low.edf", {"EEG Fpz-Cz": (_sine(50.0, 60.0, 5.0), 50.0)})
    with pytest.raises(DataError, match=r"low\.edf.*50 Hz.*100 Hz.*trained at 50 Hz or lower") as info:
        read_epochs(path, sfreq=100.0)
    assert isinstance(info.value, DsnError)
    # The channel's own rate counts, even when another channel of the file is faster (MNE would
    # upsample the slow channel to the file's highest rate).
    mixed = _write_psg(
        tmp_path / "mixed.edf", {"EEG Fpz-Cz": (_sine(50.0, 60.0, 5.0), 50.0), "EOG": (_sine(200.0, 60.0, 1.0), 200.0)}
    )
    with pytest.raises(DataError, match="50 Hz"):
        read_epochs(mixed, sfreq=100.0)
    assert read_epochs(mixed, channels="EOG", sfreq=100.0).source_sfreq == 200.0
    # A model at the file's own rate is fine.
    assert read_epochs(path, sfreq=50.0).x.shape == (2, 1, 1500)


def test_missing_channel(tmp_path: Path):
    path = _write_psg(
        tmp_path / "a.edf", {"EEG C4-A1": (_sine(100.0, 60.0, 5.0), 100.0), "EOG": (_sine(100.0, 60.0, 1.0), 100.0)}
    )
    with pytest.raises(DataError, match=r"a\.edf.*'EEG Fpz-Cz' not found.*EEG C4-A1, EOG.*--channel"):
        read_epochs(path)


def test_not_edf_short_truncated_missing(tmp_path: Path):
    text = tmp_path / "notes.edf"
    text.write_text("sleep diary\nwent to bed at 23:00\n")
    with pytest.raises(DataError, match=r"notes\.edf: not an EDF or BDF file"):
        read_epochs(text)
    short = _write_psg(tmp_path / "short.edf", {"EEG Fpz-Cz": (_sine(100.0, 20.0, 5.0), 100.0)})
    with pytest.raises(DataError, match=r"short\.edf.*20\.0 s, shorter than one 30-s epoch"):
        read_epochs(short)
    full = _write_psg(tmp_path / "cut.edf", {"EEG Fpz-Cz": (_sine(100.0, 60.0, 5.0), 100.0)})
    full.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(DataError, match=r"cut\.edf.*truncated"):
        read_epochs(full)
    with pytest.raises(DataError, match="not found"):
        read_epochs(tmp_path / "absent.edf")
    with pytest.raises(DataError, match="whole number of samples"):
        read_epochs(short, sfreq=100.01)


def test_start_lines_up_with_the_written_hypnogram(tmp_path: Path):
    from edfio import read_edf

    from dsn.hypnogram import write_edf_hypnogram

    path = _write_psg(tmp_path / "SC4001E0-PSG.edf", {"EEG Fpz-Cz": (_sine(100.0, 90.0, 5.0), 100.0)})
    rec = read_epochs(path)
    hyp = write_edf_hypnogram(tmp_path / "SC4001E0-Hypnogram.edf", np.array([0, 1, 2]), start=rec.start)
    a, b = read_edf(path), read_edf(hyp)
    assert (a.startdate, a.starttime) == (b.startdate, b.starttime) == (START.date(), START.time())

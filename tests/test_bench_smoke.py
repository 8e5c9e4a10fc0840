"""The benchmark scripts run (tiny ``--smoke`` mode) and print their tables; their reference paths are right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"dsn_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_io_limit_decodes_the_same_channel_as_read_eeg(synth_dir):
    from dsn.data.edf import read_eeg

    psg = sorted(synth_dir.glob("*-PSG.edf"))[0]
    bench = _bench("bench_data")
    for channel in ["EEG Fpz-Cz", "EOG horizontal"]:
        np.testing.assert_allclose(bench.io_limit(psg, channel), read_eeg(psg, channel)[0], rtol=1e-5, atol=1e-3)


def test_mne_recipe_gives_the_trimmed_scored_epochs(synth_dir):
    from dsn.data.datasets import find_recordings
    from dsn.data.edf import read_eeg

    files = find_recordings(synth_dir)[0]
    x, events = _bench("bench_data").mne_recipe(files)
    assert x.shape[1:] == (1, 3000) and len(x) == len(events) > 0
    signal = read_eeg(files.psg)[0]
    first = np.flatnonzero(np.isclose(signal[: len(signal) // 3000 * 3000].reshape(-1, 3000)[:, :5], x[0, 0, :5] * 1e6).all(1))
    assert len(first) >= 1  # the MNE epochs are epochs of the same signal


def test_bench_data_smoke(capsys, tmp_path):
    _bench("bench_data").main(["--smoke", "--cache-root", str(tmp_path)])
    out = capsys.readouterr().out
    for text in ["CPU:", "I/O limit", "dsn: EDF -> cache", "MNE recipe / dsn", "dsn / I/O limit", "warm start", "memmap: True"]:
        assert text in out
    assert not any(tmp_path.iterdir())  # the benchmark's cache folders are removed


@pytest.mark.slow
def test_bench_training_smoke(capsys):
    _bench("bench_training").main(["--smoke"])
    out = capsys.readouterr().out
    for text in ["CPU:", "bare loop", "Lightning fit", "loader only", "pretrain", "finetune", "float32 matmul"]:
        assert text in out

"""Tests of benchmarks/othergen.py, the second synthetic generator (issue 34): files dsn reads, plausible
hypnograms, seed-reproducible, and independent of dsn/data/synth.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import othergen  # noqa: E402

from dsn.trust import check_night  # noqa: E402


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("othergen")
    othergen.write_nights(out, nights=2, hours=1.0, seed=3)
    return out


def test_files_are_read_by_the_sleep_edf_profile(nights, capsys):
    from dsn.cli import main as cli_main

    assert cli_main(["data", str(nights), "--dataset", "sleep-edf", "--channels", "[EEG Fpz-Cz, EOG horizontal]"]) == 0
    out = capsys.readouterr().out
    assert "2 recordings, 2 subjects, 2.0 h" in out and "no problems" in out


def test_signals_and_hypnogram_read_back(nights):
    from dsn.data.datasets import expert_labels, find_recordings
    from dsn.data.psg import read_epochs

    recs = find_recordings(nights)
    assert [r.name for r in recs] == ["SC4001G0", "SC4011G0"]
    psg = nights / othergen.psg_name(0)
    inp = read_epochs(psg, ["EEG Fpz-Cz", "EOG horizontal"], 100.0)
    assert inp.x.shape == (120, 2, 3000)
    y = expert_labels(nights / "SC4001GH-Hypnogram.edf", psg, 120)
    rng = np.random.default_rng(np.random.SeedSequence([3, 0, 7919]))
    np.testing.assert_array_equal(y, othergen.hypnogram(120, rng))
    # the EEG is louder in N3 than in REM (delta)
    eeg = inp.x[:, 0].std(axis=1)
    if (y == 3).any() and (y == 4).any():
        assert eeg[y == 3].mean() > 1.5 * eeg[y == 4].mean()


def test_same_seed_same_files_other_seed_other_night(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 5), (b, 5), (c, 6)):
        othergen.write_night(d, 1, hours=0.5, seed=seed)
    name, hyp = othergen.psg_name(1), "SC4011GH-Hypnogram.edf"
    assert (a / name).read_bytes() == (b / name).read_bytes() and (a / hyp).read_bytes() == (b / hyp).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_hypnograms_are_adult_nights():
    shares, flagged = [], 0
    for s in range(60):
        y = othergen.hypnogram(960, np.random.default_rng(s))  # 8 h
        sleep = y[y > 0]
        shares.append(np.bincount(sleep, minlength=5)[1:] / len(sleep))
        flagged += any(r.level != "ok" for r in check_night(y))
    med = np.median(shares, axis=0)
    assert 0.02 < med[0] < 0.10 and 0.45 < med[1] < 0.65 and 0.08 < med[2] < 0.25 and 0.15 < med[3] < 0.30
    assert flagged <= 3  # the plausibility rules pass (almost) every true hypnogram


def test_independent_of_dsn_synth():
    src = Path(othergen.__file__).read_text()
    assert "dsn.data.synth" not in src.replace("dsn/data/synth.py", "") and "import synth" not in src

"""Reading Sleep-EDF: names, pairing, labels, trimming, real fragments and every bad-input message."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SLEEP_EDF, needs_shared

from dsn.data.edf import (
    UNANNOTATED,
    DataError,
    check_edf_size,
    epoch_labels,
    find_recordings,
    parse_name,
    read_eeg,
    read_hypnogram,
    trim_and_clean,
)
from dsn.data.labels import IGNORE_INDEX, class_counts

HYP = SLEEP_EDF / "SC4001EC-Hypnogram.edf"
PSG = SLEEP_EDF / "SC4001E0-PSG-first300s.edf"


def test_parse_name_cassette_and_telemetry():
    sc = parse_name("SC4012E0-PSG.edf")
    assert (sc["study"], sc["subject"], sc["night"], sc["kind"]) == ("SC4", "SC401", 2, "PSG")
    st = parse_name("ST7011JP-Hypnogram.edf")
    assert (st["subject"], st["night"], st["kind"]) == ("ST701", 1, "Hypnogram")
    with pytest.raises(DataError, match="not a Sleep-EDF file name"):
        parse_name("night1.edf")


def _touch(d, *names):
    for n in names:
        (d / n).write_bytes(b"")


def test_find_recordings_pairs_by_first_7_chars(tmp_path):
    _touch(tmp_path, "SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC4002E0-PSG.edf", "SC4002EJ-Hypnogram.edf",
           "ST7011J0-PSG.edf", "ST7011JP-Hypnogram.edf", "notes.edf")
    recs = find_recordings(tmp_path)
    assert [(r.name, r.subject, r.night, r.hypnogram.name) for r in recs] == [
        ("SC4001E0", "SC400", 1, "SC4001EC-Hypnogram.edf"),
        ("SC4002E0", "SC400", 2, "SC4002EJ-Hypnogram.edf"),
        ("ST7011J0", "ST701", 1, "ST7011JP-Hypnogram.edf"),
    ]


def test_missing_hypnogram_names_the_psg(tmp_path):
    _touch(tmp_path, "SC4001E0-PSG.edf", "SC4011EH-Hypnogram.edf")
    with pytest.raises(DataError, match=r"SC4001E0-PSG\.edf: no hypnogram found.*SC4001E\?-Hypnogram\.edf"):
        find_recordings(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found.*dsn synth"):
        find_recordings(tmp_path / "nope")
    with pytest.raises(DataError, match="no Sleep-EDF PSG files"):
        find_recordings(tmp_path)


def test_epoch_labels_midpoint_rule_and_mapping():
    # W 0-60 s, S1 60-90, S3 90-120, S4 120-150, ? 150-180, R 180-240, MT 240-270
    on = np.array([0, 60, 90, 120, 150, 180, 240.0])
    du = np.array([60, 30, 30, 30, 30, 60, 30.0])
    lab = ["Sleep stage W", "Sleep stage 1", "Sleep stage 3", "Sleep stage 4", "Sleep stage ?", "Sleep stage R", "Movement time"]
    y = epoch_labels(on, du, lab, 9)
    assert y.tolist() == [0, 0, 1, 3, 3, IGNORE_INDEX, 4, 4, IGNORE_INDEX]


def test_hypnogram_longer_and_shorter_than_signal():
    on, du = np.array([0.0]), np.array([300.0])
    with pytest.raises(DataError, match="x.edf: hypnogram longer than the signal.*length_mismatch: crop"):
        epoch_labels(on, du, ["Sleep stage 2"], 5, source="x.edf")
    with pytest.raises(DataError, match="hypnogram shorter than the signal"):
        epoch_labels(on, du, ["Sleep stage 2"], 20, source="x.edf")
    y = epoch_labels(on, du, ["Sleep stage 2"], 20, length_mismatch="crop")
    assert (y[:10] == 2).all() and (y[10:] == UNANNOTATED).all()
    # an unscored tail past the end of the signal (as in real files) is fine
    y = epoch_labels(np.array([0.0, 300.0]), np.array([300.0, 5000.0]), ["Sleep stage 2", "Sleep stage ?"], 10)
    assert (y == 2).all()


def test_trim_and_clean():
    y = np.array([0] * 100 + [2, 2, IGNORE_INDEX, 2] + [0] * 100)
    keep = trim_and_clean(y, trim_minutes=30)
    assert keep[0] == 40 and keep[-1] == 163 and 102 not in keep
    keep = trim_and_clean(y, trim_minutes=30, unscored="mask")
    assert len(keep) == 124 and 102 in keep
    assert len(trim_and_clean(y, trim_minutes=None)) == len(y) - 1
    with pytest.raises(DataError, match="rec.edf: no sleep epochs"):
        trim_and_clean(np.zeros(50, int), source="rec.edf")


@needs_shared(HYP)
def test_real_hypnogram_exact_counts():
    """SC4001EC: 154 annotations; the official rule on the 79,500-s recording gives these counts."""
    on, du, lab = read_hypnogram(HYP)
    assert len(lab) == 154
    y_all = epoch_labels(on, du, lab, 79500 // 30)
    # every annotation's duration ends up in its label's epochs (until the signal end)
    for code, names in {0: ["Sleep stage W"], 2: ["Sleep stage 2"], 3: ["Sleep stage 3", "Sleep stage 4"]}.items():
        secs = sum(min(o + d, 79500) - o for o, d, la in zip(on, du, lab) if la in names and o < 79500)
        assert (y_all == code).sum() == secs / 30
    y = y_all[trim_and_clean(y_all)]
    assert class_counts(y) == {"W": 188, "N1": 58, "N2": 250, "N3": 220, "REM": 125}


@needs_shared(PSG)
def test_real_psg_excerpt_channel_rate_units():
    x, sfreq = read_eeg(PSG, "EEG Fpz-Cz")
    assert sfreq == 100.0 and x.shape == (30000,) and x.dtype == np.float32
    assert 5 < x.std() < 100 and np.abs(x).max() <= 193  # microvolts, physical range +-192 uV
    x2, sfreq2 = read_eeg(PSG, "EEG Pz-Oz", sfreq=50.0)
    assert sfreq2 == 50.0 and x2.shape == (15000,)
    with pytest.raises(DataError, match=r"channel 'EEG C3' not found.*EEG Fpz-Cz, EEG Pz-Oz, EOG horizontal"):
        read_eeg(PSG, "EEG C3")


@needs_shared(PSG)
def test_truncated_and_garbage_edf(tmp_path):
    bad = tmp_path / "SC4001E0-PSG.edf"
    bad.write_bytes(PSG.read_bytes()[:-1000])
    with pytest.raises(DataError, match=r"SC4001E0-PSG\.edf: truncated EDF file.*Re-download"):
        check_edf_size(bad)
    with pytest.raises(DataError, match="truncated"):
        read_eeg(bad)
    bad.write_bytes(b"hello world" * 10)
    with pytest.raises(DataError, match="not a readable EDF file"):
        read_eeg(bad)


def test_unknown_annotation_label(synth_copy):
    from dsn.data.synth import write_dataset  # noqa: F401  (data set made by the fixture)

    hyp = sorted(synth_copy.glob("*-Hypnogram.edf"))[0]
    raw = bytearray(hyp.read_bytes())
    i = raw.find(b"Sleep stage 2")
    raw[i : i + 13] = b"Sleep stage X"
    hyp.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"Hypnogram\.edf: unknown annotation label\(s\) \['Sleep stage X'\].*label_map"):
        read_hypnogram(hyp)

"""Reading Sleep-EDF: names, pairing, labels, trimming, real fragments and every bad-input message."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SLEEP_EDF, needs_shared

from dsn.data import hypnograms
from dsn.data.datasets import describe_name, find_recordings, load_profile
from dsn.data.edf import read_eeg, read_header
from dsn.data.errors import DataError
from dsn.data.hypnograms import UNANNOTATED, epoch_labels, trim_and_clean
from dsn.data.labels import IGNORE_INDEX, class_counts

HYP = SLEEP_EDF / "SC4001EC-Hypnogram.edf"
PSG = SLEEP_EDF / "SC4001E0-PSG-first300s.edf"


def test_parse_name_cassette_and_telemetry():
    sc = describe_name("SC4012E0-PSG.edf", "sleep-edf")
    assert (sc["study"], sc["subject"], sc["night"], sc["kind"]) == ("SC4", "SC401", 2, "recording")
    st = describe_name("ST7011JP-Hypnogram.edf", "sleep-edf")
    assert (st["subject"], st["night"], st["kind"]) == ("ST701", 1, "hypnogram")
    with pytest.raises(DataError, match="night1.edf: not a file name of the 'sleep-edf' data set"):
        describe_name("night1.edf", "sleep-edf")


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
    hyp, _ = hypnograms.read(HYP, load_profile("sleep-edf"))
    on, du, lab = hyp.onsets, hyp.durations, hyp.labels
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
        read_header(bad)
    with pytest.raises(DataError, match="truncated"):
        read_eeg(bad)
    bad.write_bytes(b"hello world" * 10)
    with pytest.raises(DataError, match="not a readable EDF/BDF file"):
        read_eeg(bad)


def test_unknown_annotation_label(synth_copy):
    from dsn.data.synth import write_dataset  # noqa: F401  (data set made by the fixture)

    hyp = sorted(synth_copy.glob("*-Hypnogram.edf"))[0]
    raw = bytearray(hyp.read_bytes())
    i = raw.find(b"Sleep stage 2")
    raw[i : i + 13] = b"Sleep stage X"
    hyp.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"Hypnogram\.edf: unknown sleep-stage label\(s\) \['Sleep stage X'\].*label_map"):
        hypnograms.read(hyp, load_profile("sleep-edf"))


# --------------------------------------------------------------------------------------------
# The fast EDF reader: exactly MNE's values, MNE for anything unusual
# --------------------------------------------------------------------------------------------
def _mne_eeg(path, channel):
    """What read_eeg returned when it always went through MNE: volts x 1e6, as float32."""
    import mne

    raw = mne.io.read_raw_edf(path, preload=False, verbose="error").pick([channel]).load_data(verbose="error")
    return (raw.get_data()[0] * 1e6).astype(np.float32), float(raw.info["sfreq"])


def _fast_path_used(path, channel):
    from dsn.data.edf import _read_channel

    layout = read_header(path)
    return layout.fast and _read_channel(layout, channel) is not None


def test_fast_reader_equals_mne_on_synthetic_psg(synth_dir):
    from edfio import read_edf

    psg = sorted(synth_dir.glob("*-PSG.edf"))[0]
    for channel in ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"]:
        x, sfreq = read_eeg(psg, channel)
        ref, ref_sfreq = _mne_eeg(psg, channel)
        assert x.dtype == np.float32 and sfreq == ref_sfreq == 100.0
        np.testing.assert_array_equal(x, ref)
        assert _fast_path_used(psg, channel)
    # 1-Hz channels are decoded at their own rate (MNE would upsample them to the file's 100 Hz)
    edf = read_edf(psg)
    for channel in ["EMG submental", "Temp rectal"]:
        x, sfreq = read_eeg(psg, channel)
        signal = next(s for s in edf.signals if s.label == channel)
        assert sfreq == 1.0 and _fast_path_used(psg, channel) and len(x) == len(signal.data)
        unit = 1.0 if signal.physical_dimension in ("uV", "\u00b5V") else 1e3 if signal.physical_dimension == "mV" else 1e6
        np.testing.assert_allclose(x, signal.data * unit, rtol=1e-5, atol=1e-3 * np.abs(signal.data * unit).max())


@needs_shared(PSG)
def test_fast_reader_equals_mne_on_real_sleep_edf():
    for channel in ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"]:
        assert _fast_path_used(PSG, channel)
        x, sfreq = read_eeg(PSG, channel)
        ref, ref_sfreq = _mne_eeg(PSG, channel)
        np.testing.assert_array_equal(x, ref)
        assert sfreq == ref_sfreq


def _every_code_edf(path, ranges):
    """An EDF whose channels (100 Hz, 30-s records) go through every one of the 65536 digital values."""
    from edfio import Edf, EdfSignal

    signals = []
    for label, (unit, (lo, hi)) in ranges.items():
        codes = np.arange(-32768, 32768 + 464, dtype=np.float64).clip(max=32767)  # 22 whole records
        phys = lo + (codes + 32768) * (hi - lo) / 65535
        signals.append(EdfSignal(phys, 100, label=label, physical_dimension=unit, physical_range=(lo, hi)))
    Edf(signals, data_record_duration=30).write(path)
    return path


def test_fast_reader_every_digital_value_both_decoders(tmp_path):
    from dsn.data.edf import _sample_scaling

    ranges = {
        "EEG Fpz-Cz": ("uV", (-5.0, 250.0)),  # one float64 multiply-add is off by one float32 step: table
        "EEG Pz-Oz": ("uV", (-300.0, 300.0)),  # the multiply-add is exact everywhere
        "EOG horizontal": ("mV", (-1.5, 1.5)),
        "Resp oro-nasal": ("", (-2048.0, 2047.0)),
    }
    path = _every_code_edf(tmp_path / "codes.edf", ranges)
    cal = 255.0 / 65535
    assert not _sample_scaling(cal, -5.0 + 32768 * cal, 1e-6)[3]
    cal = 600.0 / 65535
    assert _sample_scaling(cal, -300.0 + 32768 * cal, 1e-6)[3]
    for channel in ranges:
        assert _fast_path_used(path, channel)
        x, _ = read_eeg(path, channel)
        np.testing.assert_array_equal(x, _mne_eeg(path, channel)[0])


def test_slower_channel_is_read_at_its_own_rate_and_duplicates_go_through_mne(tmp_path):
    from edfio import Edf, EdfSignal

    t = np.arange(0, 60, 0.01)
    path = tmp_path / "mixed.edf"
    Edf(
        [
            EdfSignal(50 * np.sin(2 * np.pi * 3 * t[::2]), 50, label="EEG slow", physical_range=(-100, 100)),
            EdfSignal(50 * np.sin(2 * np.pi * 7 * t), 100, label="EEG fast", physical_range=(-100, 100)),
        ],
        data_record_duration=30,
    ).write(path)
    assert _fast_path_used(path, "EEG slow") and _fast_path_used(path, "EEG fast")
    x, sfreq = read_eeg(path, "EEG fast")
    ref, ref_sfreq = _mne_eeg(path, "EEG fast")
    np.testing.assert_array_equal(x, ref)
    assert sfreq == ref_sfreq == 100.0
    slow, slow_sfreq = read_eeg(path, "EEG slow")  # no physical dimension: volts, as MNE reads it (x 1e6)
    assert slow_sfreq == 50.0 and len(slow) == 3000
    np.testing.assert_allclose(slow / 1e6, 50 * np.sin(2 * np.pi * 3 * t[::2]), atol=0.01)
    up, _ = read_eeg(path, "EEG slow", sfreq=100.0)  # polyphase, like every other rate change
    assert len(up) == 6000
    np.testing.assert_allclose(up[200:-200] / 1e6, 50 * np.sin(2 * np.pi * 3 * t)[200:-200], atol=0.5)

    dup = tmp_path / "dup.edf"
    sig = EdfSignal(50 * np.sin(2 * np.pi * 7 * t), 100, label="EEG", physical_range=(-100, 100))
    Edf([sig, sig], data_record_duration=30).write(dup)

    assert not read_header(dup).fast  # MNE renames duplicates: let it
    import mne

    names = mne.io.read_raw_edf(dup, verbose="error").ch_names
    x, _ = read_eeg(dup, names[1])
    np.testing.assert_array_equal(x, _mne_eeg(dup, names[1])[0])


def test_fast_reader_channel_message_lists_mne_names(synth_dir):
    import mne

    psg = sorted(synth_dir.glob("*-PSG.edf"))[0]
    names = mne.io.read_raw_edf(psg, verbose="error").ch_names
    with pytest.raises(DataError) as info:
        read_eeg(psg, "EEG C3")
    assert f"Channels in this file: {', '.join(names)}." in str(info.value)
    assert "tried EEG C3" in str(info.value) and "data.channel_aliases" in str(info.value)
    assert "\n" not in str(info.value)


def test_resampling_is_polyphase_and_close_to_mne(synth_dir):
    import mne

    psg = sorted(synth_dir.glob("*-PSG.edf"))[0]
    x, sfreq = read_eeg(psg, "EEG Fpz-Cz", sfreq=50.0)
    raw = mne.io.read_raw_edf(psg, verbose="error").pick(["EEG Fpz-Cz"]).load_data(verbose="error")
    ref = raw.resample(50.0, verbose="error").get_data()[0] * 1e6
    assert sfreq == 50.0 and x.dtype == np.float32 and x.shape == ref.shape
    mid = slice(500, -500)  # away from the edges, where the two filters differ most
    assert np.sqrt(np.mean((x[mid] - ref[mid]) ** 2)) < 0.05 * ref[mid].std()
    x128, _ = read_eeg(psg, "EEG Fpz-Cz", sfreq=128.0)  # a rational ratio (32/25)
    assert len(x128) == round(len(ref) * 2 * 1.28)


def test_cold_load_writes_exactly_the_preprocessed_epochs(synth_dir, tmp_path):
    from dsn.data.recording import Preprocessing, load_recording, preprocess

    files = find_recordings(synth_dir)[1]
    for prep in [Preprocessing(), Preprocessing(unscored="mask", trim_minutes=None)]:
        x, y = preprocess(files, prep)
        rec = load_recording(files, prep, tmp_path / "cache")
        assert isinstance(rec.x, np.memmap) and rec.x.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(rec.x), x)
        np.testing.assert_array_equal(rec.y, y)
        again = load_recording(files, prep, tmp_path / "cache")  # from the cache
        np.testing.assert_array_equal(np.asarray(again.x), x)


def test_cache_write_entry_rows_equals_selection(tmp_path):
    from dsn.data import cache

    x = np.arange(10 * 1 * 6, dtype=np.float32).reshape(10, 1, 6)
    rows = np.array([0, 1, 2, 5, 7, 8, 9])
    cache.write_entry(tmp_path / "e", x, np.arange(len(rows)), {"a": 1}, rows=rows)
    got, y, meta = cache.load_entry(tmp_path / "e")
    np.testing.assert_array_equal(np.asarray(got), x[rows])
    assert meta == {"a": 1} and len(y) == len(rows)
    cache.write_entry(tmp_path / "f", x.astype(np.float64), np.arange(3), {}, rows=np.array([1, 4, 6]))
    np.testing.assert_array_equal(np.asarray(cache.load_entry(tmp_path / "f")[0]), x[[1, 4, 6]])

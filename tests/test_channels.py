"""Several channels per recording: names, aliases, derivations, rates, shapes through the data pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsn.data.channels import ChannelLookupError, find_label, parse_channel, resolve_channels
from dsn.data.edf import _resample, read_channels, read_eeg
from dsn.data.errors import DataError

NSRR = ["EEG(sec)", "ECG", "EMG", "EOG(L)", "EOG(R)", "EEG", "SaO2"]


def _sine(fs: float, seconds: float, freq: float, amp: float = 40.0) -> np.ndarray:
    t = np.arange(int(round(fs * seconds))) / fs
    return amp * np.sin(2 * np.pi * freq * t)


def _write(path: Path, channels: dict[str, tuple[np.ndarray, float]]) -> Path:
    """An EDF with ``{label: (signal in uV, rate)}`` and 1-s data records."""
    from edfio import Edf, EdfSignal

    Edf([EdfSignal(x, fs, label=label, physical_dimension="uV", physical_range=(-300.0, 300.0))
         for label, (x, fs) in channels.items()], data_record_duration=1).write(path)
    return path


def _nsrr_like(path: Path, seconds: float = 95.0) -> Path:
    """SHHS-style labels and rates: EEG (C4-A1) and EEG(sec) at 125 Hz, EOGs at 50 Hz."""
    return _write(path, {"EEG(sec)": (_sine(125, seconds, 9.0), 125.0), "EOG(L)": (_sine(50, seconds, 0.5, 80), 50.0),
                         "EOG(R)": (_sine(50, seconds, 0.7, 60), 50.0), "EEG": (_sine(125, seconds, 11.0), 125.0)})


# ------------------------------------------------------------------ names and aliases
def test_exact_label_alias_and_normalised_spelling():
    sleep_edf = ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"]
    assert find_label("EEG Fpz-Cz", sleep_edf) == "EEG Fpz-Cz"
    assert find_label("Fpz-Cz", sleep_edf) == "EEG Fpz-Cz"
    assert find_label("fpz-cz", sleep_edf) == "EEG Fpz-Cz"
    assert find_label("EEG Fpz-Cz", ["Fpz-Cz", "Pz-Oz"]) == "Fpz-Cz"
    for labels in (["EEG C4-A1", "EEG C3-A2"], ["C4-A1", "C3-A2"], ["C4-M1", "C3-M2"], ["EEG C4-M1"]):
        assert find_label("C4-M1", labels) == labels[0]
        assert find_label("C4-A1", labels) == labels[0]
    assert find_label("E1-M2", NSRR) == "EOG(L)" and find_label("EOG(R)", ["E2-M1", "E1-M2"]) == "E2-M1"
    # the exact label wins over the normalised spelling: NSRR's EEG is EEG, never EEG(sec)
    assert find_label("EEG", NSRR) == "EEG" and find_label("EEG(sec)", NSRR) == "EEG(sec)"
    # a profile's aliases: NSRR's EEG is C4-A1
    assert find_label("C4-M1", NSRR, {"C4-M1": ["EEG"], "C3-M2": ["EEG(sec)", "EEG2"]}) == "EEG"
    assert find_label("C3-A2", NSRR, {"C3-M2": ["EEG(sec)"]}) == "EEG(sec)"


def test_missing_and_ambiguous_channels_are_one_line():
    with pytest.raises(ChannelLookupError) as info:
        find_label("C4-M1", ["EEG Fpz-Cz", "EOG horizontal"])
    msg = str(info.value)
    assert "'C4-M1' not found" in msg and "tried C4-M1, C4-A1, EEG C4-A1" in msg
    assert "Channels in this file: EEG Fpz-Cz, EOG horizontal" in msg and "\n" not in msg
    with pytest.raises(ChannelLookupError, match="matches several channels of this file: EEG C4-M1, EMG C4-M1"):
        find_label("c4-m1", ["EEG C4-M1", "EMG C4-M1"])


def test_a_label_present_twice_is_named_as_such_with_the_way_to_choose(tmp_path):
    """Issue 30: a label used twice was "not found" among MNE's invented names (EEG Fpz-Cz-0, -1)."""
    from edfio import Edf, EdfSignal

    from dsn.data.psg import read_epochs

    x, path = _sine(100, 60, 9.0), tmp_path / "twice.edf"
    Edf([EdfSignal(x, 100, label=label, physical_dimension="uV", physical_range=(-300.0, 300.0))
         for label in ("EEG Fpz-Cz", "EOG", "EEG Fpz-Cz")], data_record_duration=1).write(path)
    msg = (r"twice\.edf: channel 'EEG Fpz-Cz': the label 'EEG Fpz-Cz' appears 2 times in this file \(signals 1, 3\)\. "
           r"Choose one as MNE names them, 'EEG Fpz-Cz-0' or 'EEG Fpz-Cz-1' .*or rename one of them in the file\.$")
    with pytest.raises(DataError, match=msg):
        read_channels(path, ["EEG Fpz-Cz"], 100.0)
    with pytest.raises(DataError, match=msg):
        read_epochs(path, "EEG Fpz-Cz")
    with pytest.raises(DataError, match=r"'Fpz-Cz': the label 'EEG Fpz-Cz' appears 2 times"):  # through an alias too
        read_channels(path, ["Fpz-Cz"], 100.0)
    second = read_channels(path, ["EEG Fpz-Cz-1"], 100.0)  # the way out the message gives
    assert second.labels == ["EEG Fpz-Cz-1"] and second.data.shape == (1, 6000)
    assert read_channels(path, ["EOG"], 100.0).data.shape == (1, 6000)  # other channels read as before


def test_derivation_syntax():
    assert parse_channel("C4-M1=C4-M1") == parse_channel(" C4-M1 = C4 - M1 ")
    spec = parse_channel("Fpz-Cz=EEG Fpz - EEG Cz")
    assert (spec.name, spec.plus, spec.minus) == ("Fpz-Cz", "EEG Fpz", "EEG Cz")
    assert parse_channel("EEG Fpz-Cz").minus is None
    for bad in ("=C4-M1", "X=C4", "X=EEG C4-A1-M1", ""):
        with pytest.raises(ValueError, match="channel"):
            parse_channel(bad)
    # a file that stores the derivation is read as it is; one with referential channels is subtracted
    assert resolve_channels(["C4-M1=C4-M1"], ["EEG C4-A1"])[0][1:] == ("EEG C4-A1", None)
    assert resolve_channels(["C4-M1=C4-M1"], ["EEG C4", "EEG A1"])[0][1:] == ("EEG C4", "EEG A1")
    with pytest.raises(ChannelLookupError, match="derivation 'C4-M1=C4 - M1': channel 'M1' not found"):
        resolve_channels(["C4-M1=C4-M1"], ["EEG C4", "EEG A2"])


# ------------------------------------------------------------------ reading
def test_channels_of_different_rates_are_resampled_to_one_grid(tmp_path):
    path = _nsrr_like(tmp_path / "shhs1-200001.edf")
    sig = read_channels(path, ["EEG", "EOG(L)", "E2-M1"], sfreq=100.0)
    assert sig.data.shape == (3, 9500) and sig.data.dtype == np.float32 and sig.sfreq == 100.0
    assert sig.names == ["EEG", "EOG(L)", "E2-M1"] and sig.labels == ["EEG", "EOG(L)", "EOG(R)"]
    assert sig.source_sfreq == [125.0, 50.0, 50.0]
    mid = slice(300, -300)
    np.testing.assert_allclose(sig.data[0, mid], _sine(100, 95, 11.0)[mid], atol=0.5)
    np.testing.assert_allclose(sig.data[1, mid], _sine(100, 95, 0.5, 80)[mid], atol=0.5)
    # each channel is the one-channel read of it
    np.testing.assert_array_equal(sig.data[1], read_eeg(path, "EOG(L)", 100.0)[0])
    with pytest.raises(DataError, match=r"different rates \(125, 50 Hz\).*data\.sfreq"):
        read_channels(path, ["EEG", "EOG(L)"])


def test_derivation_is_the_difference_of_its_channels(tmp_path):
    path = _write(tmp_path / "ref.edf", {"C4": (_sine(200, 60, 10.0) + 20, 200.0), "M1": (_sine(200, 60, 10.0, 5) + 20, 200.0),
                                        "E1": (_sine(200, 60, 0.5), 200.0)})
    sig = read_channels(path, ["C4-M1=C4-M1", "E1"], sfreq=100.0)
    c4, _ = read_eeg(path, "C4", 100.0)
    m1, _ = read_eeg(path, "M1", 100.0)
    np.testing.assert_array_equal(sig.data[0], c4 - m1)
    assert sig.labels == ["C4 - M1", "E1"] and sig.names == ["C4-M1", "E1"]
    mid = slice(200, -200)
    np.testing.assert_allclose(sig.data[0, mid], _sine(100, 60, 10.0, 35)[mid], atol=0.5)
    with pytest.raises(DataError, match=r"ref\.edf: derivation 'C3-M2=C3 - M2': channel 'C3' not found.*C4, M1, E1"):
        read_channels(path, ["C3-M2=C3-M2"], 100.0)


@pytest.mark.parametrize("sfreq_from", [1001.0, 511.87, 200.0 / 3])
def test_resampling_keeps_the_exact_length_and_timing(sfreq_from):
    # limit_denominator(1000) took 100/1001 for 1/10: the time axis was off by 1 in 1000 (29 s in 8 h)
    seconds = 600.0
    x = _sine(sfreq_from, seconds, 7.0)
    y = _resample(x.astype(np.float32), sfreq_from, 100.0)
    assert len(y) == round(len(x) * 100.0 / sfreq_from)
    mid = slice(500, -500)
    np.testing.assert_allclose(y[mid], _sine(100.0, len(y) / 100.0, 7.0)[mid], atol=0.2)


def test_several_channels_decode_straight_into_one_array_with_each_channels_values(synth_dir, tmp_path):
    from dsn.data.cache import _save_rows
    from dsn.data.datasets import find_recordings
    from dsn.data.edf import read_channels
    from dsn.data.recording import Preprocessing, load_recording, preprocess

    psg = find_recordings(synth_dir)[0].psg
    both = read_channels(psg, ["EEG Fpz-Cz", "EOG horizontal"], 100.0)
    for row, label in zip(both.data, ["EEG Fpz-Cz", "EOG horizontal"]):
        np.testing.assert_array_equal(row, read_channels(psg, [label], 100.0).data[0])
    assert both.data.flags.c_contiguous and both.source_sfreq == [100.0, 100.0]
    files = find_recordings(synth_dir)[0]
    prep = Preprocessing(channels=("EEG Fpz-Cz", "EOG horizontal"))
    x, y = preprocess(files, prep)
    rec = load_recording(files, prep, tmp_path / "c")  # the cache entry written from the transposed view
    np.testing.assert_array_equal(np.asarray(rec.x), x)
    np.testing.assert_array_equal(rec.y, y)
    # the block-wise writer of a non-contiguous array: several blocks, runs with gaps
    v = np.random.default_rng(0).standard_normal((2, 500, 3000)).astype(np.float32).transpose(1, 0, 2)
    rows = np.r_[3:180, 200:201, 230:499]
    _save_rows(tmp_path / "x.npy", v, rows)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), v[rows])


# ------------------------------------------------------------------ through the pipeline
def test_recording_normalisation_and_loaders_carry_n_chans(synth_dir, tmp_path):
    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.data.datasets import find_recordings
    from dsn.data.normalize import normalize
    from dsn.data.recording import Preprocessing, load_recording

    files = find_recordings(synth_dir)[0]
    one = load_recording(files, Preprocessing(), tmp_path / "c")
    two = load_recording(files, Preprocessing(channels=("EEG Fpz-Cz", "EOG horizontal")), tmp_path / "c")
    assert two.x.shape == (len(one), 2, 3000) and isinstance(two.x, np.memmap)
    np.testing.assert_array_equal(two.x[:, 0], one.x[:, 0])  # the first channel is the one-channel recording
    assert two.meta["channels"] == {"labels": ["EEG Fpz-Cz", "EOG horizontal"], "source_sfreq": [100.0, 100.0]}
    # each channel normalised by its own statistics; one channel exactly as before
    z = normalize(np.asarray(two.x) * np.array([1.0, 40.0], dtype=np.float32)[None, :, None], "zscore", 100.0)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(z[:, 0], normalize(np.asarray(one.x), "zscore", 100.0)[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z[:, 1], normalize(np.asarray(two.x[:, 1:2]), "zscore", 100.0)[:, 0], rtol=1e-5, atol=1e-5)

    dm = SleepEDFDataModule(str(synth_dir), channels=["Fpz-Cz", "EOG horizontal"], n_folds=3, cache_dir=str(tmp_path / "c"),
                            progress=False, batch_size=8, normalize="zscore")
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (8, 2, 3000)
    ft = dm.for_stage("finetune", 2, 5)
    x, y, _ = next(iter(ft.train_dataloader()))
    assert tuple(x.shape) == (2, 5, 2, 3000)
    prep = dm.scorer_preprocessing()
    assert prep["channels"] == ["Fpz-Cz", "EOG horizontal"] and prep["source_sfreq"] == [100.0, 100.0]


def test_config_links_n_chans_and_keeps_the_deprecated_channel(tmp_path):
    from dsn import config
    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.errors import ConfigError

    cfg = config.parse(["--config", "conf/demo.yaml", "--data.channels", "[EEG, EOG(L)]"])
    assert cfg.net.n_chans == 2 and cfg.data.channels == ["EEG", "EOG(L)"]
    assert config.set_key(cfg, "data.channels", ["EEG Fpz-Cz"]).net.n_chans == 1
    old = config.parse(["--config", "conf/demo.yaml", "--data.channel", "EEG Pz-Oz"])
    assert old.net.n_chans == 1
    assert SleepEDFDataModule(**config.to_dict(old)["data"]).prep.channels == ("EEG Pz-Oz",)
    with pytest.raises(ValueError, match="give only channels"):
        SleepEDFDataModule(channels=["EEG", "EOG(L)"], channel="EEG Pz-Oz")
    with pytest.raises(ConfigError, match="net.n_chans follows the number of data.channels"):
        config.set_key(cfg, "net.n_chans", 3)
    for bad, match in [([], "data.channels is empty"), (["EEG", "EEG"], "named twice"),
                       (["X=C4"], r"data\.channels: 'X=C4' is not a derivation")]:
        with pytest.raises(ConfigError, match=match):
            config.set_key(cfg, "data.channels", bad)


def test_eog_recipe_overlay_adds_the_eog_and_nothing_else():
    from dsn import config

    one = config.load_config(["conf/recommended.yaml"])
    two = config.load_config(["conf/recommended.yaml", "conf/recommended-eog.yaml"])
    assert two.data.channels == ["EEG Fpz-Cz", "EOG horizontal"] and two.net.n_chans == 2
    diff = {k for k, v in config.training_items(two).items() if config.training_items(one).get(k) != v}
    assert diff == {"data.channels", "net.n_chans"}


def test_read_epochs_for_a_model_with_two_channels(tmp_path):
    from dsn.data.psg import read_epochs

    path = _nsrr_like(tmp_path / "shhs1-200002.edf")
    inp = read_epochs(path, ["C4-M1", "E1-M2"], 100.0, aliases={"C4-M1": ["EEG"]}, trained_sfreqs=[125.0, 50.0])
    assert inp.x.shape == (3, 2, 3000) and inp.labels == ["EEG", "EOG(L)"] and inp.source_sfreqs == [125.0, 50.0]
    sig = read_channels(path, ["EEG", "EOG(L)"], 100.0)
    np.testing.assert_array_equal(inp.x, sig.data[:, :9000].reshape(2, 3, 3000).transpose(1, 0, 2))
    # a 50-Hz EOG is upsampled only for a model trained on files that slow
    with pytest.raises(DataError, match=r"channel 'E1-M2' is sampled at 50 Hz, below the model's 100 Hz"):
        read_epochs(path, ["C4-M1", "E1-M2"], 100.0, aliases={"C4-M1": ["EEG"]})
    with pytest.raises(DataError, match=r"shhs1-200002\.edf: channel 'C4-M1' not found.*EEG\(sec\).*--channel"):
        read_epochs(path, ["C4-M1", "E1-M2"], 100.0)

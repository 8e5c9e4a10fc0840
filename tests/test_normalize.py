"""Per-recording amplitude normalisation: the statistics, the data module switch, and `dsn predict`'s two passes."""

from __future__ import annotations

import numpy as np
import pytest

from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.errors import DataError
from dsn.data.hypnograms import trim_and_clean
from dsn.data.normalize import NormalizedEpochs, channel_stats, normalize, scale_stats, sleep_window


def _x(seed: int = 0, gain: float = 30.0, offset: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((40, 1, 300)) * gain + offset).astype(np.float32)


def test_zscore_and_robust_give_unit_scale_and_zero_centre():
    x = _x()
    c, s = scale_stats(x, "zscore")
    assert c == pytest.approx(float(x.mean()), rel=1e-5) and s == pytest.approx(float(x.std()), rel=1e-5)
    for method in ("zscore", "robust"):
        z = normalize(x, method)
        assert z.dtype == np.float32 and z.shape == x.shape
        assert abs(float(np.median(z))) < 0.05 and float(z.std()) == pytest.approx(1.0, abs=0.03)


def test_robust_ignores_a_few_huge_artefacts_zscore_does_not():
    x = _x()
    spoiled = x.copy()
    spoiled[0, 0, :30] = 5000.0  # a movement artefact: 0.25 % of the samples
    assert scale_stats(spoiled, "robust")[1] == pytest.approx(scale_stats(x, "robust")[1], rel=0.02)
    assert scale_stats(spoiled, "zscore")[1] > 3 * scale_stats(x, "zscore")[1]


@pytest.mark.parametrize("method", ["zscore", "robust"])
def test_the_scale_comes_from_the_eeg_band_not_from_drifts_or_mains(method):
    x = _x(gain=20.0)
    t = np.arange(x.size) / 100.0
    drift = (60.0 * np.sin(2 * np.pi * 0.05 * t)).reshape(x.shape).astype(np.float32)  # sweat: 0.05 Hz, 60 uV
    mains = (40.0 * np.sin(2 * np.pi * 45.0 * t)).reshape(x.shape).astype(np.float32)  # above the band
    clean = scale_stats(x, method, 100.0)[1]
    for noise in (drift, mains):
        assert scale_stats(x + noise, method, 100.0)[1] == pytest.approx(clean, rel=0.1)
        assert scale_stats(x + noise, method)[1] > 1.4 * scale_stats(x, method)[1]  # broadband: inflated
    assert scale_stats(2.0 * x, method, 100.0)[1] == pytest.approx(2 * clean, rel=1e-4)  # a gain: exactly


def test_none_is_the_signal_itself_and_bad_input_is_named():
    x = _x()
    assert normalize(x, "none") is x
    with pytest.raises(ValueError, match="normalize='minmax'"):
        normalize(x, "minmax")
    with pytest.raises(ValueError, match="flat"):
        normalize(np.zeros((3, 1, 10), np.float32), "zscore")


def test_stats_from_another_array():
    x, ref = _x(0), _x(1, gain=10.0, offset=0.0)
    c, s = scale_stats(ref, "zscore")
    np.testing.assert_allclose(normalize(x, "zscore", stats_from=ref), (x - c) / s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trim", [30.0, 1.0, None])
def test_sleep_window_is_the_training_data_trim(trim):
    rng = np.random.default_rng(3)
    y = np.zeros(400, dtype=np.int64)
    y[150:260] = rng.integers(1, 5, 110)
    y[170:180] = 0  # an awakening inside the night stays
    keep = trim_and_clean(y, trim, 30.0, "drop")
    w = sleep_window(y, trim)
    np.testing.assert_array_equal(np.arange(400)[w], keep)
    assert sleep_window(np.zeros(10, dtype=np.int64), trim) == slice(0, 10)  # no sleep predicted: all epochs


def _dm(path, cache, **kw):
    return SleepEDFDataModule(str(path), n_folds=3, fold=0, n_val_subjects=1, cache_dir=str(cache), progress=False, **kw)


def test_datamodule_normalises_each_recording_and_keeps_the_cache_raw(synth_dir, tmp_path):
    raw = _dm(synth_dir, tmp_path / "c")
    raw.setup()
    norm = _dm(synth_dir, tmp_path / "c", normalize="zscore")
    norm.setup()
    for split in ("train", "val", "test"):
        for r, n in zip(raw.recordings[split], norm.recordings[split]):
            assert float(np.asarray(r.x).std()) > 5.0  # microvolts
            assert float(np.asarray(n.x).mean()) == pytest.approx(0.0, abs=1e-3)
            assert scale_stats(n.x, "zscore", 100.0)[1] == pytest.approx(1.0, rel=1e-3)  # unit scale in the EEG band
            np.testing.assert_array_equal(n.y, r.y)
            np.testing.assert_allclose(n.x, normalize(np.asarray(r.x), "zscore", 100.0), atol=1e-5)
    again = _dm(synth_dir, tmp_path / "c")  # the shared cache entries still hold microvolts
    again.setup()
    np.testing.assert_array_equal(np.asarray(again.recordings["val"][0].x), np.asarray(raw.recordings["val"][0].x))
    # a shift-augmented training batch is cut from the normalised signal
    shifted = _dm(synth_dir, tmp_path / "c", normalize="robust", max_shift=0.1)
    shifted.setup()
    xb = next(iter(shifted.train_dataloader()))[0]
    assert 0.3 < float(xb.std()) < 3.0


@pytest.mark.parametrize("n_chans", [1, 2])
def test_normalized_epochs_read_the_same_values_as_the_copy(n_chans):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((30, n_chans, 200)) * np.array([30.0, 80.0][:n_chans])[None, :, None] + 5).astype(np.float32)
    for method in ("zscore", "robust"):
        full = normalize(x, method, 100.0)
        lazy = NormalizedEpochs(x, *channel_stats(x, method, 100.0))
        assert lazy.shape == x.shape and len(lazy) == 30 and lazy.dtype == np.float32
        for key in (3, slice(4, 9), np.array([7, 2, 2]), (slice(None, 5), 0), (2, -1), (None, slice(0, 6)), (slice(1, 3), slice(None), slice(10, 20))):
            got = lazy[key]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, full[key])  # bit for bit: the same float32 formula
        np.testing.assert_array_equal(np.asarray(lazy), full)
        assert np.asarray(lazy, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="1 channel statistics"):
        NormalizedEpochs(np.zeros((3, 2, 5), np.float32), [0.0], [1.0])


def test_datamodule_normalises_on_access_and_keeps_the_statistics_beside_the_cache(synth_dir, tmp_path, monkeypatch):
    import dsn.data.recording as rmod

    first = _dm(synth_dir, tmp_path / "c", normalize="zscore")
    first.setup()
    rec = first.recordings["val"][0]
    assert isinstance(rec.x, NormalizedEpochs) and isinstance(rec.x.raw, np.memmap)  # no copy of the night
    assert (rec.cache_folder / "stats-zscore.json").exists()
    expected = normalize(np.asarray(rec.x.raw), "zscore", 100.0)
    np.testing.assert_array_equal(np.asarray(rec.x), expected)

    def no_stats(*a, **k):
        raise AssertionError("statistics recomputed although kept beside the cache entry")

    monkeypatch.setattr(rmod, "channel_stats", no_stats)
    again = _dm(synth_dir, tmp_path / "c", normalize="zscore")
    again.setup()  # a warm set-up reads the kept statistics, no sample
    np.testing.assert_array_equal(np.asarray(again.recordings["val"][0].x), expected)
    batch = next(iter(again.val_dataloader()))[0].numpy()
    np.testing.assert_array_equal(batch, expected[: len(batch)])
    with pytest.raises(AssertionError, match="recomputed"):  # another method is not read from zscore's file
        _dm(synth_dir, tmp_path / "c", normalize="robust").setup()


def _mapped_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps")
def test_the_statistics_pass_leaves_no_page_of_the_night_resident(synth_dir, tmp_path):
    from dsn.data.datasets import find_recordings
    from dsn.data.recording import Preprocessing, load_recording, normalized_epochs

    rec = load_recording(find_recordings(synth_dir)[0], Preprocessing(), tmp_path)
    path = rec.cache_folder / "x.npy"
    assert _mapped_kb(path) < 64  # mapped, not read
    np.asarray(rec.x).sum()
    assert _mapped_kb(path) > 0.9 * rec.x.nbytes / 1024  # reading every sample makes every page resident ...
    rec = load_recording(find_recordings(synth_dir)[0], Preprocessing(), tmp_path)
    x = normalized_epochs(rec, "zscore")  # ... the statistics read every sample, then release them
    assert _mapped_kb(path) < 64
    assert float(np.asarray(x).std()) > 0.5  # and the night reads back


def test_statistics_are_recomputed_where_the_cache_is_read_only(tmp_path):
    from dsn.data import cache

    assert cache.write_extra(tmp_path, "a.json", {"v": 1}) and cache.read_extra(tmp_path, "a.json") == {"v": 1}
    assert not cache.write_extra(tmp_path / "missing", "a.json", {"v": 1})
    assert cache.read_extra(tmp_path / "missing", "a.json") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left


def test_datamodule_refuses_an_unknown_method_and_names_a_flat_recording(synth_copy, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="normalize='max'"):
        _dm(synth_copy, tmp_path / "c", normalize="max")
    import dsn.data.datamodule as dmod

    real = dmod.load_recording

    def flat(f, *a, **k):
        rec = real(f, *a, **k)
        rec.x = np.zeros_like(np.asarray(rec.x))
        return rec

    monkeypatch.setattr(dmod, "load_recording", flat)
    with pytest.raises(DataError, match=r"PSG\.edf \(EEG Fpz-Cz\): the signal is flat"):
        _dm(synth_copy, tmp_path / "c2", normalize="zscore").setup()


def test_predict_two_passes_make_the_scores_independent_of_the_recording_gain():
    import torch

    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.models.scoring import SleepScorer
    from dsn.workflows.predict import scaled_proba

    torch.manual_seed(0)
    net = DeepSleepNet(DeepFeatureNet(n_filters_first=8, n_filters=8), hidden_size=8, shortcut_size=16)
    prep = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 1.0}
    x = (np.random.default_rng(0).standard_normal((30, 1, 3000)) * 20).astype(np.float32)
    for method in ("zscore", "robust"):
        scorer = SleepScorer(net, {**prep, "normalize": method}, {}, seq_len=5).eval()
        p = scaled_proba(scorer, x)
        np.testing.assert_allclose(scaled_proba(scorer, 2.5 * x), p, atol=1e-4)
        assert p.shape == (30, 5)
    raw = SleepScorer(net, prep, {}, seq_len=5).eval()  # a model saved before the option: raw microvolts
    np.testing.assert_allclose(scaled_proba(raw, x), raw.predict_proba(x), atol=1e-6)
    assert not np.allclose(scaled_proba(raw, 2.5 * x), scaled_proba(raw, x), atol=1e-3)


def _window_scorer(n_offsets: int = 3, temperature: float = 1.0):
    import torch

    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.models.scoring import SleepScorer

    torch.manual_seed(1)
    net = DeepSleepNet(DeepFeatureNet(n_filters_first=8, n_filters=8), hidden_size=8, shortcut_size=16)
    prep = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 1.0, "normalize": "zscore"}
    extra = {"calibration": {"temperature": temperature}} if temperature != 1.0 else None
    return SleepScorer(net, prep, {}, seq_len=5, n_offsets=n_offsets, extra=extra).eval()


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_predict_scores_the_sleep_period_it_finds_as_training_did(monkeypatch, temperature):
    """The final pass: the first pass's sleep period normalised by itself and streamed from its first epoch
    (all offsets); the epochs outside it keep the first pass (one streaming, the whole night's statistics)."""
    from dsn.data import normalize as nmod
    from dsn.evaluation import apply_temperature
    from dsn.workflows.predict import scaled_proba

    scorer = _window_scorer(temperature=temperature)
    x = (np.random.default_rng(3).standard_normal((40, 1, 3000)) * 20).astype(np.float32)
    x[12:30] *= 3.0  # "sleep" louder than the wake around it: the period's statistics differ from the night's
    seen = []

    def window(stages, trim, epoch_sec=30.0, wake=0):
        seen.append(np.asarray(stages))
        return slice(10, 32)

    monkeypatch.setattr(nmod, "sleep_window", window)
    proba, x_in, period = scaled_proba(scorer, x, return_input=True)
    first = scorer.raw_proba(normalize(x, "zscore", 100.0), n_offsets=1)
    np.testing.assert_array_equal(seen[0], first.argmax(-1))  # the window comes from the first pass
    expected = first.copy()
    expected[10:32] = scorer.raw_proba(normalize(x[10:32], "zscore", 100.0))  # = dsn evaluate of that period
    if temperature != 1.0:
        expected = apply_temperature(expected, temperature)
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    assert not np.allclose(proba[10:32], scorer.predict_proba(normalize(x, "zscore", 100.0))[10:32], atol=1e-3)
    np.testing.assert_allclose(x_in, normalize(x, "zscore", 100.0, stats_from=x[10:32]), atol=1e-6)
    assert period == slice(10, 32)


def test_predict_reuses_the_first_pass_when_the_sleep_period_is_the_whole_night(monkeypatch):
    """Same statistics, same input: the CNN runs once and the first pass's streaming is one of the offsets;
    the probabilities equal a second full pass's."""
    from dsn.workflows.predict import scaled_proba

    scorer = _window_scorer(n_offsets=5)
    x = (np.random.default_rng(4).standard_normal((40, 1, 3000)) * 20).astype(np.float32)
    calls = []
    hook = scorer.net.feature_net.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    monkeypatch.setattr("dsn.data.normalize.sleep_window", lambda s, t, e=30.0, wake=0: slice(0, len(s)))
    proba = scaled_proba(scorer, x)
    hook.remove()
    assert sum(calls) == len(x)  # every epoch through the CNN once
    np.testing.assert_allclose(proba, scorer.predict_proba(normalize(x, "zscore", 100.0)), atol=1e-6)


def test_features_are_reused_across_offset_counts():
    import torch

    scorer = _window_scorer(n_offsets=5)
    x = torch.from_numpy((np.random.default_rng(5).standard_normal((23, 1, 3000)) * 2).astype(np.float32))
    nf = scorer.night_features(x)
    one = scorer.proba_from_features(nf, n_offsets=1)
    assert set(nf.rows) == {0} and nf.fwd is not None
    np.testing.assert_allclose(one, scorer.raw_proba(x, n_offsets=1), atol=1e-6)
    np.testing.assert_allclose(scorer.proba_from_features(nf), scorer.raw_proba(x), atol=1e-6)
    assert set(nf.rows) == {0, 1, 2, 3, 4}

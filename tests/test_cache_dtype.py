"""``data.cache_dtype: float16``: a cache of half the size holding the float32 epochs rounded to float16 (issue 33)."""

from __future__ import annotations

import numpy as np
import pytest

from dsn.data import cache
from dsn.data import recording as recording_mod
from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.datasets import find_recordings
from dsn.data.errors import DataError
from dsn.data.recording import Preprocessing, load_recording

TWO = ("EEG Fpz-Cz", "EEG Pz-Oz")


def test_the_default_keeps_the_keys_of_entries_written_before_the_option():
    params = Preprocessing(channels=TWO).params()
    assert "cache_dtype" not in params  # float32 entries keep their keys: no rebuild
    assert Preprocessing(channels=TWO, cache_dtype="float16").params() == {**params, "cache_dtype": "float16"}
    with pytest.raises(ValueError, match="cache_dtype='float64'"):
        Preprocessing(cache_dtype="float64")


def test_float16_entries_hold_the_rounded_epochs_in_half_the_bytes(synth_dir, tmp_path):
    files = find_recordings(synth_dir)[0]
    r32 = load_recording(files, Preprocessing(channels=TWO), tmp_path)
    r16 = load_recording(files, Preprocessing(channels=TWO, cache_dtype="float16"), tmp_path)
    assert isinstance(r16.x, np.memmap) and r16.x.dtype == np.float16 and r32.x.dtype == np.float32
    assert r16.cache_folder != r32.cache_folder  # two entries, never mixed
    np.testing.assert_array_equal(np.asarray(r16.x), np.asarray(r32.x).astype(np.float16))
    np.testing.assert_array_equal(r16.y, r32.y)
    size = {r.x.dtype: (r.cache_folder / "x.npy").stat().st_size for r in (r16, r32)}
    assert size[np.dtype(np.float16)] == pytest.approx(size[np.dtype(np.float32)] / 2, rel=1e-3)
    rel = np.abs(np.asarray(r16.x, np.float32) - r32.x) / np.maximum(np.abs(r32.x), 1e-3)
    assert float(rel[np.abs(r32.x) > 1.0].max()) <= 2**-11  # half an ulp of float16's 10-bit mantissa
    again = load_recording(files, Preprocessing(channels=TWO, cache_dtype="float16"), tmp_path)  # read back
    np.testing.assert_array_equal(np.asarray(again.x), np.asarray(r16.x))
    uncached = load_recording(files, Preprocessing(channels=TWO, cache_dtype="float16"), use_cache=False)
    np.testing.assert_array_equal(uncached.x, np.asarray(r16.x))


def test_a_sample_beyond_float16_is_refused_and_leaves_no_entry(synth_dir, tmp_path, monkeypatch):
    with pytest.raises(OverflowError, match="70000 does not fit float16"):
        cache.write_entry(tmp_path / "e", np.full((2, 1, 3), 7e4, np.float32), np.zeros(2), {}, dtype="float16")
    real = recording_mod.read_channels

    def loud(*a, **k):
        sig = real(*a, **k)
        sig.data[...] *= 1e4
        return sig

    monkeypatch.setattr(recording_mod, "read_channels", loud)
    files = find_recordings(synth_dir)[0]
    with pytest.raises(DataError, match=r"PSG\.edf: a sample of .* does not fit float16 .*cache_dtype: float32"):
        load_recording(files, Preprocessing(cache_dtype="float16"), tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())


def test_the_data_module_trains_on_float16_entries_as_float32_batches(synth_dir, tmp_path):
    kw = {"n_folds": 3, "fold": 0, "n_val_subjects": 1, "cache_dir": str(tmp_path), "progress": False}
    dm = SleepEDFDataModule(str(synth_dir), cache_dtype="float16", normalize="zscore", max_shift=0.1, **kw)
    dm.setup()
    assert dm.recordings["train"][0].x.raw.dtype == np.float16
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))):
        assert batch[0].dtype.is_floating_point and str(batch[0].dtype) == "torch.float32"
        assert 0.3 < float(batch[0].std()) < 3.0

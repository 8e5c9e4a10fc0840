"""SleepEDFDataModule on synthetic Sleep-EDF: folds, both modes, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsn.data import recording as recording_mod
from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.edf import DataError, find_recordings
from dsn.data.recording import Preprocessing, load_recording


def _dm(path, cache, **kw):
    kw = {"n_folds": 3, "fold": 0, "n_val_subjects": 1, "cache_dir": str(cache), "progress": False, **kw}
    return SleepEDFDataModule(str(path), **kw)


def test_folds_are_subject_wise(synth_dir, tmp_path):
    tested = []
    for fold in range(3):
        dm = _dm(synth_dir, tmp_path / "c", fold=fold)
        dm.setup()
        subj = {s: {r.subject for r in dm.recordings[s]} for s in ("train", "val", "test")}
        assert not (subj["train"] & subj["val"] or subj["train"] & subj["test"] or subj["val"] & subj["test"])
        assert len(subj["train"] | subj["val"] | subj["test"]) == 6
        tested += sorted(subj["test"])
        counts = dm.class_counts()
        assert set(counts) == {"train", "val", "test"} and all(counts["train"][s] > 0 for s in ("W", "N2", "N3", "REM"))
    assert len(set(tested)) == 6


def test_pretrain_loader_is_balanced(synth_dir, tmp_path):
    dm = _dm(synth_dir, tmp_path / "c", batch_size=64)
    dm.setup()
    ys = torch.cat([y for _, y in dm.train_dataloader()])
    counts = torch.bincount(ys, minlength=5)
    present = counts[counts > 0]
    assert (present == present.max()).all() and len(present) >= 4
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (1, 3000) and x.dtype == torch.float32


def test_finetune_loaders_stream_and_shuffle(synth_dir, tmp_path):
    dm = _dm(synth_dir, tmp_path / "c", mode="finetune", batch_size=3, seq_len=25)
    dm.setup()
    x, y, first = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 25, 1, 3000) and y.shape == (3, 25) and first.tolist() == [True] * 3
    # evaluation streams every recording whole: every epoch is scored once
    n_val = sum(len(r) for r in dm.recordings["val"])
    assert sum(int(y.numel()) for _, y, _ in dm.val_dataloader()) == n_val
    dm.hparams.sequence_sampling = "shuffle"
    x, y, first = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 25, 1, 3000) and first.all()


def test_masked_unscored_keeps_sequences_contiguous(synth_dir, tmp_path):
    files = find_recordings(synth_dir)[0]
    drop = load_recording(files, Preprocessing(unscored="drop"), tmp_path)
    mask = load_recording(files, Preprocessing(unscored="mask"), tmp_path)
    assert (drop.y >= 0).all()
    np.testing.assert_array_equal(mask.y[mask.y >= 0], drop.y)  # same scored epochs, in the same order
    assert len(mask) - len(drop) == int((mask.y == -1).sum())  # the rest are kept as ignored labels


def test_cache_second_run_does_not_read_edf(synth_dir, tmp_path, monkeypatch):
    files = find_recordings(synth_dir)[0]
    prep = Preprocessing()
    first = load_recording(files, prep, tmp_path)
    assert isinstance(first.x, np.memmap)  # memory-mapped, not held in RAM

    def boom(*a, **k):
        raise AssertionError("EDF read although cached")

    monkeypatch.setattr(recording_mod, "read_eeg", boom)
    monkeypatch.setattr(recording_mod, "read_hypnogram", boom)
    again = load_recording(files, prep, tmp_path)
    np.testing.assert_array_equal(np.asarray(again.x), np.asarray(first.x))
    # a different parameter is a different entry (and so needs the EDF)
    with pytest.raises(AssertionError, match="EDF read"):
        load_recording(files, Preprocessing(trim_minutes=10), tmp_path)


def test_failed_preprocessing_leaves_no_cache_entry(synth_copy, tmp_path):
    psg = sorted(synth_copy.glob("*-PSG.edf"))[0]
    psg.write_bytes(psg.read_bytes()[:-5000])
    files = find_recordings(synth_copy)[0]
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="truncated"):
        load_recording(files, Preprocessing(), cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_wrong_channel_message_names_file_and_channels(synth_dir, tmp_path):
    dm = _dm(synth_dir, tmp_path / "c", channel="EEG C4")
    with pytest.raises(DataError, match=r"-PSG\.edf: channel 'EEG C4' not found.*EEG Fpz-Cz"):
        dm.setup()


def test_resampling_and_other_channel(synth_dir, tmp_path):
    files = find_recordings(synth_dir)[0]
    rec = load_recording(files, Preprocessing(channel="EEG Pz-Oz", sfreq=50.0), tmp_path)
    assert rec.x.shape[1:] == (1, 1500) and rec.sfreq == 50.0


def test_download_path_offline(tmp_path, synth_dir, monkeypatch):
    """MNE's fetcher returns files already in its cache folder without network."""
    import shutil

    from dsn.data.fetch import fetch_sleep_edf

    folder = tmp_path / "physionet-sleep-data"
    folder.mkdir()
    src = find_recordings(synth_dir)[0]
    shutil.copy(src.psg, folder / "SC4001E0-PSG.edf")
    shutil.copy(src.hypnogram, folder / "SC4001EC-Hypnogram.edf")
    out = fetch_sleep_edf([0], [1], path=tmp_path)
    assert out == folder
    dm = SleepEDFDataModule(str(tmp_path), download=True, subjects=[0], recordings=[1], cache_dir=str(tmp_path / "c"),
                            train_subjects=["SC400"], progress=False)
    dm.setup()
    assert [r.name for r in dm.recordings["train"]] == ["SC4001E0"]
    # a file that is not there must be downloaded: offline, a clear error
    with pytest.raises(DataError, match="could not fetch Sleep-EDF subjects \\[1\\]"):
        fetch_sleep_edf([1], [1], path=tmp_path, base_url="http://127.0.0.1:9/")

"""SleepEDFDataModule on synthetic Sleep-EDF: folds, both modes, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsn.data import recording as recording_mod
from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.datasets import find_recordings
from dsn.data.errors import DataError
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

    monkeypatch.setattr(recording_mod, "read_channels", boom)
    monkeypatch.setattr(recording_mod, "stage_labels", boom)
    again = load_recording(files, prep, tmp_path)
    np.testing.assert_array_equal(np.asarray(again.x), np.asarray(first.x))
    # a different parameter is a different entry (and so needs the EDF): channels and aliases included
    for other in [Preprocessing(trim_minutes=10), Preprocessing(channels=("Fpz-Cz",)),
                  Preprocessing(channels=("EEG Fpz-Cz", "EEG Pz-Oz")),
                  Preprocessing(channel_aliases={"Fpz-Cz": ["EEG Fpz"]})]:
        with pytest.raises(AssertionError, match="EDF read"):
            load_recording(files, other, tmp_path)


def test_failed_preprocessing_leaves_no_cache_entry(synth_copy, tmp_path):
    psg = sorted(synth_copy.glob("*-PSG.edf"))[0]
    psg.write_bytes(psg.read_bytes()[:-5000])
    files = find_recordings(synth_copy)[0]
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="truncated"):
        load_recording(files, Preprocessing(), cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_wrong_channel_message_names_file_and_channels(synth_dir, tmp_path):
    dm = _dm(synth_dir, tmp_path / "c", channels=["EEG Fpz-Cz", "EEG C4"])
    with pytest.raises(DataError, match=r"-PSG\.edf: channel 'EEG C4' not found \(tried EEG C4.*EEG Fpz-Cz.*data\.channels"):
        dm.setup()
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # no cache entry left behind


def test_resampling_and_other_channel(synth_dir, tmp_path):
    files = find_recordings(synth_dir)[0]
    rec = load_recording(files, Preprocessing(channels="EEG Pz-Oz", sfreq=50.0), tmp_path)
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


def test_subject_numbers_select_cassette_and_telemetry_only_by_id(synth_dir, tmp_path):
    """Sleep-cassette SC401 and sleep-telemetry ST701 share the number 1: a number means cassette."""
    for src, dst in (("SC4011E0-PSG.edf", "SC4011E0-PSG.edf"), ("SC4011EL-Hypnogram.edf", "SC4011EL-Hypnogram.edf"),
                     ("SC4011E0-PSG.edf", "ST7011J0-PSG.edf"), ("SC4011EL-Hypnogram.edf", "ST7011JP-Hypnogram.edf"),
                     ("SC4021E0-PSG.edf", "SC4021E0-PSG.edf"), ("SC4021EE-Hypnogram.edf", "SC4021EE-Hypnogram.edf")):
        (tmp_path / dst).symlink_to(synth_dir / src)

    def chosen(subjects):
        return sorted(f.subject for f in _dm(tmp_path, tmp_path / "c", subjects=subjects)._discover())

    assert chosen([1]) == ["SC401"]
    assert chosen(["ST701"]) == ["ST701"]
    assert chosen([1, "ST701", "SC402"]) == ["SC401", "SC402", "ST701"]
    assert chosen(None) == ["SC401", "SC402", "ST701"]
    with pytest.raises(ValueError, match=r"subjects: 'XY701' is neither a sleep-cassette subject number"):
        _dm(tmp_path, tmp_path / "c", subjects=["XY701"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_shift": 1.5}, r"max_shift=1.5: must be a fraction of the epoch length in \[0, 1\]"),
     ({"max_shift": -0.1}, r"max_shift=-0.1"),
     ({"skip_first": -1}, r"skip_first=-1: must be an integer number of epochs >= 0")],
)
def test_augmentation_arguments_are_checked(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _dm(tmp_path, tmp_path / "c", **kwargs)


def test_training_items_are_shifted_and_evaluation_items_are_not(synth_dir, tmp_path):
    from dsn.data.sampling import read_shifted

    dm = _dm(synth_dir, tmp_path / "c", batch_size=8, max_shift=0.1, seed=3)
    dm.setup()
    assert dm.shift_samples == 300
    loader = dm.train_dataloader()
    keys = list(loader.sampler)[:8]
    shifts = [k[2] for k in keys]
    assert all(-300 <= s <= 300 for s in shifts) and len(set(shifts)) > 1
    x, y = next(iter(loader))
    ds = loader.dataset
    for row, (i, _, shift) in enumerate(keys):  # each item really is its epoch moved by the drawn offset
        rec = ds.recordings[ds._rec[i]]
        want = read_shifted(rec.x, int(ds._ep[i]), 1, shift)[0]
        np.testing.assert_array_equal(x[row].numpy(), want)
        assert int(y[row]) == int(rec.y[ds._ep[i]])
    assert not np.array_equal(x[0].numpy(), ds[keys[0][0]][0].numpy())
    vx, _ = next(iter(dm.val_dataloader()))  # evaluation: the stored epochs, unmoved
    val = dm.recordings["val"][0]
    np.testing.assert_array_equal(vx.numpy(), np.asarray(val.x[: len(vx)]))
    ft = dm.for_stage("finetune", batch_size=2, seq_len=5)
    assert ft.hparams.max_shift == 0.1 and ft.shift_samples == 300


def test_finetune_streams_skip_and_shift_in_training_only(synth_dir, tmp_path):
    from dsn.data.sampling import read_shifted

    dm = _dm(synth_dir, tmp_path / "c", mode="finetune", batch_size=2, seq_len=5, max_shift=0.05, skip_first=3)
    dm.setup()
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    sampler.set_epoch(2)
    keys = next(iter(sampler))
    x, y, _ = next(iter(loader))
    for row, (w, skip, shift) in enumerate(keys):
        rec_i, start, length, _ = sampler.windows[w]
        rec = dm.recordings["train"][rec_i]
        np.testing.assert_array_equal(x[row].numpy(), read_shifted(rec.x, start + skip, length, shift))
        np.testing.assert_array_equal(y[row].numpy(), rec.y[start + skip : start + skip + length])
    ev = dm.val_dataloader().batch_sampler
    assert all(isinstance(k, int) for b in ev for k in b)  # evaluation keys: plain windows


def test_ddp_needs_use_distributed_sampler_false(synth_dir, tmp_path):
    from types import SimpleNamespace

    dm = _dm(synth_dir, tmp_path / "c")
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(ValueError, match="use_distributed_sampler=True with 2 processes.*use_distributed_sampler=False"):
        dm.train_dataloader()
    dm.trainer._accelerator_connector.use_distributed_sampler = False
    assert len(dm.val_dataloader()) > 0

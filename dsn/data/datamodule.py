"""``SleepEDFDataModule``: Sleep-EDF recordings -> pretraining epochs or fine-tuning sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from dsn.data.edf import DataError, RecordingFiles, find_recordings
from dsn.data.labels import STAGES, class_counts
from dsn.data.recording import Preprocessing, Recording, load_recording
from dsn.data.sampling import (
    BalancedSampler,
    EpochDataset,
    SequenceDataset,
    StreamBatchSampler,
    independent_windows,
)
from dsn.data.splits import Split, fixed_split, subject_kfold

SPLITS = ("train", "val", "test")


class SleepEDFDataModule(L.LightningDataModule):
    """Sleep-EDF recordings as single epochs (``mode="pretrain"``) or sequences (``mode="finetune"``).

    Parameters
    ----------
    data_dir : folder with Sleep-EDF ``*-PSG.edf`` / ``*-Hypnogram.edf`` pairs (searched recursively).
    channel, sfreq, epoch_sec, trim_minutes, unscored, length_mismatch : preprocessing, see
        :class:`~dsn.data.recording.Preprocessing`.
    download : fetch ``subjects`` x ``recordings`` from PhysioNet with MNE first (files already in
        ``data_dir/physionet-sleep-data`` are used as they are).
    subjects, recordings : what to download, and with ``subjects`` also which subject numbers to use.
    n_folds, fold, n_val_subjects, split_seed : subject-wise k-fold split (``n_folds = n_subjects`` is
        leave-one-subject-out).
    train_subjects, val_subjects, test_subjects : an explicit split instead (subject ids like ``SC400``).
    mode : ``"pretrain"`` (single epochs, class-balanced oversampling) or ``"finetune"`` (sequences).
    batch_size : epochs per batch (pretrain) or sequences per batch (finetune).
    seq_len : epochs per sequence (finetune).
    oversample, redraw_oversampling : class-balanced oversampling of the pretraining set, redrawn each epoch or not.
    sequence_sampling : ``"stream"`` (each recording cut into ``batch_size`` parallel streams read in order, so
        the LSTM state is carried; the official recipe) or ``"shuffle"`` (independent shuffled sequences).
    cache_dir, use_cache : preprocessed-recording cache (default ``$DSN_CACHE_DIR`` or ``~/.cache/dsn``).
    num_workers, pin_memory : DataLoader settings.
    seed : seed of the samplers.
    progress : show a progress bar while loading recordings.
    """

    def __init__(
        self,
        data_dir: str = "data/demo",
        channel: str = "EEG Fpz-Cz",
        sfreq: float = 100.0,
        epoch_sec: float = 30.0,
        trim_minutes: float | None = 30.0,
        unscored: Literal["drop", "mask"] = "drop",
        length_mismatch: Literal["raise", "crop"] = "raise",
        download: bool = False,
        subjects: list[int] | None = None,
        recordings: list[int] = [1, 2],  # noqa: B006 - jsonargparse needs a visible default
        n_folds: int = 5,
        fold: int = 0,
        n_val_subjects: int = 1,
        split_seed: int = 0,
        train_subjects: list[str] | None = None,
        val_subjects: list[str] | None = None,
        test_subjects: list[str] | None = None,
        mode: Literal["pretrain", "finetune"] = "pretrain",
        batch_size: int = 100,
        eval_batch_size: int = 500,
        seq_len: int = 25,
        oversample: bool = True,
        redraw_oversampling: bool = False,
        sequence_sampling: Literal["stream", "shuffle"] = "stream",
        cache_dir: str | None = None,
        use_cache: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.prep = Preprocessing(channel, sfreq, epoch_sec, trim_minutes, unscored, length_mismatch)
        self.mode = mode
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.split: Split | None = None
        self.recordings: dict[str, list[Recording]] = {}
        self._files: list[RecordingFiles] | None = None

    # ----------------------------------------------------------------- discovery and loading
    @property
    def n_times(self) -> int:
        return self.prep.n_times

    def prepare_data(self) -> None:
        """Download (when asked) and fill the preprocessing cache."""
        self._discover()

    def _discover(self) -> list[RecordingFiles]:
        if self._files is not None:
            return self._files
        hp = self.hparams
        data_dir = Path(hp.data_dir)
        if hp.download:
            from dsn.data.fetch import fetch_sleep_edf

            if not hp.subjects:
                raise DataError("download=True needs `subjects` (e.g. [0, 1, 2]): which Sleep-EDF subjects to fetch.")
            data_dir = fetch_sleep_edf(hp.subjects, hp.recordings, path=data_dir)
        files = find_recordings(data_dir)
        if hp.subjects is not None:
            wanted = {int(s) for s in hp.subjects}
            files = [f for f in files if int(f.subject[3:]) in wanted]
        if hp.recordings is not None:
            files = [f for f in files if f.night in set(hp.recordings)]
        if not files:
            raise DataError(f"{data_dir}: no recordings left after selecting subjects={hp.subjects} nights={hp.recordings}.")
        self._files = files
        return files

    def make_split(self) -> Split:
        hp = self.hparams
        subjects = sorted({f.subject for f in self._discover()})
        if hp.train_subjects or hp.val_subjects or hp.test_subjects:
            return fixed_split(hp.train_subjects or [], hp.val_subjects or [], hp.test_subjects or [], subjects)
        return subject_kfold(subjects, hp.n_folds, hp.fold, hp.n_val_subjects, hp.split_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.recordings:
            return
        files = self._discover()
        self.split = self.make_split()
        by_subject = {name: set(getattr(self.split, name)) for name in SPLITS}
        wanted = [f for f in files if any(f.subject in s for s in by_subject.values())]
        loaded = {}
        it = wanted
        if self.hparams.progress:
            from tqdm.auto import tqdm

            it = tqdm(wanted, desc="Loading recordings", unit="rec", leave=False)
        for f in it:
            loaded[f.name] = load_recording(f, self.prep, self.hparams.cache_dir, self.hparams.use_cache)
        self.recordings = {
            name: [loaded[f.name] for f in wanted if f.subject in by_subject[name]] for name in SPLITS
        }

    # ----------------------------------------------------------------- reporting
    def class_counts(self) -> dict[str, dict[str, int]]:
        """Epochs per stage in each split (masked epochs not counted)."""
        return {
            name: class_counts(np.concatenate([r.y for r in recs]) if recs else np.zeros(0))
            for name, recs in self.recordings.items()
        }

    def summary(self) -> dict:
        """Subjects, recordings and class counts per split (logged to MLflow)."""
        return {
            "split": self.split.as_dict() if self.split else None,
            "recordings": {k: [r.name for r in v] for k, v in self.recordings.items()},
            "class_counts": self.class_counts(),
            "stages": list(STAGES),
        }

    # ----------------------------------------------------------------- loaders
    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.num_workers > 0,
            **kwargs,
        )

    def _check(self, split: str) -> list[Recording]:
        if not self.recordings:
            self.setup()
        recs = self.recordings[split]
        if not recs:
            raise DataError(f"the {split} split has no recordings (subjects: {getattr(self.split, split)}).")
        return recs

    def _sequence_loader(self, split: str, train: bool) -> DataLoader:
        recs = self._check(split)
        if train and self.hparams.sequence_sampling == "shuffle":
            ds = SequenceDataset(recs, independent_windows(recs, self.seq_len))
            return self._loader(ds, batch_size=self.batch_size, shuffle=True, drop_last=False)
        # evaluation streams each recording whole, one stream, every epoch scored (the official test procedure)
        sampler = StreamBatchSampler(
            recs,
            batch_size=self.batch_size if train else 1,
            seq_len=self.seq_len,
            shuffle=train,
            keep_tail=not train,
            seed=self.hparams.seed,
        )
        return self._loader(SequenceDataset(recs, sampler.windows), batch_sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        if self.mode == "finetune":
            return self._sequence_loader("train", train=True)
        ds = EpochDataset(self._check("train"))
        if self.hparams.oversample:
            sampler = BalancedSampler(ds.labels, seed=self.hparams.seed, redraw=self.hparams.redraw_oversampling)
            return self._loader(ds, batch_size=self.batch_size, sampler=sampler)
        return self._loader(ds, batch_size=self.batch_size, shuffle=True)

    def _eval_loader(self, split: str) -> DataLoader:
        if self.mode == "finetune":
            return self._sequence_loader(split, train=False)
        return self._loader(EpochDataset(self._check(split)), batch_size=self.hparams.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

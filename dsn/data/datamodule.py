"""``SleepEDFDataModule``: Sleep-EDF recordings -> pretraining epochs or fine-tuning sequences."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from dsn.data.cache import reserve_open_files
from dsn.data.channels import merge_aliases, pick_channels
from dsn.data.datasets import RecordingFiles, find_recordings, load_profile
from dsn.data.device_sampling import DeviceBatches
from dsn.data.errors import DataError
from dsn.data.labels import STAGES, class_counts
from dsn.data.normalize import NORMALIZE_METHODS, NormalizeMethod
from dsn.data.recording import Preprocessing, Recording, load_recording, normalized_epochs
from dsn.data.sampling import (
    BalancedSampler,
    EpochDataset,
    SequenceDataset,
    ShardedSampler,
    StreamBatchSampler,
    independent_windows,
)
from dsn.data.sanity import describe_problems, recorded_problems
from dsn.data.sources import (
    Source,
    channel_error,
    prefixed,
    scorer_aliases,
    source_groups,
    source_list,
    spec_sources,
    split_sources,
)
from dsn.data.splits import Split, fixed_split, subject_kfold

SPLITS = ("train", "val", "test")


def subject_ids(subjects: list[int | str], sleep_edf: bool = True) -> set[str]:
    """Subject ids (``SC401``, ``ST701``) named by ``subjects``: a number ``n`` (or a string of digits) is the
    sleep-cassette subject ``SC4nn``; the telemetry study is selected only by explicit ids (``"ST701"``).
    With ``sleep_edf=False`` (other data sets) the ids are taken as written (``shhs-200001``, ``sub-01``).

    Raises
    ------
    ValueError
        For anything else, naming the value.
    """
    if not sleep_edf:
        return {str(s).strip() for s in subjects}
    ids = set()
    for s in subjects:
        text = str(s).strip()
        if not isinstance(s, bool) and isinstance(s, int | str) and text.isdigit() and int(text) < 100:
            ids.add(f"SC4{int(text):02d}")
        elif isinstance(s, str) and re.fullmatch(r"(SC4|ST7)\d{2}", text):
            ids.add(text)
        else:
            raise ValueError(
                f"subjects: {s!r} is neither a sleep-cassette subject number (0..99, e.g. 1 for SC401) nor a "
                "subject id like 'SC401' or 'ST701' (telemetry subjects are selected by id only)"
            )
    return ids


def _check_options(max_shift: float, skip_first: int, normalize: str) -> None:
    """:class:`SleepEDFDataModule`'s augmentation and normalisation options in range (``ValueError`` naming the key)."""
    if isinstance(max_shift, bool) or not isinstance(max_shift, int | float) or not 0.0 <= max_shift <= 1.0:
        raise ValueError(f"max_shift={max_shift!r}: must be a fraction of the epoch length in [0, 1] (0: off)")
    if isinstance(skip_first, bool) or not isinstance(skip_first, int) or skip_first < 0:
        raise ValueError(f"skip_first={skip_first!r}: must be an integer number of epochs >= 0 (0: off)")
    if normalize not in NORMALIZE_METHODS:
        raise ValueError(f"normalize={normalize!r}: must be one of {list(NORMALIZE_METHODS)}")


class SleepEDFDataModule(L.LightningDataModule):
    """Sleep-EDF recordings as single epochs (``mode="pretrain"``) or sequences (``mode="finetune"``).

    Parameters
    ----------
    data_dir : str, default "data/demo"
        Folder with the data set's recordings and hypnograms (searched recursively; Sleep-EDF:
        ``*-PSG.edf`` / ``*-Hypnogram.edf`` pairs).
    dataset : str, default "sleep-edf"
        Data-set profile: how recordings are found, paired with their hypnograms, named (subject, night) and
        labelled. A built-in name (``sleep-edf``, ``nsrr``, ``bids``, ``generic``: ``conf/datasets/``) or the
        path of a YAML profile; see :mod:`dsn.data.datasets`.
    channels : list of str, default ["EEG Fpz-Cz"]
        The signals the network reads, in order (``net.n_chans`` follows their number). Each is found by its
        exact label, an alias (``Fpz-Cz`` = ``EEG Fpz-Cz``, ``C4-M1`` = ``C4-A1`` = ``EEG C4-A1``, ``E1-M2`` =
        ``EOG(L)``; case, a leading ``EEG``/``EOG`` and A1/A2 = M1/M2 are ignored) or is a bipolar derivation
        ``"NAME=PLUS-MINUS"`` (``"C4-M1=C4-M1"``: ``C4`` minus ``M1``; spaces around the minus when the labels
        hold hyphens: ``"Fpz-Cz=EEG Fpz - EEG Cz"``); see :mod:`dsn.data.channels`. Every channel is resampled
        to ``sfreq``.
    channel : str, optional
        Deprecated spelling of one channel (``channels: [channel]``).
    channel_aliases : dict of str to list of str, optional
        More aliases, ``{canonical: [alias, ...]}`` (added to the built-in table), e.g.
        ``{Fpz-Cz: [EEG]}`` to read a file's ``EEG`` where a model wants ``Fpz-Cz``. The data-set profile's
        ``channel_aliases`` are added as well.
    sfreq : float, default 100.0
        Sampling rate after resampling, Hz.
    epoch_sec : float, default 30.0
        Epoch length, seconds.
    trim_minutes : float or None, default 30.0
        Wake kept before the first / after the last sleep epoch (``None``: keep all).
    unscored : {"drop", "mask"}, default "drop"
        Unscored / movement epochs removed (official code) or kept as ignored labels.
    length_mismatch : {"raise", "crop"}, default "raise"
        What to do when hypnogram and signal lengths disagree.
    download : bool, default False
        Fetch the sleep-cassette ``subjects`` x ``recordings`` from PhysioNet with MNE first (files already
        in ``data_dir/physionet-sleep-data`` are used as they are).
    subjects : list of int or str, optional
        Which subjects to use (and, with ``download``, to fetch). A number ``n`` (0..99) names the
        sleep-cassette subject ``SC4nn``, as MNE's fetcher numbers them: ``[1]`` selects ``SC401`` and never
        the telemetry subject ``ST701`` that shares the number. Telemetry (or cassette) subjects are named
        explicitly by id, e.g. ``["ST701", "ST702"]`` or ``[0, "ST701"]``. ``None``: every recording found.
    recordings : list of int, default [1, 2]
        Nights to use (and to fetch).
    n_folds : int, default 5
        Subject-wise k-fold split (``n_folds = n_subjects`` is leave-one-subject-out).
    fold : int, default 0
        Which fold is the test fold (``0 .. n_folds - 1``).
    n_val_subjects : int, default 1
        Validation subjects taken from the training subjects of the fold.
    split_seed : int, default 0
        Seed of the subject shuffle of the k-fold split.
    train_subjects : list of str, optional
        An explicit split instead of the k-fold one: training subject ids (like ``SC400``).
    val_subjects : list of str, optional
        Validation subject ids of an explicit split.
    test_subjects : list of str, optional
        Test subject ids of an explicit split.
    sources : list of dict, optional
        Several data sets in one fit (:mod:`dsn.data.sources`), each ``{name, dataset, data_dir, channels,
        channel_aliases, subjects, recordings}`` read through its own profile, with ``channels`` mapping each of
        ``channels`` (the montage) to the source's label or derivation (``{EEG: C4-A1, EOG: EOG(L)}``). Then
        ``data_dir``, ``dataset`` and ``subjects`` are not read; recording and subject ids become
        ``<source>-<id>``, and each source's subjects are split on their own (``n_folds``, ``fold``,
        ``n_val_subjects``, ``split_seed``). ``None``: the one data set of ``data_dir``.
    test_sources : list of str, optional
        Sources held out as the test set (all their recordings; the other sources are then split into train
        and validation only).
    balance_sources : bool, default False
        With ``sources`` and ``oversample``: balance the pretraining oversampling over every (source, class)
        pair instead of over classes, so each source weighs the same.
    mode : {"pretrain", "finetune"}, default "pretrain"
        Single epochs with class-balanced oversampling, or sequences.
    batch_size : int, default 100
        Training epochs per batch (pretrain) or sequences per batch (finetune).
    eval_batch_size : int, default 500
        Epochs per evaluation batch in pretrain mode. No effect in finetune mode: evaluation streams
        each recording whole, one recording at a time (batches of one ``seq_len`` chunk).
    seq_len : int, default 25
        Epochs per sequence (finetune).
    oversample : bool, default True
        Class-balanced oversampling of the pretraining set (official code).
    redraw_oversampling : bool, default False
        Redraw the oversampling top-up every epoch instead of once.
    sequence_sampling : {"stream", "shuffle"}, default "stream"
        ``"stream"``: each recording cut into ``batch_size`` parallel streams read in order, so the LSTM
        state is carried (the official recipe); ``"shuffle"``: independent shuffled sequences.
    max_shift : float, default 0.0
        Signal-shift augmentation of the training items (0: off, the paper). Each epoch every training
        item's window is taken from the recording's continuous signal moved by a random offset of up to
        ``+/- max_shift`` x the epoch length (neighbouring epochs supply the samples; the window is clipped
        at the recording's ends; labels unchanged): every single epoch in pretrain mode, every sequence in
        finetune mode (in ``"stream"`` sampling one offset per stream, shared by its chunks). Must be in
        [0, 1]; TinySleepNet uses 0.1. With ``unscored: drop`` the neighbours of an epoch next to a removed
        stretch are not its neighbours in time. Evaluation data is never augmented.
    skip_first : int, default 0
        Fine-tuning sequence augmentation (0: off, the paper). With ``"stream"`` sampling, each epoch each
        training recording's streams start after a random skip of ``0 .. skip_first`` epochs, so chunk
        boundaries move between epochs (TinySleepNet skips 0..4: ``skip_first: 4``); the last ``skip_first``
        epochs of a recording are left out of the layout so every epoch has the same number of batches.
        With ``"shuffle"`` sampling each window moves by its own random ``0 .. skip_first`` epochs. No effect
        in pretrain mode.
    normalize : {"none", "zscore", "robust"}, default "none"
        Per-recording amplitude normalisation (``"none"``: raw microvolts, the paper). ``"zscore"`` divides
        each recording by the standard deviation of its kept epochs (after subtracting their mean),
        ``"robust"`` by their IQR / 1.349 (after subtracting the median), both measured on the 0.5-30 Hz band
        so that drifts and mains noise do not set the scale; see :mod:`dsn.data.normalize`.
        Removes the between-subject amplitude differences while keeping the relations inside a night. The
        cache keeps the raw signal, so switching it re-reads nothing; recordings are normalised on access
        (nothing held in memory), with each recording's statistics kept beside its cache entry.
    cache_dtype : {"float32", "float16"}, default "float32"
        How the cache stores the epochs: ``float16`` halves the cache (and the pages a fit reads) at about three
        significant digits per sample (read back as float32); a night with a sample beyond +/-65504 is refused.
        Its entries have their own keys: switching builds the other entries, never mixes them.
    cache_dir : str, optional
        Preprocessed-recording cache (default ``$DSN_CACHE_DIR`` or ``~/.cache/dsn``).
    use_cache : bool, default True
        Read and write the cache.
    num_workers : int, default 0
        DataLoader worker processes.
    pin_memory : bool, default False
        DataLoader ``pin_memory``.
    device_batches : bool, default False
        Hold the training recordings on the training device and draw the training batches there
        (:class:`~dsn.data.device_sampling.DeviceBatches`: the same batches, in the same order, as the
        DataLoader's; no per-batch host copy). For GPUs; evaluation loaders are unchanged.
    seed : int, default 0
        Seed of the samplers and the augmentation draws (epoch ``e`` draws from ``(seed, e)``).
    progress : bool, default True
        Show a progress bar while loading recordings.

    Notes
    -----
    Distributed (DDP) training: the loaders' samplers split the data over the processes themselves
    (training: equal-length shards padded by repetition; evaluation: every epoch scored exactly once), so
    the Trainer needs ``use_distributed_sampler=False``; the loaders raise ``ValueError`` otherwise.
    """

    def __init__(
        self,
        data_dir: str = "data/demo",
        dataset: str = "sleep-edf",
        channels: list[str] = ["EEG Fpz-Cz"],  # noqa: B006 - jsonargparse needs a visible default
        channel: str | None = None,
        channel_aliases: dict[str, list[str]] | None = None,
        sfreq: float = 100.0,
        epoch_sec: float = 30.0,
        trim_minutes: float | None = 30.0,
        unscored: Literal["drop", "mask"] = "drop",
        length_mismatch: Literal["raise", "crop"] = "raise",
        download: bool = False,
        subjects: list[int | str] | None = None,
        recordings: list[int] = [1, 2],  # noqa: B006 - jsonargparse needs a visible default
        n_folds: int = 5,
        fold: int = 0,
        n_val_subjects: int = 1,
        split_seed: int = 0,
        train_subjects: list[str] | None = None,
        val_subjects: list[str] | None = None,
        test_subjects: list[str] | None = None,
        sources: list[dict[str, Any]] | None = None,
        test_sources: list[str] | None = None,
        balance_sources: bool = False,
        mode: Literal["pretrain", "finetune"] = "pretrain",
        batch_size: int = 100,
        eval_batch_size: int = 500,
        seq_len: int = 25,
        oversample: bool = True,
        redraw_oversampling: bool = False,
        sequence_sampling: Literal["stream", "shuffle"] = "stream",
        max_shift: float = 0.0,
        skip_first: int = 0,
        normalize: NormalizeMethod = "none",
        cache_dtype: Literal["float32", "float16"] = "float32",
        cache_dir: str | None = None,
        use_cache: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        device_batches: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        super().__init__()
        _check_options(max_shift, skip_first, normalize)
        self.profile = load_profile(dataset)
        self._subject_ids = None if subjects is None else subject_ids(subjects, self.profile.is_default)
        self.save_hyperparameters()
        self.prep = Preprocessing(  # channel: a library caller's old spelling (a parsed config has it null)
            tuple(pick_channels(channels, channel)), sfreq, epoch_sec, trim_minutes, unscored, length_mismatch,
            self._aliases(channel_aliases), cache_dtype)
        self._init_sources(source_list(sources, self.prep.channels, test_sources, recordings), channel_aliases)
        self.mode = mode
        self.shift_samples = int(round(max_shift * self.prep.n_times))
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

    def _aliases(self, channel_aliases: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        """The profile's channel aliases (none for the default profile) merged with the user's."""
        return merge_aliases(None if self.profile.is_default else self.profile.channel_aliases, channel_aliases) or None

    def _init_sources(self, sources: list[Source], aliases: dict[str, list[str]] | None) -> None:
        self.sources = sources  # data.sources in its one form (empty: the one data set of data_dir)
        self._source_preps = {s.name: self._source_prep(s, aliases) for s in sources}
        self.source_of: dict[str, str] = {}  # recording name -> its source's name

    def _source_prep(self, source: Source, aliases: dict[str, list[str]] | None) -> Preprocessing:
        """How ``source``'s files are read: its labels for the montage's channels, its profile's and its own
        aliases (the montage's preprocessing otherwise)."""
        prof = load_profile(source.dataset)
        own = merge_aliases(None if prof.is_default else prof.channel_aliases, source.channel_aliases, aliases)
        return Preprocessing(source.channels, self.prep.sfreq, self.prep.epoch_sec, self.prep.trim_minutes,
                             self.prep.unscored, self.prep.length_mismatch, own or None)

    def _discover_sources(self) -> list[RecordingFiles]:
        """Every source's recordings (its subjects and nights), ids prefixed by the source's name."""
        files = []
        for src in self.sources:
            try:
                found = find_recordings(src.data_dir, src.dataset)
            except DataError as e:
                raise DataError(f"data.sources {src.name}: {e}") from None
            if src.subjects is not None:
                found = [f for f in found if f.subject in subject_ids(src.subjects, load_profile(src.dataset).is_default)]
            if src.recordings is not None:
                found = [f for f in found if f.night in set(src.recordings)]
            if not found:
                raise DataError(f"data.sources {src.name}: {src.data_dir}: no recordings left after selecting "
                                f"subjects={src.subjects} nights={src.recordings}.")
            for f in prefixed(found, src):
                self.source_of[f.name] = src.name
                files.append(f)
        self._files = files
        return files

    def _discover(self) -> list[RecordingFiles]:
        if self._files is not None:
            return self._files
        if self.sources:
            return self._discover_sources()
        hp = self.hparams
        data_dir = Path(hp.data_dir)
        if hp.download:
            if not self.profile.is_default:
                raise DataError(f"download=True fetches Sleep-EDF only; data.dataset is {hp.dataset!r}.")
            from dsn.data.fetch import fetch_sleep_edf

            if not hp.subjects:
                raise DataError("download=True needs `subjects` (e.g. [0, 1, 2]): which Sleep-EDF subjects to fetch.")
            cassette = sorted(int(s[3:]) for s in self._subject_ids if s.startswith("SC4"))
            if cassette:  # MNE's fetcher covers the sleep-cassette study; telemetry files must be in data_dir
                data_dir = fetch_sleep_edf(cassette, hp.recordings, path=data_dir)
        files = find_recordings(data_dir, self.profile)
        if self._subject_ids is not None:
            files = [f for f in files if f.subject in self._subject_ids]
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
        if self.sources:
            by_source = {s.name: sorted({f.subject for f in self._files if self.source_of[f.name] == s.name})
                         for s in self.sources}
            return split_sources(by_source, hp.test_sources, hp.n_folds, hp.fold, hp.n_val_subjects, hp.split_seed)
        return subject_kfold(subjects, hp.n_folds, hp.fold, hp.n_val_subjects, hp.split_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.recordings:
            return
        files = self._discover()
        self.split = self.make_split()
        by_subject = {name: set(getattr(self.split, name)) for name in SPLITS}
        wanted = [f for f in files if any(f.subject in s for s in by_subject.values())]
        if self.hparams.use_cache:
            try:  # every cached night stays memory-mapped: one open file each
                reserve_open_files(len(wanted))
            except OSError as e:
                raise DataError(f"{self.hparams.data_dir}: {e}") from None
        loaded = {}
        it = wanted
        if self.hparams.progress:
            from tqdm.auto import tqdm

            it = tqdm(wanted, desc="Loading recordings", unit="rec", leave=False)
        for f in it:
            rec = self._load(f)
            if problems := recorded_problems(rec.meta, rec.x, self.prep.channel_names):  # refused, not warned (sanity)
                raise DataError(f"{describe_problems(problems, str(f.psg))}: a training night must carry signal on "
                                f"every channel; move it out of {self.hparams.data_dir} and fit again.")
            if self.hparams.normalize != "none":
                try:
                    rec.x = normalized_epochs(rec, self.hparams.normalize)  # normalised on access: no copy
                except ValueError as e:
                    raise DataError(f"{f.psg} ({', '.join(self.prep.channel_names)}): {e}") from None
            loaded[f.name] = rec
        self.recordings = {
            name: [loaded[f.name] for f in wanted if f.subject in by_subject[name]] for name in SPLITS
        }

    def _load(self, f: RecordingFiles) -> Recording:
        """One recording, read as its source reads it (with ``sources``: a channel it lacks named per source)."""
        hp = self.hparams
        if not self.sources:
            return load_recording(f, self.prep, hp.cache_dir, hp.use_cache)
        src = next(s for s in self.sources if s.name == self.source_of[f.name])
        prep = self._source_preps[src.name]
        try:
            return load_recording(f, prep, hp.cache_dir, hp.use_cache)
        except DataError as e:
            raise channel_error(e, f, src, self.prep.channels, prep.channel_aliases) from None

    def for_stage(self, mode: Literal["pretrain", "finetune"], batch_size: int, seq_len: int | None = None) -> SleepEDFDataModule:
        """A data module for one training stage: the same settings with ``mode``, ``batch_size`` (and
        ``seq_len``) replaced, sharing the recordings already loaded (nothing is read twice).

        Each stage gets its own module, so the hyper-parameters Lightning logs for a stage are its own.
        """
        kwargs = {**self.hparams, "mode": mode, "batch_size": batch_size}
        if seq_len is not None:
            kwargs["seq_len"] = seq_len
        dm = type(self)(**kwargs)
        dm._files, dm.split, dm.recordings, dm.source_of = self._files, self.split, self.recordings, self.source_of
        return dm

    # ----------------------------------------------------------------- reporting
    def source_sfreqs(self) -> list[float]:
        """Each channel's lowest rate in the loaded recordings' files (before resampling), Hz."""
        rates = [r.meta.get("channels", {}).get("source_sfreq") for recs in self.recordings.values() for r in recs]
        rates = [r for r in rates if r]
        return [float(min(col)) for col in zip(*rates)] if rates else []

    def scorer_preprocessing(self) -> dict[str, Any]:
        """What a trained model must know to read a new recording as this data was read
        (:class:`~dsn.models.scoring.SleepScorer`'s ``preprocessing``)."""
        hp = self.hparams
        out = {"channels": list(self.prep.channels), "channel_aliases": dict(self.prep.channel_aliases or {}),
               "sfreq": hp.sfreq, "epoch_sec": hp.epoch_sec, "trim_minutes": hp.trim_minutes,
               "unscored": hp.unscored, "normalize": hp.normalize}
        if self.recordings:
            out["source_sfreq"] = self.source_sfreqs()
        if self.sources:  # what the model was trained on, and the sources' labels as aliases of its channels
            out["channel_aliases"] = scorer_aliases(self.sources, self.prep.channels, out["channel_aliases"])
            out["sources"] = spec_sources(self.sources, self.prep.channels, hp.test_sources, self.source_counts())
        return out

    def source_counts(self) -> dict[str, dict[str, int]]:
        """Recordings of each source in each split (``{source: {split: n}}``; empty without ``sources``)."""
        out = {s.name: dict.fromkeys(SPLITS, 0) for s in self.sources}
        for split, recs in self.recordings.items():
            for r in recs:
                out[self.source_of[r.name]][split] += 1
        return out

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Epochs per stage in each split (masked epochs not counted)."""
        return {
            name: class_counts(np.concatenate([r.y for r in recs]) if recs else np.zeros(0))
            for name, recs in self.recordings.items()
        }

    def summary(self) -> dict:
        """Subjects, recordings and class counts per split (logged to MLflow)."""
        out = {
            "split": self.split.as_dict() if self.split else None,
            "recordings": {k: [r.name for r in v] for k, v in self.recordings.items()},
            "class_counts": self.class_counts(),
            "stages": list(STAGES),
        }
        if self.sources:
            out["sources"] = self.source_counts()
        return out

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

    def _check_distributed(self) -> None:
        trainer = self.trainer
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer is not None and trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                f"use_distributed_sampler=True with {trainer.world_size} processes: SleepEDFDataModule's samplers "
                "split the data over the processes themselves; create the Trainer with use_distributed_sampler=False"
            )

    def _sequence_loader(self, split: str, train: bool) -> DataLoader:
        recs = self._check(split)
        hp = self.hparams
        shift = self.shift_samples if train else 0
        if train and hp.sequence_sampling == "shuffle":
            ds = SequenceDataset(recs, independent_windows(recs, self.seq_len, hp.skip_first), release=True)
            sampler = ShardedSampler(len(ds), shuffle=True, seed=hp.seed, max_skip=hp.skip_first, max_shift=shift)
            if hp.device_batches:
                return DeviceBatches(ds, sampler=sampler, batch_size=self.batch_size, device=self._device())
            return self._loader(ds, batch_size=self.batch_size, sampler=sampler)
        # evaluation streams each recording whole, one stream, every epoch scored (the official test procedure)
        sampler = StreamBatchSampler(
            recs,
            batch_size=self.batch_size if train else 1,
            seq_len=self.seq_len,
            shuffle=train,
            keep_tail=not train,
            seed=hp.seed,
            skip_first=hp.skip_first if train else 0,
            max_shift=shift,
            even=train,
        )
        if train and hp.device_batches:
            return DeviceBatches(SequenceDataset(recs, sampler.windows), batch_sampler=sampler, device=self._device())
        return self._loader(SequenceDataset(recs, sampler.windows, release=True), batch_sampler=sampler)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def train_dataloader(self) -> DataLoader:
        self._check_distributed()
        if self.mode == "finetune":
            return self._sequence_loader("train", train=True)
        hp = self.hparams
        ds = EpochDataset(self._check("train"), release=True)
        if hp.oversample:
            groups = ds.labels
            if hp.balance_sources and self.sources:  # every (source, class) pair as many times as the largest
                groups = source_groups(ds.recordings, self.source_of, ds.labels, [s.name for s in self.sources])
            sampler = BalancedSampler(groups, seed=hp.seed, redraw=hp.redraw_oversampling, max_shift=self.shift_samples)
        else:
            sampler = ShardedSampler(len(ds), shuffle=True, seed=hp.seed, max_shift=self.shift_samples)
        if hp.device_batches:
            return DeviceBatches(ds, sampler=sampler, batch_size=self.batch_size, device=self._device())
        return self._loader(ds, batch_size=self.batch_size, sampler=sampler)

    def _eval_loader(self, split: str) -> DataLoader:
        self._check_distributed()
        if self.mode == "finetune":
            return self._sequence_loader(split, train=False)
        ds = EpochDataset(self._check(split), release=True)
        sampler = ShardedSampler(len(ds), shuffle=False, even=False)
        return self._loader(ds, batch_size=self.hparams.eval_batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

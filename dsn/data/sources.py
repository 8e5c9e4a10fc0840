"""Several data sets in one fit (``data.sources``): each read through its own profile, mapped onto one montage.

A source is a data folder read by a data-set profile (:mod:`dsn.data.datasets`) whose channels are mapped onto
the model's channels (``data.channels``, the montage): ``channels: {EEG: C4-A1, EOG: "EOG=E1 - M2"}`` reads the
file label ``C4-A1`` as the model's ``EEG`` and the derivation ``E1 - M2`` as its ``EOG`` (a montage channel a
source does not map is read under its own name, by the usual label and alias rules of :mod:`dsn.data.channels`).

Recordings and subjects of a source are named ``<source>-<name>`` / ``<source>-<subject>`` so that ids stay
unique across sources; the subjects of every source are split into train / validation / test on their own
(:func:`split_sources`), and a source named in ``data.test_sources`` is the test set as a whole.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsn.data.channels import channel_names, merge_aliases, parse_channel
from dsn.data.datasets import RecordingFiles, load_profile
from dsn.data.errors import DataError
from dsn.data.splits import Split, subject_kfold

__all__ = ["SOURCE_KEYS", "Source", "channel_error", "prefixed", "scorer_aliases", "source_groups", "source_list",
           "spec_sources", "split_sources"]

#: The keys of one ``data.sources`` entry.
SOURCE_KEYS = ("name", "dataset", "data_dir", "channels", "channel_aliases", "subjects", "recordings")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Source:
    """One entry of ``data.sources`` in its one form.

    Attributes
    ----------
    name : str, the source's name (metric keys ``val/<name>/f1_macro``, the ``<name>-`` prefix of its ids)
    dataset : str, its data-set profile (``sleep-edf``, ``nsrr``, ``bids``, ``generic`` or a YAML path)
    data_dir : str, its folder
    channels : tuple of str, the source's label or derivation for each montage channel, in the montage's order
    channel_aliases : dict, more aliases for this source only
    subjects : the source's subjects (as its profile names them); None: all
    recordings : its nights; None: ``data.recordings``
    """

    name: str
    dataset: str
    data_dir: str
    channels: tuple[str, ...]
    channel_aliases: dict[str, list[str]]
    subjects: list[Any] | None
    recordings: list[int] | None

    def as_dict(self, montage: Sequence[str]) -> dict[str, Any]:
        """The entry in its one form: every key given, ``channels`` a mapping ``{montage channel: what is read}``
        (so a config whose ``data.channels`` is later reordered or changed still maps each channel by name)."""
        return {**dataclasses.asdict(self), "channels": self.mapping(montage)}

    def mapping(self, montage: Sequence[str]) -> dict[str, str]:
        """``{montage channel name: what this source reads for it}``."""
        return dict(zip(channel_names(montage), self.channels, strict=True))


def _channels(where: str, given: Any, montage: Sequence[str]) -> tuple[str, ...]:
    names = channel_names(montage)
    if given is None:
        return tuple(montage)
    if isinstance(given, Mapping):
        unknown = sorted(set(map(str, given)) - set(names))
        if unknown:
            raise ValueError(f"{where}.channels names {unknown}, not channels of data.channels {names}; map each "
                             f"montage channel to this source's label, e.g. {{{names[0]}: LABEL}}")
        given = [given.get(n, m) for n, m in zip(names, montage, strict=True)]
    if isinstance(given, str) or not isinstance(given, Sequence) or len(given) != len(names):
        raise ValueError(f"{where}.channels={given!r}: give one label or derivation per channel of data.channels "
                         f"{names}, as a list in that order or a mapping {{{names[0]}: LABEL, ...}}")
    try:
        return tuple(str(parse_channel(c)) for c in given)
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None


def _one(i: int, entry: Any, montage: Sequence[str], recordings: Any) -> Source:
    where = f"sources[{i}]"
    if isinstance(entry, Source):
        return entry
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}={entry!r}: each source is a mapping {{name, dataset, data_dir, channels}}")
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a source has {list(SOURCE_KEYS)}")
    dataset = str(entry.get("dataset") or "sleep-edf")
    name = str(entry.get("name") or "")
    where = f"sources[{i}] ({name or dataset})"
    if not entry.get("data_dir"):
        raise ValueError(f"{where}: no data_dir; give the folder of its recordings, e.g. data_dir: data/{dataset}")
    try:
        load_profile(dataset)
    except DataError as e:
        raise ValueError(f"{where}.dataset: {e}") from None
    name = name or load_profile(dataset).name
    if not _NAME.match(name):
        raise ValueError(f"{where}.name={name!r}: use letters, digits, '_', '-' and '.' only (it names metrics and ids)")
    aliases = entry.get("channel_aliases") or {}
    if not isinstance(aliases, Mapping):
        raise ValueError(f"{where}.channel_aliases={aliases!r}: a mapping {{canonical: [alias, ...]}}")
    subjects = entry.get("subjects")
    nights = recordings if entry.get("recordings") is None else entry["recordings"]
    return Source(name, dataset, str(entry["data_dir"]), _channels(where, entry.get("channels"), montage),
                  merge_aliases(aliases), None if subjects is None else list(subjects),
                  None if nights is None else [int(n) for n in nights])


def source_list(sources: Sequence[Any] | None, montage: Sequence[str], test_sources: Sequence[str] | None = None,
                recordings: Sequence[int] | None = None) -> list[Source]:
    """``data.sources`` in its one form (empty when not given), checked: each entry a mapping with a
    ``data_dir``, a known profile, a channel per montage channel, distinct names; ``test_sources`` names some
    of them, not all. ``recordings``: the nights of a source that names none (``data.recordings``; None keeps
    it None: the config's one form, resolved by the data module).

    Raises
    ------
    ValueError
        One line naming the entry (``sources[i] (name)``), the value and the fix.
    """
    if not sources:
        if test_sources:
            raise ValueError(f"test_sources={list(test_sources)} needs data.sources (the sources to hold out)")
        return []
    if isinstance(sources, Mapping) or isinstance(sources, str):
        raise ValueError("sources: give a list of sources, each {name, dataset, data_dir, channels}")
    out = [_one(i, s, montage, recordings) for i, s in enumerate(sources)]
    names = [s.name for s in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"sources: the name(s) {twice} are used twice; give each source its own name")
    unknown = sorted(set(test_sources or []) - set(names))
    if unknown:
        raise ValueError(f"test_sources={list(test_sources)}: {unknown} not among the sources {names}")
    if test_sources and set(test_sources) >= set(names):
        raise ValueError(f"test_sources={list(test_sources)} holds out every source; keep one to train on")
    return out


def prefixed(files: Sequence[RecordingFiles], source: Source) -> list[RecordingFiles]:
    """``files`` of ``source`` with names and subjects prefixed by the source's name (unique across sources)."""
    return [dataclasses.replace(f, name=f"{source.name}-{f.name}", subject=f"{source.name}-{f.subject}") for f in files]


def _train_val(subjects: Sequence[str], n_val: int, seed: int, fold: int, name: str) -> tuple[list[str], list[str]]:
    """A source that is not tested: ``n_val`` validation subjects drawn as :func:`subject_kfold` draws them."""
    subs = sorted(subjects)
    if len(subs) <= n_val:
        raise DataError(f"source {name}: {len(subs)} subject(s), not enough for {n_val} validation subject(s) and one "
                        "to train on; give it more subjects or fewer data.n_val_subjects.")
    pick = np.random.default_rng([seed, fold]).choice(len(subs), size=n_val, replace=False)
    val = [subs[i] for i in sorted(pick)]
    return [s for s in subs if s not in val], val


def split_sources(subjects: Mapping[str, Sequence[str]], test_sources: Sequence[str] | None, n_folds: int, fold: int,
                  n_val: int, seed: int) -> Split:
    """The split of several sources: every subject of a ``test_sources`` source is a test subject; with test
    sources the other sources' subjects are split into train / validation only, else each source's subjects
    into train / validation / test by :func:`~dsn.data.splits.subject_kfold` (fold ``fold`` of ``n_folds``).

    ``subjects``: ``{source name: its (prefixed) subject ids}``.

    Raises
    ------
    DataError
        Naming the source whose subjects are too few for the split.
    """
    held = set(test_sources or [])
    train, val, test = [], [], []
    for name, subs in subjects.items():
        if name in held:
            test += subs
        elif held:
            t, v = _train_val(subs, n_val, seed, fold, name)
            train, val = train + t, val + v
        else:
            try:
                s = subject_kfold(subs, n_folds, fold, n_val, seed)
            except DataError as e:
                raise DataError(f"source {name}: {e}") from None
            train, val, test = train + list(s.train), val + list(s.val), test + list(s.test)
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def source_groups(recordings: Sequence[Any], source_of: Mapping[str, str], labels: np.ndarray,
                  names: Sequence[str]) -> np.ndarray:
    """Balancing groups of an :class:`~dsn.data.sampling.EpochDataset`'s items: ``source index x n + class``
    (``n`` above every class index), so class-balanced oversampling balances every (source, class) pair.
    ``recordings`` in the dataset's order; ``labels`` its items' classes."""
    index = {n: i for i, n in enumerate(names)}
    counts = [int((np.asarray(r.y) >= 0).sum()) for r in recordings]
    src = np.repeat([index[source_of[r.name]] for r in recordings], counts).astype(np.int64)
    return src * (int(labels.max(initial=0)) + 1) + np.asarray(labels, dtype=np.int64)


def scorer_aliases(sources: Sequence[Source], montage: Sequence[str], aliases: Mapping | None) -> dict[str, list[str]]:
    """The aliases a model trained on ``sources`` reads new files with: ``aliases`` plus, for each montage
    channel, every source's plain label for it (a derivation cannot be an alias: name it with ``--channel``)."""
    extra: dict[str, list[str]] = {}
    for s in sources:
        for name, read in s.mapping(montage).items():
            spec = parse_channel(read)
            if spec.minus is None and spec.name != name:
                extra.setdefault(name, []).append(spec.name)
    return merge_aliases(aliases, extra)


def spec_sources(sources: Sequence[Source], montage: Sequence[str], test_sources: Sequence[str] | None,
                 counts: Mapping[str, Mapping[str, int]] | None = None) -> list[dict[str, Any]]:
    """What a model's spec records of its sources: name, profile, channel mapping, whether it was held out
    for testing and its recordings per split (``counts``: ``{source: {split: n}}``)."""
    held = set(test_sources or [])
    return [{"name": s.name, "dataset": load_profile(s.dataset).name, "channels": s.mapping(montage),
             "test_only": s.name in held, **({"recordings": dict(counts[s.name])} if counts and s.name in counts else {})}
            for s in sources]


def channel_error(error: Exception, files: RecordingFiles, source: Source, montage: Sequence[str],
                  aliases: Mapping | None) -> DataError:
    """The one-line error of a source's file that could not be read: for a channel it lacks, naming the source,
    file, montage channel, the label tried, the file's labels and the fix; otherwise the error with the source."""
    from dsn.data.edf import locate_channels, read_header

    for name, read in source.mapping(montage).items():
        try:
            locate_channels(files.psg, [read], aliases)
        except DataError:
            try:
                labels = ", ".join(read_header(files.psg).labels)
            except Exception:  # noqa: BLE001 - the header itself is the problem: the original error says it
                break
            return DataError(f"data.sources {source.name}: {files.psg} has no channel for the montage's {name} "
                             f"(looked for {read!r}; its channels: {labels}). Map it: sources[{source.name}].channels: "
                             f"{{{name}: LABEL}} (or a derivation 'NAME=PLUS - MINUS'), or leave the file out.")
    return DataError(f"data.sources {source.name}: {error}")

"""Hypnogram readers (EDF+ annotations, NSRR XML, BIDS events, CSV/TSV tables) and the rules that turn a
hypnogram into one label per sleep epoch of its recording.

Every reader returns a :class:`Hypnogram`: intervals (onset, duration, label as written in the file) and,
when the file states it, its start time. :func:`stage_labels` maps the labels through the data set's label
map and places the intervals on the recording's 30-s epoch grid by these rules, each a one-line
:class:`~dsn.data.errors.DataError` naming the file, the seconds and the fix when it fails:

- **Start time.** A hypnogram that states a start time (EDF+ header; NSRR XML ``Recording Start Time``
  clock time) is placed at that time of its recording (offset = hypnogram start - recording start; files
  without one start with the recording). One that does not overlap its recording at all (another night's
  file, renamed) is refused.
- **Offset.** A hypnogram starting later than its recording leaves the epochs before it unscored (they follow
  ``data.unscored``); scored intervals that begin before the recording are refused with
  ``length_mismatch: raise`` and dropped with ``crop``. Every scored interval must start on the recording's
  epoch grid (a multiple of ``data.epoch_sec`` from the recording start), else the file is refused: stages
  are never shifted by a fraction of an epoch.
- **Epoch length.** A hypnogram scored in other epochs than ``data.epoch_sec`` (MASS: 20 s) is refused with
  the length to set (``data.epoch_sec: 20``): stages are not regrouped into longer epochs.
- **Overrun.** Scored intervals running more than one epoch past the signal's end (or annotations ending more
  than one epoch before it) are refused with ``length_mismatch: raise``; ``crop`` keeps the part both cover
  (:func:`epoch_labels`).

The profile (:class:`dsn.data.datasets.Profile`) is passed in: this module never imports
:mod:`dsn.data.datasets`, which builds on it. Also here: the training data's trimming around sleep
(:func:`sleep_period`, :func:`trim_and_clean`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dsn.data.edf import read_header
from dsn.data.errors import DataError
from dsn.data.labels import IGNORE_INDEX, RK_TO_AASM, map_labels

log = logging.getLogger(__name__)

#: Label used internally for epochs that no annotation covers.
UNANNOTATED = -2


@dataclass
class Hypnogram:
    """Scored intervals of one hypnogram file.

    Attributes
    ----------
    onsets, durations : ndarray of float, seconds from the hypnogram's start
    labels : list of str, as written in the file
    source : str, the file
    start : datetime or None, when the hypnogram starts (``None``: not stated, taken as the recording's start)
    clock_only : bool, ``start`` is a time of day only (its date is meaningless)
    per_epoch : bool, the file lists one label per epoch (no onsets): its epoch length is the profile's
    """

    onsets: np.ndarray
    durations: np.ndarray
    labels: list[str]
    source: str
    start: _dt.datetime | None = None
    clock_only: bool = False
    per_epoch: bool = False


# ------------------------------------------------------------------------------------------- readers
def read_edf_annotations(path: str | Path, options: dict[str, Any] | None = None, epoch_sec: float = 30.0) -> Hypnogram:
    """An EDF+ hypnogram (Sleep-EDF): its annotations, read with MNE, and its header's start time."""
    import mne

    header = read_header(path)
    try:
        ann = mne.read_annotations(path)
    except Exception as e:  # MNE raises many types for broken files
        raise DataError(f"{path}: could not read hypnogram annotations ({type(e).__name__}: {e}).") from None
    return Hypnogram(np.asarray(ann.onset, float), np.asarray(ann.duration, float), list(ann.description), str(path),
                     start=header.start)


_CLOCK = re.compile(r"(\d{1,2})[.:](\d{2})[.:](\d{2})\s*$")


def read_nsrr_xml(path: str | Path, options: dict[str, Any] | None = None, epoch_sec: float = 30.0) -> Hypnogram:
    """An NSRR XML annotation file (``PSGAnnotation`` / ``ScoredEvents`` / ``ScoredEvent``).

    The stages are the events whose ``EventType`` starts with ``Stages`` (``Stages|Stages``); their
    ``EventConcept`` (``Stage 2 sleep|2``) is the label, ``Start`` and ``Duration`` are seconds from the
    recording start. The ``Recording Start Time`` event's ``ClockTime`` (``00.00.00 23.00.00``), when present,
    is the start time of day. Other events (arousals, desaturations) are left out.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{path}: not a readable NSRR XML file ({e}).") from None
    onsets, durations, labels, start = [], [], [], None
    for ev in root.iter("ScoredEvent"):
        kind = (ev.findtext("EventType") or "").strip()
        concept = (ev.findtext("EventConcept") or "").strip()
        if concept.lower().startswith("recording start time"):
            m = _CLOCK.search(ev.findtext("ClockTime") or "")
            if m:
                start = _dt.datetime(2000, 1, 1, *(int(g) for g in m.groups()))
            continue
        if not kind.lower().startswith("stages"):
            continue
        try:
            onsets.append(float(ev.findtext("Start")))
            durations.append(float(ev.findtext("Duration")))
        except (TypeError, ValueError):
            raise DataError(f"{path}: ScoredEvent {concept!r} without a numeric Start/Duration.") from None
        labels.append(concept)
    if not labels:
        raise DataError(
            f"{path}: no sleep-stage events (ScoredEvent with EventType 'Stages|Stages') in this XML. "
            "Is it an NSRR annotation file (*-nsrr.xml)?"
        )
    return Hypnogram(np.array(onsets), np.array(durations), labels, str(path), start=start, clock_only=True)


def _number(text: str, path: str | Path, row: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row}: {column} {text!r} is not a number of seconds.")
    return value


def read_bids_events(path: str | Path, options: dict[str, Any] | None = None, epoch_sec: float = 30.0) -> Hypnogram:
    """A BIDS ``*_events.tsv``: ``onset`` and ``duration`` in seconds from the recording start and the stage in
    ``options["column"]`` (default ``trial_type``). Rows whose stage is empty or in ``options["skip"]``
    (other events, e.g. ``arousal``) are left out; a stage ``n/a`` (BIDS's missing value) is kept as a label
    (the ``aasm`` map reads it as unscored); an ``n/a`` duration is one scoring epoch."""
    options = options or {}
    column = str(options.get("column", "trial_type"))
    skip = {str(s) for s in options.get("skip", [])}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t")
            rows = list(reader)
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable events file ({e}).") from None
    missing = [c for c in ("onset", "duration", column) if c not in fields]
    if missing:
        raise DataError(
            f"{path}: events file without column(s) {missing} (columns: {fields}). The stage column is set by the "
            "profile's `hypnogram_options: {column: NAME}`."
        )
    onsets, durations, labels = [], [], []
    for i, row in enumerate(rows, start=2):
        label = (row[column] or "").strip()
        if not label or label in skip:
            continue
        onsets.append(_number(row["onset"], path, i, "onset"))
        dur = (row["duration"] or "").strip()
        durations.append(epoch_sec if dur in ("", "n/a") else _number(dur, path, i, "duration"))
        labels.append(label)
    return Hypnogram(np.array(onsets, float), np.array(durations, float), labels, str(path))


_HEADER_WORDS = {"stage", "stages", "label", "labels", "sleep stage", "sleep_stage", "hypnogram", "epoch", "score"}


def read_table(path: str | Path, options: dict[str, Any] | None = None, epoch_sec: float = 30.0) -> Hypnogram:
    """A CSV/TSV/text hypnogram, in one of three forms:

    - ``onset,duration,label`` rows under a header naming ``options["onset_column"]`` (``onset``),
      ``options["duration_column"]`` (``duration``) and ``options["label_column"]`` (``stage``; the third
      column if absent): intervals in seconds from the recording start;
    - one label per line (a single column, optionally under a header such as ``stage``), one per
      ``epoch_sec`` epoch from the recording start;
    - the same with a header of several columns (``epoch,stage``): the label column is read.

    Integers (``0``-``4``) are labels like any other: the profile's label map states what they mean.
    ``options["delimiter"]`` overrides the one taken from the extension (``.tsv``: tab, ``.csv``: comma,
    otherwise tab, comma, semicolon or white space as found). Lines starting with ``#`` are comments.
    """
    options = options or {}
    lab_col = str(options.get("label_column", "stage")).casefold()
    table = _Table.read(path, options)
    head = [c.casefold() for c in table.cells(table.lines[0][1])]
    columns = [str(options.get(k, d)).casefold() for k, d in (("onset_column", "onset"), ("duration_column", "duration"))]
    if all(c in head for c in columns):
        return _intervals(table, head, [head.index(c) for c in columns], lab_col)
    body, col = table.lines, 0
    if lab_col in head or set(head) & _HEADER_WORDS:
        body = table.lines[1:]
        col = head.index(lab_col) if lab_col in head else next(
            (k for k, h in enumerate(head) if h in _HEADER_WORDS - {"epoch"}), len(head) - 1
        )
    elif len(head) > 1:
        raise DataError(
            f"{path}: {len(head)} columns without a header. Write one label per line, or a header naming the "
            f"columns (onset,duration,{lab_col} or epoch,{lab_col})."
        )
    labels = [table.column(row, line, col) for row, line in body]
    n = len(labels)
    return Hypnogram(np.arange(n) * float(epoch_sec), np.full(n, float(epoch_sec)), labels, str(path), per_epoch=True)


@dataclass
class _Table:
    """The non-empty, non-comment lines of a text hypnogram (with their line numbers) and how to split them."""

    path: str | Path
    lines: list[tuple[int, str]]
    delim: str | None

    @classmethod
    def read(cls, path: str | Path, options: dict[str, Any]) -> _Table:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable hypnogram file ({e}).") from None
        lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)
                 if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise DataError(f"{path}: empty hypnogram file.")
        delim = options.get("delimiter") or {".tsv": "\t", ".csv": ","}.get(Path(path).suffix.lower())
        if delim is None:
            delim = next((d for d in ("\t", ",", ";") if d in lines[0][1]), None)
        return cls(path, lines, delim)

    def cells(self, line: str) -> list[str]:
        parts = line.split(self.delim) if self.delim else line.split()
        return [p.strip().strip('"') for p in parts]

    def column(self, row: int, line: str, k: int) -> str:
        """Cell ``k`` of a row; a row without it is refused with its content and the header it lacks."""
        c = self.cells(line)
        if len(c) <= k:
            header = self.lines[0][1]
            raise DataError(
                f"{self.path}: line {row} {line!r} has {len(c)} column(s) but the header {header!r} has "
                f"{len(self.cells(header))} (column {k + 1} is missing): complete that line or delete it."
            )
        return c[k]


def _intervals(table: _Table, head: list[str], cols: list[int], lab_col: str) -> Hypnogram:
    """``onset,duration,label`` rows (``cols``: the onset and duration columns)."""
    li = head.index(lab_col) if lab_col in head else (2 if len(head) > 2 else None)
    if li is None:
        raise DataError(f"{table.path}: no label column {lab_col!r} beside onset/duration (header: {head}).")
    io, idu = cols
    onsets, durations, labels = [], [], []
    for row, line in table.lines[1:]:
        table.column(row, line, max(io, idu, li))
        c = table.cells(line)
        onsets.append(_number(c[io], table.path, row, "onset"))
        durations.append(_number(c[idu], table.path, row, "duration"))
        labels.append(c[li])
    return Hypnogram(np.array(onsets, float), np.array(durations, float), labels, str(table.path))


#: hypnogram_format -> reader(path, options, epoch_sec)
FORMATS = {
    "edf": read_edf_annotations,
    "nsrr-xml": read_nsrr_xml,
    "bids-tsv": read_bids_events,
    "table": read_table,
}


# ------------------------------------------------------------------------------------------- epoch rules
def _offset(hyp: Hypnogram, psg_start: _dt.datetime | None) -> float:
    """Seconds from the recording's start to the hypnogram's (0 when either is not stated)."""
    if hyp.start is None or psg_start is None:
        return 0.0
    if hyp.clock_only:
        day = 86400.0
        a = hyp.start.hour * 3600 + hyp.start.minute * 60 + hyp.start.second
        b = psg_start.hour * 3600 + psg_start.minute * 60 + psg_start.second
        return (a - b + day / 2) % day - day / 2
    return (hyp.start - psg_start).total_seconds()


def _grid(values: np.ndarray) -> float:
    """The largest whole number of milliseconds dividing every value, in seconds."""
    ms = np.round(np.abs(values) * 1000).astype(np.int64)
    g = int(np.gcd.reduce(ms[ms > 0])) if (ms > 0).any() else 0
    return g / 1000


def _when(t: _dt.datetime, clock_only: bool) -> str:
    return t.strftime("%H:%M:%S") if clock_only else t.strftime("%Y-%m-%d %H:%M:%S")


def _span(sec: float) -> str:
    """Seconds as a readable signed length: ``+7:30:00``, ``-805 d 3:18:02``."""
    sign, rest = ("-" if sec < 0 else "+"), int(round(abs(sec)))
    days, rest = divmod(rest, 86400)
    clock = f"{rest // 3600}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{sign}{days} d {clock}" if days else f"{sign}{clock}"


def place(
    hyp: Hypnogram,
    codes: np.ndarray,
    n_epochs: int,
    epoch_sec: float = 30.0,
    psg_start: _dt.datetime | None = None,
    length_mismatch: Literal["raise", "crop"] = "raise",
    hyp_epoch_sec: float = 30.0,
    psg: str = "the recording",
) -> np.ndarray:
    """One class label per sleep epoch of a recording with ``n_epochs`` epochs, by the module's rules.

    Parameters
    ----------
    hyp : the hypnogram; ``codes`` its labels' class indices (``IGNORE_INDEX`` for unscored).
    n_epochs, epoch_sec : the recording's epochs.
    psg_start : the recording's start time (from its header), ``None`` when unknown.
    hyp_epoch_sec : epoch length of a per-epoch hypnogram (the profile's ``epoch_sec``).

    Returns
    -------
    y : ndarray, shape (n_epochs,), int64: class index, ``IGNORE_INDEX`` or ``UNANNOTATED``.
    """
    if hyp.per_epoch and abs(hyp_epoch_sec - epoch_sec) > 1e-6:
        raise DataError(
            f"{hyp.source}: scored in {hyp_epoch_sec:g}-s epochs (the profile's epoch_sec) but data.epoch_sec is "
            f"{epoch_sec:g}: set data.epoch_sec: {hyp_epoch_sec:g} (stages are not regrouped into other epochs)."
        )
    shift = _offset(hyp, psg_start)
    onsets = np.asarray(hyp.onsets, float) + shift
    durations = np.asarray(hyp.durations, float)
    scored = codes != IGNORE_INDEX
    if scored.any():
        _check_overlap(hyp, onsets[scored], (onsets + durations)[scored], n_epochs * epoch_sec, psg_start, shift, psg)
        _check_grid(hyp, scored, onsets[scored], epoch_sec, shift, psg)
        first = float(onsets[scored].min())
        if first < 0 and length_mismatch == "raise":
            raise DataError(
                f"{hyp.source}: scored stages begin {-first:.0f} s before {psg} starts. Check that they belong "
                "together; set `length_mismatch: crop` to drop the part before the recording."
            )
    if shift:
        log.info("%s: placed %+.0f s from the start of %s (its stated start time)", hyp.source, shift, psg)
    label_of = {i: int(c) for i, c in enumerate(codes)}
    keys = [str(i) for i in range(len(codes))]
    return epoch_labels(
        onsets, durations, keys, n_epochs, epoch_sec, {k: label_of[int(k)] for k in keys}, length_mismatch, hyp.source
    )


def _check_overlap(hyp: Hypnogram, onsets: np.ndarray, ends: np.ndarray, signal_sec: float,
                   psg_start: _dt.datetime | None, shift: float, psg: str) -> None:
    """Refuse a hypnogram whose scored stages (placed ``onsets`` to ``ends``) miss the recording entirely."""
    first, last = float(onsets.min()), float(ends.max())
    if first < signal_sec and last > 0:
        return
    when = ""
    if hyp.start is not None and psg_start is not None:
        when = (f" The hypnogram starts {_when(hyp.start, hyp.clock_only)}, the recording "
                f"{_when(psg_start, hyp.clock_only)}: {shift:+.0f} s from the recording's start ({_span(shift)}).")
    raise DataError(
        f"{hyp.source}: its scored stages ({_span(first)} to {_span(last)} from the start of {psg}) do not "
        f"overlap {psg}, which lasts {_span(signal_sec)[1:]}.{when} Is it another night's hypnogram? Pair each "
        "recording with its own, or correct the start time in the hypnogram's header."
    )


def _check_grid(hyp: Hypnogram, scored: np.ndarray, onsets: np.ndarray, epoch_sec: float, shift: float, psg: str) -> None:
    """Refuse scored stages that do not start on the recording's epoch grid (naming the epoch length when
    the hypnogram was scored in shorter epochs)."""
    off = np.abs(onsets / epoch_sec - np.round(onsets / epoch_sec)) * epoch_sec > 1e-3
    if not off.any():
        return
    bad = float(onsets[off][0])
    grid = _grid(np.concatenate([hyp.onsets[scored], np.asarray(hyp.durations, float)[scored]]))
    if 0 < grid < epoch_sec and abs(shift / grid - round(shift / grid)) * grid < 1e-3:
        raise DataError(
            f"{hyp.source}: scored in {grid:g}-s epochs (a stage starts at {bad:g} s) but data.epoch_sec is "
            f"{epoch_sec:g}: set data.epoch_sec: {grid:g} (stages are not regrouped into other epochs)."
        )
    raise DataError(
        f"{hyp.source}: a scored stage starts at {bad:g} s from the start of {psg}, not on its {epoch_sec:g}-s "
        f"epoch grid (hypnogram offset {shift:+g} s). Stages are never shifted by part of an epoch: fix the "
        "onsets or the start times."
    )


def read(path: str | Path, profile) -> tuple[Hypnogram, np.ndarray]:
    """Read a hypnogram by a data-set profile and map its labels: ``(hypnogram, class indices)``.

    ``profile``: a :class:`dsn.data.datasets.Profile` (its ``hypnogram_format``, ``hypnogram_options``,
    ``epoch_sec`` and ``label_map`` are used).
    """
    hyp = FORMATS[profile.hypnogram_format](path, profile.hypnogram_options, profile.epoch_sec)
    try:
        codes = map_labels(hyp.labels, profile.label_map, str(path), profile.label_map_name())
    except ValueError as e:
        raise DataError(str(e)) from None
    return hyp, codes


def stage_labels(
    files, n_epochs: int, epoch_sec: float = 30.0, length_mismatch: Literal["raise", "crop"] = "raise"
) -> np.ndarray:
    """One label per sleep epoch of ``files.psg`` (``n_epochs`` epochs) from its hypnogram.

    ``files``: a :class:`dsn.data.datasets.RecordingFiles` (its ``psg``, ``hypnogram`` and ``profile``).

    Returns
    -------
    y : ndarray, shape (n_epochs,), int64: class index, ``IGNORE_INDEX`` (unscored) or ``UNANNOTATED``.

    Raises
    ------
    DataError
        By the rules of this module, naming the hypnogram, the seconds and the fix.
    """
    hyp, codes = read(files.hypnogram, files.profile)
    return place(hyp, codes, n_epochs, epoch_sec, read_header(files.psg).start, length_mismatch,
                 files.profile.epoch_sec, str(files.psg))


def epoch_labels(
    onsets: np.ndarray,
    durations: np.ndarray,
    labels: list[str],
    n_epochs: int,
    epoch_sec: float = 30.0,
    label_map: dict[str, int] | None = None,
    length_mismatch: Literal["raise", "crop"] = "raise",
    source: str = "hypnogram",
) -> np.ndarray:
    """One class label per epoch of a signal with ``n_epochs`` epochs.

    An epoch takes the label of the annotation covering its midpoint. Epochs covered by no annotation
    are :data:`UNANNOTATED`; unscored labels (``Sleep stage ?``, ``Movement time``) map to
    :data:`~dsn.data.labels.IGNORE_INDEX`.

    Raises
    ------
    DataError
        With ``length_mismatch="raise"``: if scored annotations extend more than one epoch past the end
        of the signal (hypnogram longer), or the annotations end more than one epoch before it (shorter).
    """
    label_map = RK_TO_AASM if label_map is None else label_map
    y = np.full(n_epochs, UNANNOTATED, dtype=np.int64)
    mids = (np.arange(n_epochs) + 0.5) * epoch_sec
    signal_end = n_epochs * epoch_sec
    scored_end = 0.0
    ann_end = 0.0
    for onset, dur, lab in zip(onsets, durations, labels):
        code = label_map[lab]
        ann_end = max(ann_end, onset + dur)
        if code != IGNORE_INDEX:
            scored_end = max(scored_end, onset + dur)
        i0 = int(np.searchsorted(mids, onset, side="left"))
        i1 = int(np.searchsorted(mids, onset + dur, side="left"))
        y[i0:i1] = code
    if length_mismatch == "raise":
        hint = (
            "Check that the PSG and hypnogram belong together; set `length_mismatch: crop` to keep only the "
            "part both cover."
        )
        if scored_end > signal_end + epoch_sec:
            raise DataError(
                f"{source}: hypnogram longer than the signal: scored stages run to {scored_end:.0f} s but the "
                f"signal has {n_epochs} epochs ({signal_end:.0f} s). {hint}"
            )
        if ann_end < signal_end - epoch_sec:
            raise DataError(
                f"{source}: hypnogram shorter than the signal: annotations end at {ann_end:.0f} s but the "
                f"signal lasts {signal_end:.0f} s. {hint}"
            )
    return y


def sleep_period(is_sleep: np.ndarray, trim_minutes: float | None = 30.0, epoch_sec: float = 30.0) -> slice | None:
    """The epochs from ``trim_minutes`` before the first to ``trim_minutes`` after the last sleep epoch
    (all epochs when ``trim_minutes`` is None); ``None`` when ``is_sleep`` holds no sleep epoch."""
    sleep = np.flatnonzero(is_sleep)
    if sleep.size == 0:
        return None
    if trim_minutes is None:
        return slice(0, len(is_sleep))
    edge = int(round(trim_minutes * 60 / epoch_sec))
    return slice(max(int(sleep[0]) - edge, 0), min(int(sleep[-1]) + edge + 1, len(is_sleep)))


def trim_and_clean(
    y: np.ndarray,
    trim_minutes: float | None = 30.0,
    epoch_sec: float = 30.0,
    unscored: Literal["drop", "mask"] = "drop",
    source: str = "recording",
) -> np.ndarray:
    """Select the epochs to keep: trimmed around sleep, unscored epochs dropped or masked.

    Parameters
    ----------
    y : ndarray (n_epochs,) labels from :func:`epoch_labels`.
    trim_minutes : wake kept before the first and after the last sleep epoch; ``None`` keeps all.
    unscored : ``"drop"`` removes ``?``/movement/unannotated epochs (the official code);
        ``"mask"`` keeps them with label ``IGNORE_INDEX`` so sequences stay contiguous.

    Returns
    -------
    keep : ndarray of int indices into ``y`` (sorted). Apply ``y[keep]``; with ``"mask"``
        replace ``UNANNOTATED`` by ``IGNORE_INDEX``.
    """
    window = sleep_period(y > 0, trim_minutes, epoch_sec)
    if window is None:
        raise DataError(
            f"{source}: no sleep epochs (N1, N2, N3, REM) in the hypnogram, nothing to train on. "
            "Check the hypnogram file, or exclude this recording."
        )
    idx = np.arange(window.start, window.stop)
    if unscored == "drop":
        idx = idx[y[idx] >= 0]
    elif unscored != "mask":
        raise DataError(f"unscored={unscored!r}: expected 'drop' or 'mask'.")
    return idx

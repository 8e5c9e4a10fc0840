"""Hypnogram readers (EDF+ annotations, NSRR XML, BIDS events, CSV/TSV tables) and the rules that turn a
hypnogram into one label per sleep epoch of its recording.

Every reader returns a :class:`Hypnogram`: intervals (onset, duration, label as written in the file) and,
when the file states it, its start time. :func:`stage_labels` maps the labels through the data set's label
map and places the intervals on the recording's 30-s epoch grid by these rules, each a one-line
:class:`~dsn.data.edf.DataError` naming the file, the seconds and the fix when it fails:

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
  (:func:`dsn.data.edf.epoch_labels`).
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

from dsn.data.edf import DataError, RecordingFiles, check_edf_size, epoch_labels
from dsn.data.labels import IGNORE_INDEX, map_labels

log = logging.getLogger(__name__)


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


def edf_start(path: str | Path) -> _dt.datetime | None:
    """The start date and time in an EDF header (bytes 168-184, ``dd.mm.yy`` ``hh.mm.ss``); ``None`` if unreadable.

    Two-digit years are 1985-2084, as the EDF specification says.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(184)
        d, t = head[168:176].decode("ascii"), head[176:184].decode("ascii")
        dd, mm, yy = (int(v) for v in d.split("."))
        h, mi, s = (int(v) for v in t.split("."))
        return _dt.datetime(1900 + yy if yy >= 85 else 2000 + yy, mm, dd, h, mi, s)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------------------- readers
def read_edf_annotations(path: str | Path, options: dict[str, Any] | None = None, epoch_sec: float = 30.0) -> Hypnogram:
    """An EDF+ hypnogram (Sleep-EDF): its annotations, read with MNE, and its header's start time."""
    import mne

    check_edf_size(path)
    try:
        ann = mne.read_annotations(path)
    except Exception as e:  # MNE raises many types for broken files
        raise DataError(f"{path}: could not read hypnogram annotations ({type(e).__name__}: {e}).") from None
    return Hypnogram(np.asarray(ann.onset, float), np.asarray(ann.duration, float), list(ann.description), str(path),
                     start=edf_start(path))


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
    on_col = str(options.get("onset_column", "onset")).casefold()
    du_col = str(options.get("duration_column", "duration")).casefold()
    lab_col = str(options.get("label_column", "stage")).casefold()
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable hypnogram file ({e}).") from None
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{path}: empty hypnogram file.")
    delim = options.get("delimiter") or {".tsv": "\t", ".csv": ","}.get(Path(path).suffix.lower())
    if delim is None:
        first = lines[0][1]
        delim = next((d for d in ("\t", ",", ";") if d in first), None)

    def cells(line: str) -> list[str]:
        parts = line.split(delim) if delim else line.split()
        return [p.strip().strip('"') for p in parts]

    head = [c.casefold() for c in cells(lines[0][1])]
    if on_col in head and du_col in head:
        li = head.index(lab_col) if lab_col in head else (2 if len(head) > 2 else None)
        if li is None:
            raise DataError(f"{path}: no label column {lab_col!r} beside onset/duration (header: {head}).")
        io, idu = head.index(on_col), head.index(du_col)
        onsets, durations, labels = [], [], []
        for row, line in lines[1:]:
            c = cells(line)
            if len(c) <= max(io, idu, li):
                raise DataError(f"{path}: row {row} has {len(c)} column(s), the header {len(head)}.")
            onsets.append(_number(c[io], path, row, "onset"))
            durations.append(_number(c[idu], path, row, "duration"))
            labels.append(c[li])
        return Hypnogram(np.array(onsets, float), np.array(durations, float), labels, str(path))
    body = lines
    col = 0
    if lab_col in head or set(head) & _HEADER_WORDS:
        body = lines[1:]
        col = head.index(lab_col) if lab_col in head else next(
            (k for k, h in enumerate(head) if h in _HEADER_WORDS - {"epoch"}), len(head) - 1
        )
    elif len(head) > 1:
        raise DataError(
            f"{path}: {len(head)} columns without a header. Write one label per line, or a header naming the "
            f"columns (onset,duration,{lab_col} or epoch,{lab_col})."
        )
    labels = []
    for row, line in body:
        c = cells(line)
        if len(c) <= col:
            raise DataError(f"{path}: row {row} has no column {col + 1}.")
        labels.append(c[col])
    n = len(labels)
    return Hypnogram(np.arange(n) * float(epoch_sec), np.full(n, float(epoch_sec)), labels, str(path), per_epoch=True)


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
    src = hyp.source
    if hyp.per_epoch and abs(hyp_epoch_sec - epoch_sec) > 1e-6:
        raise DataError(
            f"{src}: scored in {hyp_epoch_sec:g}-s epochs (the profile's epoch_sec) but data.epoch_sec is "
            f"{epoch_sec:g}: set data.epoch_sec: {hyp_epoch_sec:g} (stages are not regrouped into other epochs)."
        )
    shift = _offset(hyp, psg_start)
    onsets = np.asarray(hyp.onsets, float) + shift
    durations = np.asarray(hyp.durations, float)
    scored = codes != IGNORE_INDEX
    signal_sec = n_epochs * epoch_sec
    if scored.any():
        first, last = float(onsets[scored].min()), float((onsets + durations)[scored].max())
        if first >= signal_sec or last <= 0:
            when = ""
            if hyp.start is not None and psg_start is not None:
                when = (f" It starts {_when(hyp.start, hyp.clock_only)}, {shift:+.0f} s from the recording's start "
                        f"({_when(psg_start, hyp.clock_only)}).")
            raise DataError(
                f"{src}: its scored stages ({first:.0f}-{last:.0f} s) do not overlap {psg} (0-{signal_sec:.0f} s)."
                f"{when} Is it another night's hypnogram? Pair each recording with its own."
            )
        off = np.abs(onsets[scored] / epoch_sec - np.round(onsets[scored] / epoch_sec)) * epoch_sec > 1e-3
        if off.any():
            bad = float(onsets[scored][off][0])
            grid = _grid(np.concatenate([hyp.onsets[scored], durations[scored]]))
            if 0 < grid < epoch_sec and abs(shift / grid - round(shift / grid)) * grid < 1e-3:
                raise DataError(
                    f"{src}: scored in {grid:g}-s epochs (a stage starts at {bad:g} s) but data.epoch_sec is "
                    f"{epoch_sec:g}: set data.epoch_sec: {grid:g} (stages are not regrouped into other epochs)."
                )
            raise DataError(
                f"{src}: a scored stage starts at {bad:g} s from the start of {psg}, not on its {epoch_sec:g}-s "
                f"epoch grid (hypnogram offset {shift:+g} s). Stages are never shifted by part of an epoch: fix the "
                "onsets or the start times."
            )
        if first < 0 and length_mismatch == "raise":
            raise DataError(
                f"{src}: scored stages begin {-first:.0f} s before {psg} starts. Check that they belong together; "
                "set `length_mismatch: crop` to drop the part before the recording."
            )
    if shift:
        log.info("%s: placed %+.0f s from the start of %s (its stated start time)", src, shift, psg)
    label_of = {i: int(c) for i, c in enumerate(codes)}
    keys = [str(i) for i in range(len(codes))]
    return epoch_labels(
        onsets, durations, keys, n_epochs, epoch_sec, {k: label_of[int(k)] for k in keys}, length_mismatch, src
    )


def read(files: RecordingFiles) -> tuple[Hypnogram, np.ndarray]:
    """Read a recording's hypnogram by its profile and map its labels: ``(hypnogram, class indices)``."""
    from dsn.data.datasets import load_profile

    prof = load_profile(files.profile)
    reader = FORMATS[prof.hypnogram_format]
    hyp = reader(files.hypnogram, prof.hypnogram_options, prof.epoch_sec)
    try:
        codes = map_labels(hyp.labels, prof.label_map, str(files.hypnogram), prof.label_map_name())
    except ValueError as e:
        raise DataError(str(e)) from None
    return hyp, codes


def stage_labels(
    files: RecordingFiles, n_epochs: int, epoch_sec: float = 30.0, length_mismatch: Literal["raise", "crop"] = "raise"
) -> np.ndarray:
    """One label per sleep epoch of ``files.psg`` (``n_epochs`` epochs) from its hypnogram.

    Returns
    -------
    y : ndarray, shape (n_epochs,), int64: class index, ``IGNORE_INDEX`` (unscored) or ``UNANNOTATED``.

    Raises
    ------
    DataError
        By the rules of this module, naming the hypnogram, the seconds and the fix.
    """
    from dsn.data.datasets import load_profile

    hyp, codes = read(files)
    prof = load_profile(files.profile)
    return place(hyp, codes, n_epochs, epoch_sec, edf_start(files.psg), length_mismatch, prof.epoch_sec, str(files.psg))

"""A scored night: sleep statistics, agreement with an expert, and the files ``dsn predict`` writes.

Stages are integer arrays in the project's class order (:data:`dsn.data.labels.STAGES`):
``0 = W, 1 = N1, 2 = N2, 3 = N3, 4 = REM``; negative values (``-1``, the project's
:data:`~dsn.data.labels.IGNORE_INDEX`, or ``-2``) mark unscored / artefact epochs.

Every writer is atomic (:func:`atomic_write`): the file appears complete under its name or not at all.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dsn import evaluation
from dsn.data.errors import DataError
from dsn.data.labels import IGNORE_INDEX, N_CLASSES, STAGES, runs

__all__ = [
    "HypnogramTable",
    "agreement",
    "atomic_write",
    "format_sleep_statistics",
    "read_csv",
    "sleep_statistics",
    "write_csv",
    "write_edf_annotations",
    "write_edf_hypnogram",
]

#: Stage name written for unscored epochs (CSV ``stage`` column).
UNSCORED_NAME = "?"


def _as_stages(stages: Any, what: str = "stages", n_classes: int = N_CLASSES) -> np.ndarray:
    """Validate a hypnogram: 1-D integers in ``[-2, n_classes)``; returns int64."""
    y = np.asarray(stages)
    if y.ndim != 1:
        raise DataError(f"{what}: expected a 1-D array of stage indices, got shape {y.shape}.")
    if y.size and y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what}: expected integer stage indices, got dtype {y.dtype}.")
    y = y.astype(np.int64, copy=False)
    bad = (y < -2) | (y >= n_classes)
    if bad.any():
        raise DataError(
            f"{what}: stage value {int(y[bad][0])} at epoch {int(np.flatnonzero(bad)[0])} is not a class index "
            f"(0..{n_classes - 1}: {', '.join(STAGES[:n_classes])}) or -1 (unscored)."
        )
    return y


# --------------------------------------------------------------------------------------------
# Sleep statistics
# --------------------------------------------------------------------------------------------
def sleep_statistics(stages: np.ndarray, epoch_sec: float = 30.0) -> dict[str, float]:
    """Standard sleep statistics of one night, with the definitions of YASA's ``sleep_statistics``.

    The hypnogram is taken as the whole time in bed ("lights out" to "lights on"): it is not cropped.

    Parameters
    ----------
    stages : ndarray, shape (n_epochs,), int
        One stage per epoch: 0 W, 1 N1, 2 N2, 3 N3, 4 REM; negative = unscored / artefact.
    epoch_sec : float, default 30.0
        Epoch length in seconds.

    Returns
    -------
    dict of str to float
        Durations and latencies in minutes, efficiencies and stage shares in percent. Keys, in order:

        * ``TIB`` time in bed: duration of the whole hypnogram (unscored epochs included).
        * ``SPT`` sleep period time: from the first to the last epoch of sleep (N1, N2, N3 or REM),
          both included; 0 without sleep.
        * ``TST`` total sleep time: N1 + N2 + N3 + REM epochs (within the SPT by construction);
          unscored epochs inside the SPT are neither sleep nor wake, so ``SPT = TST + WASO +
          unscored epochs inside the SPT``.
        * ``WASO`` wake after sleep onset: W epochs inside the SPT; NaN without sleep.
        * ``SOL`` sleep onset latency: from the start of the hypnogram to the first epoch of sleep
          (any stage, one epoch is enough); NaN without sleep.
        * ``SE`` sleep efficiency: ``100 * TST / TIB``.
        * ``SME`` sleep maintenance efficiency: ``100 * TST / SPT``; NaN without sleep.
        * ``N_awakenings`` number of awakenings: runs of consecutive W epochs inside the SPT, where
          unscored epochs are skipped (W ? W is one awakening); NaN without sleep.
        * ``W``, ``N1``, ``N2``, ``N3``, ``REM``: time in each stage over the whole hypnogram;
          ``NREM = N1 + N2 + N3``; ``Unscored``: time in unscored epochs.
        * ``%N1``, ``%N2``, ``%N3``, ``%REM``, ``%NREM``: stage time in percent of ``TST``; NaN when
          ``TST`` is 0.
        * ``Lat_N1``, ``Lat_N2``, ``Lat_N3``, ``Lat_REM``: from the start of the hypnogram to the first
          epoch of that stage; NaN when the stage does not occur. As in YASA, ``Lat_REM`` is counted
          from the start of the recording, not from sleep onset; the AASM REM latency is
          ``Lat_REM - SOL``.

    Raises
    ------
    DataError
        If ``stages`` is empty, not 1-D, or holds a value outside -2..4, or ``epoch_sec <= 0``.

    Examples
    --------
    >>> s = sleep_statistics(np.array([0, 0, 1, 2, 0, 2, 4, 0]))
    >>> s["TIB"], s["SPT"], s["TST"], s["WASO"], s["SOL"], s["Lat_REM"], s["N_awakenings"]
    (4.0, 2.5, 2.0, 0.5, 1.0, 3.0, 1.0)
    """
    y = _as_stages(stages)
    if y.size == 0:
        raise DataError("stages: empty hypnogram, no statistics to compute.")
    if not epoch_sec > 0:
        raise DataError(f"epoch_sec={epoch_sec}: the epoch length must be positive (30 s in Sleep-EDF).")
    minutes = epoch_sec / 60.0
    nan = float("nan")
    asleep = np.flatnonzero(y > 0)
    counts = {name: int((y == i).sum()) for i, name in enumerate(STAGES)}
    tst = int(asleep.size)

    out: dict[str, float] = {"TIB": y.size * minutes}
    if asleep.size:
        spt = y[asleep[0] : asleep[-1] + 1]
        scored = spt[spt >= 0]
        wake = scored == 0
        # A bout starts where W follows sleep (the SPT starts and ends with sleep).
        n_awake = int(np.count_nonzero(wake[1:] & ~wake[:-1]))
        out |= {
            "SPT": spt.size * minutes,
            "TST": tst * minutes,
            "WASO": int((spt == 0).sum()) * minutes,
            "SOL": int(asleep[0]) * minutes,
            "SE": 100.0 * tst / y.size,
            "SME": 100.0 * tst / spt.size,
            "N_awakenings": float(n_awake),
        }
    else:
        out |= {"SPT": 0.0, "TST": 0.0, "WASO": nan, "SOL": nan, "SE": 0.0, "SME": nan, "N_awakenings": nan}
    for name in STAGES:
        out[name] = counts[name] * minutes
    nrem = counts["N1"] + counts["N2"] + counts["N3"]
    out["NREM"] = nrem * minutes
    out["Unscored"] = int((y < 0).sum()) * minutes
    for name, n in ((s, counts[s]) for s in STAGES[1:]):
        out[f"%{name}"] = 100.0 * n / tst if tst else nan
    out["%NREM"] = 100.0 * nrem / tst if tst else nan
    for i, name in enumerate(STAGES[1:], start=1):
        where = np.flatnonzero(y == i)
        out[f"Lat_{name}"] = int(where[0]) * minutes if where.size else nan
    return out


def _num(value: float, fmt: str = ".1f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_sleep_statistics(stats: Mapping[str, float]) -> str:
    """Format the output of :func:`sleep_statistics` as a terminal table.

    Parameters
    ----------
    stats : mapping of str to float
        As returned by :func:`sleep_statistics`; missing keys are shown as ``n/a``.

    Returns
    -------
    str
        Multi-line text: the night summary (times in minutes, efficiencies in %), then one row per
        stage with its time, share of TST and latency. Undefined values read ``n/a``.
    """
    nan = float("nan")

    def get(key: str) -> float:
        v = stats.get(key, nan)
        return float(v) if v is not None else nan

    rows = [
        ("Time in bed (TIB)", _num(get("TIB")), "min"),
        ("Sleep period time (SPT)", _num(get("SPT")), "min"),
        ("Total sleep time (TST)", _num(get("TST")), "min"),
        ("Wake after sleep onset (WASO)", _num(get("WASO")), "min"),
        ("Sleep onset latency (SOL)", _num(get("SOL")), "min"),
        ("Sleep efficiency (SE)", _num(get("SE")), "%"),
        ("Sleep maintenance efficiency (SME)", _num(get("SME")), "%"),
        ("Awakenings", _num(get("N_awakenings"), ".0f"), ""),
    ]
    if get("Unscored") > 0:
        rows.append(("Unscored", _num(get("Unscored")), "min"))
    w_label = max(len(r[0]) for r in rows)
    w_value = max(8, *(len(r[1]) for r in rows))
    lines = ["Sleep statistics", "-" * (w_label + w_value + 6)]
    lines += [f"{label:<{w_label}} {value:>{w_value}} {unit}".rstrip() for label, value, unit in rows]
    lines += ["", f"{'stage':<6} {'min':>8} {'% TST':>8} {'latency (min)':>14}", "-" * 39]
    for name in STAGES:
        share = "-" if name == "W" else _num(get(f"%{name}"))
        latency = "-" if name == "W" else _num(get(f"Lat_{name}"))
        lines.append(f"{name:<6} {_num(get(name)):>8} {share:>8} {latency:>14}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Agreement with an expert hypnogram
# --------------------------------------------------------------------------------------------
def agreement(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str] = STAGES) -> dict[str, Any]:
    """Epoch-by-epoch agreement between an expert hypnogram and a predicted one, inputs checked.

    :func:`dsn.evaluation.agreement` after checking both hypnograms (1-D stage indices in ``-2..C-1``,
    ``-1`` = unscored, equal lengths). It returns ``confusion`` (rows true), ``n_epochs``, ``n_ignored``
    (epochs unscored on either side) and ``acc``, ``f1_macro``, ``kappa``, ``f1_/precision_/recall_<name>``.

    Raises
    ------
    DataError
        If the two hypnograms differ in length or hold values outside ``-2..C-1``.
    """
    n_classes = len(class_names)
    t = _as_stages(y_true, "y_true", n_classes)
    p = _as_stages(y_pred, "y_pred", n_classes)
    if t.shape != p.shape:
        raise DataError(
            f"agreement: the expert hypnogram has {t.size} epochs but the prediction has {p.size}; "
            "check that both come from the same recording and epoch length."
        )
    return evaluation.agreement(t, p, class_names)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Write a file under a temporary name in the same folder, then rename it to ``path``.

    A failure inside the block removes the temporary file and leaves any existing ``path``
    untouched, so no half-written file is ever seen under ``path``.

    Parameters
    ----------
    path : str or Path
        Final file name. Its folder must exist.

    Yields
    ------
    Path
        The temporary path to write to (``.<name>.<random>.tmp`` next to ``path``).

    Raises
    ------
    DataError
        If the folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"{path}: folder {path.parent} does not exist. Create it first (or choose another --out).")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Columns(NamedTuple):
    onsets: np.ndarray
    stages: np.ndarray
    proba: np.ndarray
    class_names: tuple[str, ...]


class HypnogramTable(_Columns):
    """A per-epoch prediction table as read by :func:`read_csv` (unpacks as its first four attributes).

    Attributes
    ----------
    onsets : ndarray, shape (n_epochs,), float64
        Epoch start in seconds from the recording start.
    stages : ndarray, shape (n_epochs,), int64
        Stage index into ``class_names`` (``-1`` for ``?``).
    proba : ndarray, shape (n_epochs, n_classes), float64
        Class probabilities.
    class_names : tuple of str
        Class names from the ``p_<name>`` columns, in column order.
    confidence, entropy : ndarray, shape (n_epochs,), float64, or None
        Top-class probability and normalised entropy (None in files written without them).
    low_confidence : ndarray, shape (n_epochs,), bool, or None
        The low-confidence flag (None in files written without it).
    """

    confidence: np.ndarray | None = None
    entropy: np.ndarray | None = None
    low_confidence: np.ndarray | None = None


#: Per-epoch confidence columns written after the probabilities (``write_csv(..., low_confidence=...)``).
CONFIDENCE_COLUMNS = ("confidence", "entropy", "low_confidence")


def write_csv(
    path: str | Path,
    onsets: np.ndarray,
    stages: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str] = STAGES,
    low_confidence: float | None = None,
) -> Path:
    """Write one row per epoch: ``onset_s, stage, p_<name>...`` (e.g. ``p_W, p_N1, p_N2, p_N3, p_REM``).

    With ``low_confidence`` three columns follow: ``confidence`` (top-class probability), ``entropy``
    (normalised, :func:`dsn.evaluation.confidence`) and ``low_confidence`` (1 when ``confidence`` is below
    the threshold, else 0).

    Parameters
    ----------
    path : str or Path
        Output file (written atomically).
    onsets : ndarray, shape (n_epochs,), float
        Epoch start in seconds from the recording start (written in shortest exact form).
    stages : ndarray, shape (n_epochs,), int
        Stage indices; written as names (``W`` ... ``REM``, ``?`` for negative values).
    proba : ndarray, shape (n_epochs, n_classes), float
        Class probabilities, written with 6 decimals.
    class_names : sequence of str, default ``STAGES``
        Names of the classes in index order.
    low_confidence : float, optional
        Threshold of the low-confidence flag; None writes no confidence columns.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataError
        On mismatched lengths/shapes or stage values outside ``-2..n_classes-1``.
    """
    names = tuple(class_names)
    y = _as_stages(stages, "stages", len(names))
    t = np.asarray(onsets, dtype=np.float64).reshape(-1)
    p = np.asarray(proba, dtype=np.float64)
    if t.shape != y.shape or p.shape != (y.size, len(names)):
        raise DataError(
            f"{path}: shapes do not match: onsets {t.shape}, stages {y.shape}, proba {p.shape}; expected "
            f"({y.size},), ({y.size},) and ({y.size}, {len(names)}) for classes {', '.join(names)}."
        )
    labels = [names[v] if v >= 0 else UNSCORED_NAME for v in y.tolist()]
    extra: list[list[str]] = [[] for _ in labels]
    if low_confidence is not None and y.size:
        top, ent = evaluation.confidence(p)
        extra = [[f"{c:.6f}", f"{h:.6f}", str(int(c < low_confidence))] for c, h in zip(top.tolist(), ent.tolist())]
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["onset_s", "stage", *(f"p_{n}" for n in names),
                    *(CONFIDENCE_COLUMNS if low_confidence is not None else ())])
        for onset, label, row, more in zip(t.tolist(), labels, p, extra):
            w.writerow([np.format_float_positional(onset, trim="-"), label, *(f"{v:.6f}" for v in row.tolist()), *more])
    return Path(path)


def read_csv(path: str | Path) -> HypnogramTable:
    """Read a file written by :func:`write_csv`.

    Parameters
    ----------
    path : str or Path
        CSV file with header ``onset_s, stage, p_<name>, ...``.

    Returns
    -------
    HypnogramTable
        ``(onsets, stages, proba, class_names)``; stage names are mapped back to indices into
        ``class_names`` (``?`` -> -1).

    Raises
    ------
    DataError
        If the file is missing, its header is not ``onset_s, stage, p_...``, or a row is malformed
        (the message gives the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    n_extra = len(CONFIDENCE_COLUMNS) if tuple(header[-len(CONFIDENCE_COLUMNS):]) == CONFIDENCE_COLUMNS else 0
    p_cols = header[2 : len(header) - n_extra]
    if len(p_cols) < 1 or header[:2] != ["onset_s", "stage"] or not all(h.startswith("p_") for h in p_cols):
        raise DataError(
            f"{path}: not a dsn hypnogram CSV: the header should be 'onset_s,stage,p_W,p_N1,...', got "
            f"{','.join(header) or 'an empty file'}. Pass a file written by `dsn predict`."
        )
    names = tuple(h[2:] for h in p_cols)
    index = {n: i for i, n in enumerate(names)} | {UNSCORED_NAME: IGNORE_INDEX}
    n = len(rows) - 1
    onsets = np.empty(n, dtype=np.float64)
    stages = np.empty(n, dtype=np.int64)
    proba = np.empty((n, len(names)), dtype=np.float64)
    more = np.empty((n, n_extra), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields instead of {len(header)}")
            if row[1] not in index:
                raise ValueError(f"unknown stage {row[1]!r} (expected one of {', '.join(index)})")
            onsets[i] = float(row[0])
            stages[i] = index[row[1]]
            proba[i] = [float(v) for v in row[2 : 2 + len(names)]]
            more[i] = [float(v) for v in row[2 + len(names) :]]
        except ValueError as e:
            raise DataError(
                f"{path}, line {i + 2}: {e}. The file is damaged; write it again with `dsn predict`."
            ) from None
    table = HypnogramTable(onsets, stages, proba, names)
    if n_extra:
        table.confidence, table.entropy, table.low_confidence = more[:, 0], more[:, 1], more[:, 2] > 0
    return table


def write_edf_hypnogram(
    path: str | Path,
    stages: np.ndarray,
    epoch_sec: float = 30.0,
    start: _dt.datetime | None = None,
) -> Path:
    """Write a hypnogram as an annotations-only EDF+ file, in the style of Sleep-EDF.

    Each run of equal stages becomes one annotation ``Sleep stage W`` / ``1`` / ``2`` / ``3`` / ``R``
    (``?`` for unscored epochs) with the run's onset and duration, the first at 0 s. The file reads back
    with :func:`dsn.data.hypnograms.read_edf_annotations` + :func:`~dsn.data.hypnograms.epoch_labels` and with
    :func:`mne.read_annotations`.

    Parameters
    ----------
    path : str or Path
        Output file (written atomically), e.g. ``SC4001E0-Hypnogram.edf``.
    stages : ndarray, shape (n_epochs,), int
        Stage indices (0 W ... 4 REM, negative = unscored).
    epoch_sec : float, default 30.0
        Epoch length in seconds.
    start : datetime.datetime, optional
        Recording start written in the header (date and wall-clock time, time zone ignored); give the
        PSG's start (:attr:`dsn.data.psg.ScoringInput.start`) so the two files line up. ``None`` writes
        an unknown date.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataError
        On invalid or empty ``stages``, ``epoch_sec <= 0``, or a ``start`` outside the years EDF can
        store (1985-2084).
    """
    y = _as_stages(stages)
    if y.size == 0:
        raise DataError(f"{path}: empty hypnogram, nothing to write.")
    if not epoch_sec > 0:
        raise DataError(f"epoch_sec={epoch_sec}: the epoch length must be positive (30 s in Sleep-EDF).")
    names = {i: f"Sleep stage {code}" for i, code in enumerate(("W", "1", "2", "3", "R"))}
    anns = [(float(s * epoch_sec), float(n * epoch_sec), names.get(int(v), "Sleep stage ?")) for v, s, n in runs(np.where(y < 0, -1, y))]
    return write_edf_annotations(path, anns, start)


def write_edf_annotations(
    path: str | Path, annotations: Sequence[tuple[float, float, str]], start: _dt.datetime | None = None,
    empty_text: str = "No annotations",
) -> Path:
    """Write an annotations-only EDF+ file (with no ``annotations``: one zero-length ``empty_text`` at 0 s, as
    an EDF+ file must hold a signal or an annotation).

    Parameters
    ----------
    path : str or Path
        Output file (written atomically).
    annotations : sequence of (onset_s, duration_s, text)
        Onset and duration in seconds from the recording start.
    start : datetime.datetime, optional
        Recording start written in the header (time zone ignored); ``None`` writes an unknown date.

    Returns
    -------
    Path
        The file written (``path``).

    Raises
    ------
    DataError
        When ``start`` is outside the years EDF can store (1985-2084).
    """
    from edfio import Edf, EdfAnnotation, Recording

    if start is not None and not 1985 <= start.year <= 2084:
        raise DataError(
            f"{path}: start {start.isoformat()} cannot be stored: EDF only allows dates from 1985 to 2084. "
            "Pass start=None to write the file without a date."
        )
    recording = Recording(startdate=start.date(), equipment_code="dsn") if start else Recording(equipment_code="dsn")
    edf = Edf(
        [],
        recording=recording,
        starttime=start.time().replace(tzinfo=None) if start else None,
        annotations=[EdfAnnotation(o, d, text) for o, d, text in annotations] or [EdfAnnotation(0.0, 0.0, empty_text)],
    )
    with atomic_write(path) as tmp:
        edf.write(tmp)
    return Path(path)

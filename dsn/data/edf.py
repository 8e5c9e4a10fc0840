"""Reading Sleep-EDF recordings: file discovery, the EEG channel and the hypnogram.

Each function is small and pure apart from the file it reads. Errors are :class:`DataError`
with the file, the value and a hint in the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dsn.data.labels import IGNORE_INDEX, RK_TO_AASM

#: Sleep-EDF file names: SC4ssNE0-PSG.edf / SC4ssNEX-Hypnogram.edf (cassette) and ST7ssNJ0-PSG.edf (telemetry).
_NAME_RE = re.compile(r"^(?P<study>SC4|ST7)(?P<subject>\d{2})(?P<night>\d)(?P<rest>\w{2})-(?P<kind>PSG|Hypnogram)\.edf$")

#: Label used internally for epochs that no annotation covers.
UNANNOTATED = -2


class DataError(ValueError):
    """Bad input data: the message names the file or value and says how to fix it."""


@dataclass(frozen=True)
class RecordingFiles:
    """A PSG file and its hypnogram.

    Attributes
    ----------
    name : str
        Recording name, the PSG file name without ``-PSG.edf`` (e.g. ``SC4001E0``).
    subject : str
        Subject identifier: study prefix + subject number (``SC400``); unique across SC and ST studies.
    night : int
        Night number (1 or 2).
    psg, hypnogram : Path
    """

    name: str
    subject: str
    night: int
    psg: Path
    hypnogram: Path


def parse_name(path: str | Path) -> dict[str, str | int]:
    """Parse a Sleep-EDF file name into study, subject, night and kind.

    Raises
    ------
    DataError
        If the name does not follow the Sleep-EDF convention.
    """
    name = Path(path).name
    m = _NAME_RE.match(name)
    if m is None:
        raise DataError(
            f"{name}: not a Sleep-EDF file name. Expected e.g. 'SC4001E0-PSG.edf' / 'SC4001EC-Hypnogram.edf' "
            "(sleep-cassette) or 'ST7011J0-PSG.edf' (sleep-telemetry)."
        )
    return {
        "study": m["study"],
        "subject": m["study"] + m["subject"],
        "night": int(m["night"]),
        "kind": m["kind"],
        "key": name[:7],
    }


def find_recordings(data_dir: str | Path) -> list[RecordingFiles]:
    """Find PSG/Hypnogram pairs in ``data_dir`` (searched recursively).

    Files are paired by the first 7 characters of their names, as Sleep-EDF requires
    (``SC4001E0-PSG.edf`` <-> ``SC4001EC-Hypnogram.edf``).

    Raises
    ------
    DataError
        If the folder does not exist or holds no PSG file, if a PSG has no hypnogram,
        or if a PSG has two candidate hypnograms.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: data folder not found. Create one with `dsn synth {data_dir} --subjects 4` "
            "or download Sleep-EDF (see README, 'Real Sleep-EDF')."
        )
    psgs: dict[str, Path] = {}
    hyps: dict[str, list[Path]] = {}
    for path in sorted(data_dir.rglob("*.edf")):
        try:
            info = parse_name(path)
        except DataError:
            continue
        if info["kind"] == "PSG":
            psgs[str(info["key"])] = path
        else:
            hyps.setdefault(str(info["key"]), []).append(path)
    if not psgs:
        raise DataError(f"{data_dir}: no Sleep-EDF PSG files (*-PSG.edf) found.")
    out = []
    for key, psg in sorted(psgs.items()):
        cands = hyps.get(key, [])
        if not cands:
            raise DataError(
                f"{psg}: no hypnogram found. Expected a file named '{key}?-Hypnogram.edf' next to it "
                "(paired by the first 7 characters). Add it or remove the PSG file."
            )
        if len(cands) > 1:
            raise DataError(f"{psg}: several hypnograms match: {', '.join(str(c) for c in cands)}. Keep one.")
        info = parse_name(psg)
        out.append(
            RecordingFiles(
                name=psg.name[: -len("-PSG.edf")],
                subject=str(info["subject"]),
                night=int(info["night"]),
                psg=psg,
                hypnogram=cands[0],
            )
        )
    return out


def check_edf_size(path: str | Path) -> None:
    """Check that an EDF file is complete: header readable and file as long as its header says.

    Raises
    ------
    DataError
        If the file is missing, not EDF, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    size = path.stat().st_size
    hint = "Re-download or re-create the file (a partial download leaves a truncated file)."
    with open(path, "rb") as f:
        head = f.read(256)
        try:
            if len(head) < 256 or head[:1] != b"0":
                raise ValueError("no EDF header")
            n_header = int(head[184:192].decode("ascii").strip())
            n_records = int(head[236:244].decode("ascii").strip())
            n_signals = int(head[252:256].decode("ascii").strip())
            sig = f.read(n_signals * 256)
            if len(sig) < n_signals * 256:
                raise ValueError("header cut short")
            off = n_signals * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
            samples = [int(sig[off + 8 * i : off + 8 * i + 8].decode("ascii").strip()) for i in range(n_signals)]
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable EDF file ({e}). {hint}") from None
    expected = n_header + max(n_records, 0) * sum(samples) * 2
    if n_records >= 0 and size < expected:
        raise DataError(
            f"{path}: truncated EDF file: {size} bytes but its header announces {n_records} data records "
            f"({expected} bytes). {hint}"
        )


def read_eeg(
    path: str | Path, channel: str = "EEG Fpz-Cz", sfreq: float | None = None
) -> tuple[np.ndarray, float]:
    """Read one channel of a PSG file, in microvolts.

    Parameters
    ----------
    path : path to a PSG EDF file.
    channel : channel name as stored in the file.
    sfreq : target sampling rate; the signal is resampled when the file's rate differs. ``None`` keeps it.

    Returns
    -------
    signal : ndarray, shape (n_samples,), float32, microvolts
    sfreq : float, the rate of ``signal``
    """
    import mne

    check_edf_size(path)
    try:
        raw = mne.io.read_raw_edf(path, preload=False, verbose="error")
    except Exception as e:  # MNE raises many types for broken files
        raise DataError(f"{path}: MNE could not read this EDF file ({type(e).__name__}: {e}).") from None
    if channel not in raw.ch_names:
        raise DataError(
            f"{path}: channel '{channel}' not found. Channels in this file: {', '.join(raw.ch_names)}. "
            "Set `channel` (data.channel in the config) to one of them."
        )
    raw.pick([channel]).load_data(verbose="error")
    if sfreq is not None and abs(raw.info["sfreq"] - sfreq) > 1e-6:
        raw.resample(sfreq, verbose="error")
    # MNE returns volts; Sleep-EDF tools (and the official DeepSleepNet data) use microvolts.
    return (raw.get_data()[0] * 1e6).astype(np.float32), float(raw.info["sfreq"])


def read_hypnogram(path: str | Path, label_map: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a Sleep-EDF hypnogram (EDF+ annotations).

    Returns
    -------
    onsets, durations : ndarray of float seconds from the recording start
    labels : list of descriptions

    Raises
    ------
    DataError
        On an unreadable file, or a description not in ``label_map`` (default :data:`RK_TO_AASM`).
    """
    import mne

    label_map = RK_TO_AASM if label_map is None else label_map
    check_edf_size(path)
    try:
        ann = mne.read_annotations(path)
    except Exception as e:
        raise DataError(f"{path}: could not read hypnogram annotations ({type(e).__name__}: {e}).") from None
    unknown = sorted(set(ann.description) - set(label_map))
    if unknown:
        raise DataError(
            f"{path}: unknown annotation label(s) {unknown}. Known labels: {sorted(label_map)}. "
            "Add them to `label_map` (mapping to a class index, or -1 to ignore) if they are valid."
        )
    return np.asarray(ann.onset, float), np.asarray(ann.duration, float), list(ann.description)


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
    sleep = np.flatnonzero(y > 0)
    if sleep.size == 0:
        raise DataError(
            f"{source}: no sleep epochs (N1, N2, N3, REM) in the hypnogram, nothing to train on. "
            "Check the hypnogram file, or exclude this recording."
        )
    lo, hi = 0, len(y)
    if trim_minutes is not None:
        edge = int(round(trim_minutes * 60 / epoch_sec))
        lo, hi = max(sleep[0] - edge, 0), min(sleep[-1] + edge + 1, len(y))
    idx = np.arange(lo, hi)
    if unscored == "drop":
        idx = idx[y[idx] >= 0]
    elif unscored != "mask":
        raise DataError(f"unscored={unscored!r}: expected 'drop' or 'mask'.")
    return idx

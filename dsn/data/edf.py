"""Reading Sleep-EDF recordings: file discovery, the signal channels and the hypnogram.

Each function is small and pure apart from the file it reads. Errors are :class:`DataError`
with the file, the value and a hint in the message.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dsn.data.labels import IGNORE_INDEX, RK_TO_AASM
from dsn.errors import DsnError

#: Sleep-EDF file names: SC4ssNE0-PSG.edf / SC4ssNEX-Hypnogram.edf (cassette) and ST7ssNJ0-PSG.edf (telemetry).
_NAME_RE = re.compile(r"^(?P<study>SC4|ST7)(?P<subject>\d{2})(?P<night>\d)(?P<rest>\w{2})-(?P<kind>PSG|Hypnogram)\.edf$")

#: Label used internally for epochs that no annotation covers.
UNANNOTATED = -2


class DataError(DsnError, ValueError):
    """Bad input data: the message names the file or value and says how to fix it."""


@dataclass(frozen=True)
class RecordingFiles:
    """A PSG file and its hypnogram.

    Attributes
    ----------
    name : str
        Recording name (Sleep-EDF: the PSG file name without ``-PSG.edf``, e.g. ``SC4001E0``; other data
        sets: the profile's ``recording_name``, by default the file name without extension). Unique in a data set.
    subject : str
        Subject identifier by the profile's rule (Sleep-EDF: study prefix + subject number, ``SC400``, unique
        across SC and ST studies; NSRR: ``shhs-200001`` for both visits; BIDS: ``sub-01``).
    night : int
        Night number (Sleep-EDF: 1 or 2; NSRR: the visit; BIDS: the session's number).
    psg, hypnogram : Path
    profile : Profile or None
        The data-set profile (:class:`dsn.data.datasets.Profile`) that says how the hypnogram is read;
        ``None`` for the default ``sleep-edf`` profile.
    """

    name: str
    subject: str
    night: int
    psg: Path
    hypnogram: Path
    profile: object | None = field(default=None, compare=False, repr=False)


def parse_name(path: str | Path, profile: object | None = None) -> dict[str, str | int]:
    """Parse a recording's file name into subject, night and pairing key.

    Without ``profile``, a Sleep-EDF name: study, subject, night, kind (``PSG``/``Hypnogram``) and key
    (its first 7 characters). With a :class:`~dsn.data.datasets.Profile`: the name is matched against the
    profile's recording rule, then its hypnogram rule, and ``subject``, ``night``, ``kind``
    (``recording``/``hypnogram``) and ``key`` come from its templates.

    Raises
    ------
    DataError
        If the name does not follow the convention.
    """
    if profile is not None:
        from dsn.data.datasets import describe_name

        return describe_name(path, profile)
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


def find_recordings(data_dir: str | Path, profile: str | Path | object | None = None) -> list[RecordingFiles]:
    """Find recording/hypnogram pairs in ``data_dir`` (searched recursively) by a data-set profile.

    ``profile`` is a built-in name (``sleep-edf``, ``nsrr``, ``bids``, ``generic``), a YAML path or a loaded
    :class:`~dsn.data.datasets.Profile`; ``None`` is ``sleep-edf``, where files are paired by the first 7
    characters of their names (``SC4001E0-PSG.edf`` <-> ``SC4001EC-Hypnogram.edf``).

    Raises
    ------
    DataError
        If the folder does not exist or holds no recording, if a recording has no hypnogram or several, or
        two recordings share a name or a subject and night (the first such problem; ``dsn data`` lists all).
    """
    from dsn.data.datasets import scan

    found = scan(data_dir, profile)
    if found.problems:
        raise DataError(found.problems[0])
    return found.recordings


@dataclass(frozen=True)
class EdfHeader:
    """The fixed fields of an EDF or BDF header that :func:`check_edf_size` reads."""

    bdf: bool
    n_records: int
    record_text: str  # the data record duration as written (seconds)
    labels: tuple[str, ...]
    n_samples: tuple[int, ...]  # per record, per signal

    @property
    def rates(self) -> dict[str, float]:
        """``{label: Hz}`` of the signals (annotation channels left out)."""
        record_sec = float(self.record_text.replace(",", "."))
        return {lab: k / record_sec for lab, k in zip(self.labels, self.n_samples) if lab not in _TAL_NAMES}

    @property
    def duration(self) -> float:
        return self.n_records * float(self.record_text.replace(",", "."))


def check_edf_size(path: str | Path) -> EdfHeader:
    """Check that an EDF or BDF file is complete: header readable and file as long as its header says.

    Returns the header's fixed fields (:class:`EdfHeader`).

    Raises
    ------
    DataError
        If the file is missing, not EDF/BDF, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    size = path.stat().st_size
    hint = "Re-download or re-create the file (a partial download leaves a truncated file)."
    with open(path, "rb") as f:
        head = f.read(256)
        bdf = head[:8] == _BDF_VERSION
        try:
            if len(head) < 256 or not (head[:1] == b"0" or bdf):
                raise ValueError("no EDF or BDF header")
            n_header = int(head[184:192].decode("ascii").strip())
            n_records = int(head[236:244].decode("ascii").strip())
            n_signals = int(head[252:256].decode("ascii").strip())
            sig = f.read(n_signals * 256)
            if len(sig) < n_signals * 256:
                raise ValueError("header cut short")
            off = n_signals * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
            samples = [int(sig[off + 8 * i : off + 8 * i + 8].decode("ascii").strip()) for i in range(n_signals)]
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable EDF/BDF file ({e}). {hint}") from None
    expected = n_header + max(n_records, 0) * sum(samples) * (3 if bdf else 2)
    if n_records >= 0 and size < expected:
        raise DataError(
            f"{path}: truncated {'BDF' if bdf else 'EDF'} file: {size} bytes but its header announces {n_records} data records "
            f"({expected} bytes). {hint}"
        )
    labels = tuple(sig[16 * i : 16 * (i + 1)].strip().decode("latin-1") for i in range(n_signals))
    return EdfHeader(bdf, n_records, _edf_text(head[244:252]), labels, tuple(samples))


def read_eeg(
    path: str | Path, channel: str = "EEG Fpz-Cz", sfreq: float | None = None
) -> tuple[np.ndarray, float]:
    """Read one channel of a PSG file, in microvolts (:func:`read_channels` for one channel, flattened).

    Parameters
    ----------
    path : str or Path
        A PSG EDF file.
    channel : str, default "EEG Fpz-Cz"
        The channel: its label, an alias or a derivation (:mod:`dsn.data.channels`).
    sfreq : float, optional
        Target sampling rate; the signal is resampled when the channel's rate differs. ``None`` keeps it.

    Returns
    -------
    signal : ndarray, shape (n_samples,), float32, microvolts
    sfreq : float
        The rate of ``signal``.
    """
    sig = read_channels(path, [channel], sfreq)
    return sig.data[0], sig.sfreq


@dataclass(frozen=True)
class Signals:
    """Channels of one PSG file on one time grid.

    Attributes
    ----------
    data : ndarray, shape (n_chans, n_samples), float32
        Microvolts, every channel at ``sfreq``.
    sfreq : float
        Sampling rate of ``data``.
    names : list of str
        The channels' names as asked for (a derivation's name).
    labels : list of str
        The file labels read for each channel (``"C4 - M1"`` for a derivation).
    source_sfreq : list of float
        Each channel's rate in the file (a derivation's: the lower of its two).
    """

    data: np.ndarray
    sfreq: float
    names: list[str]
    labels: list[str]
    source_sfreq: list[float]


def read_channels(
    path: str | Path,
    channels: Sequence[str] = ("EEG Fpz-Cz",),
    sfreq: float | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    hint: str | None = None,
) -> Signals:
    """Read channels of a PSG file, each resampled to ``sfreq``, in microvolts.

    Channels are found by label, alias or derivation (:func:`dsn.data.channels.resolve_channels`). Plain
    EDF/EDF+C files with 16-bit records (all of Sleep-EDF) are decoded directly from the data records with
    numpy: only the requested channels' samples are touched, each at its own rate, and a channel at the file's
    fastest rate gets exactly the values :func:`mne.io.read_raw_edf` returns (times 1e6, as float32). Anything
    unusual (EDF+D, duplicate names, a zero range, a size that disagrees with the header) is read with MNE
    (which gives every channel the file's fastest rate). Resampling is polyphase
    (:func:`scipy.signal.resample_poly`, see :func:`_resample`) on either path, channel by channel.

    Parameters
    ----------
    path : str or Path
        A PSG EDF file.
    channels : sequence of str, default ("EEG Fpz-Cz",)
        Labels, aliases or derivations ``"NAME=PLUS-MINUS"``.
    sfreq : float, optional
        Rate of every returned channel. ``None``: the channels' own rate, which must then be the same.
    aliases : mapping, optional
        ``{canonical: [alias, ...]}`` added to the built-in table (a data set profile's, the user's).
    hint : str, optional
        The fix a missing-channel message ends with (default: set ``data.channels`` or
        ``data.channel_aliases``).

    Raises
    ------
    DataError
        For a missing or unreadable file, a missing or ambiguous channel (one line: the file, the channels it
        has, the names tried and the fix), or channels of different rates with ``sfreq=None``.
    """
    path = Path(path)
    layout, resolved = _locate(path, channels, aliases, hint)
    wanted = list(dict.fromkeys(label for _, plus, minus in resolved for label in (plus, minus) if label))
    read: dict[str, tuple[np.ndarray, float]] = {}
    rows = _rows_at_target(layout, resolved, sfreq)
    if rows is not None:  # several plain channels at the target rate: decoded straight into one array
        for (_, plus, _), row in zip(resolved, rows):
            fast = _read_channel(path, layout, plus, row)
            if fast is None:
                break
            read[plus] = fast
        else:
            return _signals(rows, resolved, [read[plus][1] for _, plus, _ in resolved])
        read = {}
    if layout is not None:
        for label in wanted:
            fast = _read_channel(path, layout, label)
            if fast is not None:
                read[label] = fast
    missing = [label for label in wanted if label not in read]
    if missing:
        read.update(_read_channels_mne(path, missing))
    rates = [min(read[plus][1], read[minus][1]) if minus else read[plus][1] for _, plus, minus in resolved]
    if sfreq is None and len(set(rates)) > 1:
        raise DataError(f"{path}: the channels have different rates ({', '.join(f'{r:g}' for r in rates)} Hz); "
                        "give a common rate (data.sfreq).")
    target = float(rates[0] if sfreq is None else sfreq)

    def at_target(label: str) -> np.ndarray:
        signal, rate = read[label]
        return signal if abs(rate - target) <= 1e-6 else _resample(signal, rate, target)

    out = []
    for _, plus, minus in resolved:
        x = at_target(plus)
        if minus is not None:
            ref = at_target(minus)
            n = min(len(x), len(ref))
            x = x[:n] - ref[:n]
        out.append(x)
    n = min(len(x) for x in out)
    data = out[0][None, :n] if len(out) == 1 else np.stack([x[:n] for x in out])
    return _signals(data, resolved, rates, target)


def _signals(data: np.ndarray, resolved, rates: Sequence[float], target: float | None = None) -> Signals:
    return Signals(
        data=data,
        sfreq=float(rates[0] if target is None else target),
        names=[spec.name for spec, _, _ in resolved],
        labels=[plus if minus is None else f"{plus} - {minus}" for _, plus, minus in resolved],
        source_sfreq=[float(r) for r in rates],
    )


def _rows_at_target(layout: _EdfLayout | None, resolved, sfreq: float | None) -> np.ndarray | None:
    """An empty ``(n_chans, n_samples)`` float32 array when the fast reader can decode every channel straight
    into its row: two or more plain (not derived, distinct) channels with the same number of samples per
    record, at ``sfreq`` (or at one common rate when ``sfreq`` is None); else ``None``."""
    if layout is None or len(resolved) < 2 or any(minus is not None for _, _, minus in resolved):
        return None
    labels = [plus for _, plus, _ in resolved]
    if len(set(labels)) != len(labels) or any(label not in layout.labels for label in labels):
        return None
    per_record = {int(layout.n_samples[layout.labels.index(label)]) for label in labels}
    if len(per_record) != 1:
        return None
    n_ch = per_record.pop()
    if sfreq is not None and abs(n_ch / layout.record_sec - float(sfreq)) > 1e-6:
        return None
    return np.empty((len(labels), layout.n_records * n_ch), dtype=np.float32)


def locate_channels(
    path: str | Path, channels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> list[tuple[str, str, float]]:
    """``(name, file label, rate in Hz)`` of every channel of ``channels`` in a PSG file, read from its header
    only (a derivation's label is ``"PLUS - MINUS"``, its rate the lower of the two).

    Raises
    ------
    DataError
        As :func:`read_channels` does for a missing file or channel.
    """
    path = Path(path)
    layout, resolved = _locate(path, channels, aliases)
    if layout is not None:
        rates = {label: float(n / layout.record_sec) for label, n in zip(layout.labels, layout.n_samples)}
    else:
        rates = {}
    out = []
    for spec, plus, minus in resolved:
        rate = min(rates.get(plus, np.nan), rates.get(minus, np.inf) if minus else np.inf) if rates else np.nan
        out.append((spec.name, plus if minus is None else f"{plus} - {minus}", float(rate)))
    return out


_CHANNEL_HINT = ("Set data.channels to channels of this file, or add the file's label to data.channel_aliases "
                 "({canonical: [alias, ...]}).")


def _locate(path: Path, channels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None, hint: str | None = None):
    """The file's layout (``None``: MNE reads it) and the labels to read for each channel."""
    from dsn.data.channels import resolve_channels

    check_edf_size(path)
    layout = _edf_layout(path)
    names = layout.names if layout is not None else list(open_raw(path).ch_names)
    try:
        return layout, resolve_channels(list(channels), names, aliases)
    except ValueError as e:
        raise DataError(f"{path}: {e}. {hint or _CHANNEL_HINT}") from None


def is_bdf(path: str | Path) -> bool:
    """Whether ``path`` is a BDF file (BioSemi's 24-bit variant of EDF: version field ``0xFF "BIOSEMI"``)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == _BDF_VERSION
    except OSError:
        return False


def open_raw(path: str | Path):
    """``mne.io.read_raw_edf`` (or ``read_raw_bdf`` for a BDF file) without loading the data; a
    :class:`DataError` naming the file when MNE cannot read it."""
    import mne

    bdf = is_bdf(path)
    try:
        reader = mne.io.read_raw_bdf if bdf else mne.io.read_raw_edf
        return reader(path, preload=False, verbose="error")
    except Exception as e:  # MNE raises many types for broken files
        kind = "BDF" if bdf else "EDF"
        raise DataError(f"{path}: MNE could not read this {kind} file ({type(e).__name__}: {e}).") from None



def _read_channels_mne(path: Path, labels: list[str]) -> dict[str, tuple[np.ndarray, float]]:
    """Channels at the file's fastest rate through MNE (the fallback of :func:`read_channels`)."""
    raw = open_raw(path)
    raw.pick(labels).load_data(verbose="error")
    # MNE returns volts; Sleep-EDF tools (and the official DeepSleepNet data) use microvolts.
    data = raw.get_data(picks=labels)
    sfreq = float(raw.info["sfreq"])
    return {label: ((data[i] * 1e6).astype(np.float32), sfreq) for i, label in enumerate(labels)}


#: Largest up/down factor resampled in one polyphase step (the filter has about 20 x that many taps).
_MAX_POLY_FACTOR = 5000


def _resample(signal: np.ndarray, sfreq_from: float, sfreq_to: float) -> np.ndarray:
    """Resample to ``sfreq_to``: exactly ``round(n * sfreq_to / sfreq_from)`` samples, float32.

    Polyphase (:func:`scipy.signal.resample_poly`) by the exact ratio of the two rates. A ratio whose terms
    exceed :data:`_MAX_POLY_FACTOR` (e.g. 100 / 511.87 Hz) is resampled in the frequency domain
    (:func:`scipy.signal.resample`) instead of by an approximate ratio, which would shorten or stretch a
    night by seconds.
    """
    from fractions import Fraction

    from scipy.signal import resample, resample_poly

    ratio = Fraction(sfreq_to).limit_denominator(10**6) / Fraction(sfreq_from).limit_denominator(10**6)
    n_out = int(round(len(signal) * sfreq_to / sfreq_from))
    x = np.asarray(signal, dtype=np.float64)
    if max(ratio.numerator, ratio.denominator) > _MAX_POLY_FACTOR:
        return resample(x, n_out).astype(np.float32)
    out = resample_poly(x, ratio.numerator, ratio.denominator)
    return out[:n_out].astype(np.float32)


#: Physical dimensions MNE reads as microvolts / millivolts (anything else is taken as volts).
_MICROVOLT_UNITS = ("\u03bcV", "\u00b5V", "\x83\xcaV", "uV")
_TAL_NAMES = ("EDF Annotations", "BDF Annotations")

#: The version field of a BDF file (an EDF file's is ``"0"`` followed by spaces).
_BDF_VERSION = b"\xffBIOSEMI"
_STIM_NAMES = ("status", "trigger")  # MNE's automatic stim-channel names


@dataclass(frozen=True)
class _EdfLayout:
    """The header of a plain EDF file, as far as :func:`_read_channel` needs it (MNE's reading of each field)."""

    header_bytes: int
    n_records: int
    record_sec: float
    labels: list[str]  # every signal, annotation channels included
    names: list[str]  # the channel names MNE lists (annotation channels left out)
    units: list[str]
    physical_min: np.ndarray
    physical_max: np.ndarray
    digital_min: np.ndarray
    digital_max: np.ndarray
    n_samples: np.ndarray  # samples per data record, per signal


def _edf_text(field: bytes) -> str:
    return field.decode("latin-1").split("\x00")[0]


def _edf_layout(path: Path) -> _EdfLayout | None:
    """Parse ``path``'s header; ``None`` unless it is a plain continuous 16-bit EDF the fast reader handles
    exactly like MNE (then MNE reads it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            n = int(_edf_text(head[252:256]))
            sig = f.read(256 * n)
        if n < 1 or len(sig) < 256 * n or head[:8].strip() != b"0" or head[192:197] == b"EDF+D":
            return None
        starts = np.cumsum([0, 16, 80, 8, 8, 8, 8, 8, 80, 8]) * n

        def field(k: int, width: int) -> list[bytes]:
            return [sig[starts[k] + width * i : starts[k] + width * (i + 1)] for i in range(n)]

        def numbers(k: int) -> np.ndarray:
            return np.array([float(_edf_text(b).replace(",", ".")) for b in field(k, 8)])

        labels = [b.strip().decode("latin-1") for b in field(0, 16)]
        layout = _EdfLayout(
            header_bytes=int(_edf_text(head[184:192])),
            n_records=int(_edf_text(head[236:244])),
            record_sec=float(_edf_text(head[244:252])),
            labels=labels,
            names=[name for name in labels if name not in _TAL_NAMES],
            units=[b.strip().decode("latin-1") for b in field(2, 8)],
            physical_min=numbers(3),
            physical_max=numbers(4),
            digital_min=numbers(5),
            digital_max=numbers(6),
            n_samples=np.array([int(_edf_text(b)) for b in field(8, 8)], dtype=np.int64),
        )
    except (OSError, ValueError):
        return None
    names = layout.names
    if (
        layout.header_bytes != 256 * (n + 1)
        or layout.n_records < 1
        or not layout.record_sec > 0
        or (layout.n_samples < 1).any()
        or not names
        or len(set(names)) != len(names)  # MNE renames duplicates
        or any(name.lower() in _STIM_NAMES for name in names)  # MNE treats these as stim channels
        or path.stat().st_size != layout.header_bytes + 2 * layout.n_records * int(layout.n_samples.sum())
    ):
        return None
    return layout


def _read_channel(path: Path, layout: _EdfLayout, channel: str,
                  out: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """Decode one channel's samples from the data records at the channel's own rate, in microvolts, with MNE's
    arithmetic (``((d * cal + offset) * unit) * 1e6`` in float64, then float32: a channel at the file's fastest
    rate is exactly what MNE returns; MNE upsamples slower ones); ``None`` when MNE must read it. ``out``: a
    float32 array of the channel's ``n_records * n_samples`` samples to decode into (a row of a multi-channel
    array, so that the channels are not copied into one afterwards)."""
    i = layout.labels.index(channel)
    n_ch = int(layout.n_samples[i])
    d_range = layout.digital_max[i] - layout.digital_min[i]
    p_range = layout.physical_max[i] - layout.physical_min[i]
    if not np.isfinite(d_range) or d_range == 0 or p_range == 0:
        return None  # MNE patches zero ranges
    cal = p_range / d_range
    offset = layout.physical_min[i] - layout.digital_min[i] * cal
    unit = layout.units[i]
    gain = 1e-6 if unit in _MICROVOLT_UNITS else 1e-3 if unit == "mV" else 1.0

    table, scale, shift, exact_affine = _sample_scaling(cal, offset, gain)
    record = int(layout.n_samples.sum())
    first = int(layout.n_samples[:i].sum())
    out = np.empty((layout.n_records, n_ch), dtype=np.float32) if out is None else out.reshape(layout.n_records, n_ch)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        _decode(buf, layout.header_bytes, (layout.n_records, record), first, out, table, scale, shift, exact_affine)
    return out.reshape(-1), float(n_ch / layout.record_sec)


def _sample_scaling(cal: float, offset: float, gain: float) -> tuple[np.ndarray, float, float, bool]:
    """How to turn int16 samples into MNE's microvolts, exactly.

    Returns the value of every possible sample (indexed by the sample's bits as uint16), computed with
    MNE's operations in MNE's order (``((d * cal + offset) * gain) * 1e6`` in float64, then float32), and
    one float64 multiply-add ``d * scale + shift`` with a flag saying whether it gives the same float32
    for all 65536 samples (it nearly always does; when it does not, the table is used).
    """
    codes = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.float64)  # float64 is exact for int16
    table = codes * cal
    table += offset
    table *= gain
    table = (table * 1e6).astype(np.float32)
    scale, shift = float(cal * gain * 1e6), float(offset * gain * 1e6)
    exact_affine = bool(np.array_equal((codes * scale + shift).astype(np.float32), table))
    return table, scale, shift, exact_affine


def _decode(
    buf: mmap.mmap, offset: int, shape: tuple[int, int], first: int, out: np.ndarray,
    table: np.ndarray, scale: float, shift: float, exact_affine: bool,
) -> None:
    """Decode samples ``first : first + out.shape[1]`` of every record of the int16 records in ``buf`` into ``out``.

    All views of ``buf`` are local, so they are gone when this returns and ``buf`` can be closed.
    """
    n_records, n_ch = out.shape
    samples = np.frombuffer(buf, dtype="<i2", count=shape[0] * shape[1], offset=offset).reshape(shape)
    samples = samples[:, first : first + n_ch]
    rows = max(1, 2**16 // n_ch)  # work in cache-sized blocks of records
    tmp = np.empty((min(rows, n_records), n_ch))
    for r in range(0, n_records, rows):
        block = samples[r : r + rows]
        if exact_affine:
            t = tmp[: len(block)]
            np.multiply(block, scale, out=t, dtype=np.float64)
            np.add(t, shift, out=out[r : r + rows])
        else:
            np.take(table, block.view(np.uint16), out=out[r : r + rows])


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

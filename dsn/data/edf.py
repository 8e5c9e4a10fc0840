"""EDF and BDF files: the one header reader (:func:`read_header`) and the signal channels (:func:`read_channels`).

Nothing here knows about hypnograms or data sets (:mod:`dsn.data.hypnograms`, :mod:`dsn.data.datasets` build on
this module). Errors are :class:`~dsn.data.errors.DataError` with the file, the value and a hint in the message.
"""

from __future__ import annotations

import datetime as _dt
import mmap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsn.data.errors import DataError

__all__ = ["DataError", "EdfHeader", "NotEdfError", "Signals", "locate_channels", "open_raw", "read_channels",
           "read_eeg", "read_header"]

#: Physical dimensions MNE reads as microvolts / millivolts (anything else is taken as volts).
_MICROVOLT_UNITS = ("\u03bcV", "\u00b5V", "\x83\xcaV", "uV")
_TAL_NAMES = ("EDF Annotations", "BDF Annotations")

#: The version field of a BDF file (an EDF file's is ``"0"`` followed by spaces).
_BDF_VERSION = b"\xffBIOSEMI"
_STIM_NAMES = ("status", "trigger")  # MNE's automatic stim-channel names
_TRUNCATED_HINT = "Re-download or re-create the file (a partial download leaves a truncated file)."


class NotEdfError(DataError):
    """A file that does not start with an EDF or BDF header (its version field is neither)."""


@dataclass(frozen=True)
class EdfHeader:
    """The header of an EDF/EDF+ or BDF file (:func:`read_header`), each field as MNE reads it.

    Attributes
    ----------
    path : Path
    bdf : bool
        A BDF file (24-bit samples) rather than EDF (16-bit).
    discontinuous : bool
        An EDF+D file (data records with gaps).
    header_bytes, n_records : int
        The header's length and the number of data records (``-1``: unknown, as a recorder still writing says).
    record_sec : float
        The data record duration in seconds (NaN when the field is unreadable).
    labels : tuple of str
        Every signal's label, annotation channels included.
    units : tuple of str
    physical_min, physical_max, digital_min, digital_max : tuple of float
        Per signal (NaN where unreadable).
    n_samples : tuple of int
        Samples per data record, per signal.
    start : datetime or None
        When the recording starts, a naive wall-clock time (EDF has no time zone): the date of the EDF+
        recording field (four-digit year) when it has one, else the header's ``dd.mm.yy`` (1985-2084), with
        its ``hh.mm.ss``; ``None`` when unreadable.
    file_bytes : int
        The file's size.
    """

    path: Path
    bdf: bool
    discontinuous: bool
    header_bytes: int
    n_records: int
    record_sec: float
    labels: tuple[str, ...]
    units: tuple[str, ...]
    physical_min: tuple[float, ...]
    physical_max: tuple[float, ...]
    digital_min: tuple[float, ...]
    digital_max: tuple[float, ...]
    n_samples: tuple[int, ...]
    start: _dt.datetime | None
    file_bytes: int

    @property
    def names(self) -> list[str]:
        """The signals' labels without the annotation channels (MNE's channel names when they are distinct)."""
        return [label for label in self.labels if label not in _TAL_NAMES]

    @property
    def rates(self) -> dict[str, float]:
        """``{label: Hz}`` of the signals (annotation channels left out)."""
        return {lab: k / self.record_sec for lab, k in zip(self.labels, self.n_samples) if lab not in _TAL_NAMES}

    @property
    def duration(self) -> float:
        """Seconds of signal the header announces (``n_records * record_sec``)."""
        return self.n_records * self.record_sec

    @property
    def fast(self) -> bool:
        """Whether :func:`read_channels` decodes this file itself: a plain continuous 16-bit EDF whose every field
        it reads exactly as MNE does (anything else is read through MNE)."""
        names = self.names
        numbers = self.physical_min + self.physical_max + self.digital_min + self.digital_max
        return (
            not self.bdf
            and not self.discontinuous
            and self.header_bytes == 256 * (len(self.labels) + 1)
            and self.n_records >= 1
            and self.record_sec > 0
            and min(self.n_samples) >= 1
            and bool(names)
            and len(set(names)) == len(names)  # MNE renames duplicates
            and not any(name.lower() in _STIM_NAMES for name in names)  # MNE treats these as stim channels
            and bool(np.isfinite(numbers).all())
            and self.file_bytes == self.header_bytes + 2 * self.n_records * sum(self.n_samples)
        )


def _edf_text(field: bytes) -> str:
    return field.decode("latin-1").split("\x00")[0]


def _number(field: bytes) -> float:
    """A header number as MNE reads it (``,`` as decimal point); NaN when unreadable."""
    try:
        return float(_edf_text(field).replace(",", "."))
    except ValueError:
        return float("nan")


def _start(head: bytes) -> _dt.datetime | None:
    """The start date and time of a header (see :attr:`EdfHeader.start`)."""
    try:
        h, mi, s = (int(v) for v in head[176:184].decode("ascii").split("."))
        rec = head[88:168].decode("latin-1").rstrip().split(" ")
        if len(rec) == 5:  # EDF+: "Startdate 23-JUL-1989 ...", the year in four digits
            try:
                day = _dt.datetime.strptime(rec[1], "%d-%b-%Y")
                return day.replace(hour=h, minute=mi, second=s)
            except ValueError:
                pass
        dd, mm, yy = (int(v) for v in head[168:176].decode("ascii").split("."))
        return _dt.datetime(2000 + yy if yy < 85 else 1900 + yy, mm, dd, h, mi, s)
    except (ValueError, UnicodeDecodeError):
        return None


def read_header(path: str | Path) -> EdfHeader:
    """Read and check the header of an EDF/EDF+ or BDF file: the one place dsn parses one.

    The file must be complete: as long as its header says (a partial download is refused).

    Raises
    ------
    NotEdfError
        If the file does not start with an EDF or BDF version field.
    DataError
        If the file is missing, its header unreadable, or the file truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        bdf = head[:8] == _BDF_VERSION
        if len(head) < 256 or not (head[:8].strip() == b"0" or bdf):
            raise NotEdfError(f"{path}: not a readable EDF/BDF file (no EDF or BDF header). {_TRUNCATED_HINT}")
        try:
            n_header, n_records, n = (int(head[a:b].decode("ascii").strip()) for a, b in ((184, 192), (236, 244), (252, 256)))
            sig = f.read(n * 256)
            if len(sig) < n * 256:
                raise ValueError("header cut short")
            starts = np.cumsum([0, 16, 80, 8, 8, 8, 8, 8, 80, 8]) * n

            def field(k: int, width: int = 8) -> list[bytes]:
                return [sig[starts[k] + width * i : starts[k] + width * (i + 1)] for i in range(n)]

            samples = tuple(int(b.decode("ascii").strip()) for b in field(8))
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable EDF/BDF file ({e}). {_TRUNCATED_HINT}") from None
    expected = n_header + max(n_records, 0) * sum(samples) * (3 if bdf else 2)
    if n_records >= 0 and size < expected:
        raise DataError(
            f"{path}: truncated {'BDF' if bdf else 'EDF'} file: {size} bytes but its header announces {n_records} data "
            f"records ({expected} bytes). {_TRUNCATED_HINT}"
        )
    return EdfHeader(
        path=path, bdf=bdf, discontinuous=head[192:197] == b"EDF+D", header_bytes=n_header, n_records=n_records,
        record_sec=_number(head[244:252]), labels=tuple(b.strip().decode("latin-1") for b in field(0, 16)),
        units=tuple(b.strip().decode("latin-1") for b in field(2)),
        physical_min=tuple(_number(b) for b in field(3)), physical_max=tuple(_number(b) for b in field(4)),
        digital_min=tuple(_number(b) for b in field(5)), digital_max=tuple(_number(b) for b in field(6)),
        n_samples=samples, start=_start(head), file_bytes=size,
    )


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
    header, resolved = _locate(path, channels, aliases, hint)
    layout = header if header.fast else None
    rows = _rows_at_target(layout, resolved, sfreq)
    if rows is not None:  # several plain channels at the target rate: decoded straight into one array
        rates = _read_into_rows(layout, resolved, rows)
        if rates is not None:
            return _signals(rows, resolved, rates)
    read = _read_labels(header, [label for _, plus, minus in resolved for label in (plus, minus) if label])
    rates = [min(read[plus][1], read[minus][1]) if minus else read[plus][1] for _, plus, minus in resolved]
    if sfreq is None and len(set(rates)) > 1:
        raise DataError(f"{path}: the channels have different rates ({', '.join(f'{r:g}' for r in rates)} Hz); "
                        "give a common rate (data.sfreq).")
    target = float(rates[0] if sfreq is None else sfreq)
    return _signals(_at_rate(read, resolved, target), resolved, rates, target)


def _read_into_rows(layout: EdfHeader, resolved, rows: np.ndarray) -> list[float] | None:
    """Decode every channel of ``resolved`` into its row of ``rows``; their rates, or ``None`` when one channel
    needs MNE."""
    rates = []
    for (_, plus, _), row in zip(resolved, rows):
        fast = _read_channel(layout, plus, row)
        if fast is None:
            return None
        rates.append(fast[1])
    return rates


def _read_labels(header: EdfHeader, labels: Sequence[str]) -> dict[str, tuple[np.ndarray, float]]:
    """``{label: (signal, rate)}`` of the file labels, each at its own rate where the fast reader can decode it,
    the others through MNE (at the file's fastest rate)."""
    wanted = list(dict.fromkeys(labels))
    read: dict[str, tuple[np.ndarray, float]] = {}
    if header.fast:
        for label in wanted:
            fast = _read_channel(header, label)
            if fast is not None:
                read[label] = fast
    missing = [label for label in wanted if label not in read]
    if missing:
        read.update(_read_channels_mne(header, missing))
    return read


def _at_rate(read: dict[str, tuple[np.ndarray, float]], resolved, target: float) -> np.ndarray:
    """``(n_chans, n_samples)``: each channel (a derivation: plus - minus) at ``target`` Hz, cut to the shortest."""

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
    return out[0][None, :n] if len(out) == 1 else np.stack([x[:n] for x in out])


def _signals(data: np.ndarray, resolved, rates: Sequence[float], target: float | None = None) -> Signals:
    return Signals(
        data=data,
        sfreq=float(rates[0] if target is None else target),
        names=[spec.name for spec, _, _ in resolved],
        labels=[plus if minus is None else f"{plus} - {minus}" for _, plus, minus in resolved],
        source_sfreq=[float(r) for r in rates],
    )


def _rows_at_target(layout: EdfHeader | None, resolved, sfreq: float | None) -> np.ndarray | None:
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
    header, resolved = _locate(Path(path), channels, aliases)
    rates = {label: float(n / header.record_sec) for label, n in zip(header.labels, header.n_samples)} if header.fast else {}
    out = []
    for spec, plus, minus in resolved:
        rate = min(rates.get(plus, np.nan), rates.get(minus, np.inf) if minus else np.inf) if rates else np.nan
        out.append((spec.name, plus if minus is None else f"{plus} - {minus}", float(rate)))
    return out


_CHANNEL_HINT = ("Set data.channels to channels of this file, or add the file's label to data.channel_aliases "
                 "({canonical: [alias, ...]}).")


def _locate(path: Path, channels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None, hint: str | None = None):
    """The file's header and the labels to read for each channel (MNE's channel names when it reads the file)."""
    from dsn.data.channels import resolve_channels

    header = read_header(path)
    names = header.names if header.fast else list(open_raw(path, header).ch_names)
    try:
        return header, resolve_channels(list(channels), names, aliases)
    except ValueError as e:
        _refuse_duplicate_label(header, channels, aliases)
        raise DataError(f"{path}: {e}. {hint or _CHANNEL_HINT}") from None


def _refuse_duplicate_label(header: EdfHeader, channels: Sequence[str], aliases) -> None:
    """Raise the real cause when a channel asked for is a label the file has twice (MNE renames such labels
    ``LABEL-0``, ``LABEL-1``, so the plain label is not found)."""
    from dsn.data.channels import resolve_channels

    names = header.names
    twice = {label for label in names if names.count(label) > 1}
    if not twice:
        return
    for channel in channels:
        try:
            ((_, plus, minus),) = resolve_channels([channel], list(dict.fromkeys(names)), aliases)
        except ValueError:
            continue
        label = plus if plus in twice else minus
        if label in twice:
            where = [str(i + 1) for i, name in enumerate(names) if name == label]
            raise DataError(
                f"{header.path}: channel '{channel}': the label '{label}' appears {len(where)} times in this file "
                f"(signals {', '.join(where)}). Choose one as MNE names them, '{label}-0' or '{label}-1' "
                "(data.channels / --channel), or rename one of them in the file."
            )


def open_raw(path: str | Path, header: EdfHeader | None = None):
    """``mne.io.read_raw_edf`` (or ``read_raw_bdf`` for a BDF file) without loading the data; a
    :class:`DataError` naming the file when MNE cannot read it. ``header``: the file's, when already read."""
    import mne

    bdf = (header or read_header(path)).bdf
    try:
        reader = mne.io.read_raw_bdf if bdf else mne.io.read_raw_edf
        return reader(path, preload=False, verbose="error")
    except Exception as e:  # MNE raises many types for broken files
        kind = "BDF" if bdf else "EDF"
        raise DataError(f"{path}: MNE could not read this {kind} file ({type(e).__name__}: {e}).") from None


def _read_channels_mne(header: EdfHeader, labels: list[str]) -> dict[str, tuple[np.ndarray, float]]:
    """Channels at the file's fastest rate through MNE (the fallback of :func:`read_channels`)."""
    raw = open_raw(header.path, header)
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


def _read_channel(layout: EdfHeader, channel: str,
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
    record = int(sum(layout.n_samples))
    first = int(sum(layout.n_samples[:i]))
    out = np.empty((layout.n_records, n_ch), dtype=np.float32) if out is None else out.reshape(layout.n_records, n_ch)
    with open(layout.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
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

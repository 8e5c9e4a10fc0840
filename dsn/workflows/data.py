"""``dsn data DIR``: what ``dsn fit`` would use from a data folder, in seconds, without training.

For every recording the data-set profile pairs with a hypnogram: subject, night, hours, the channels found
and their rates (or only those asked for), and the stage counts of its hypnogram on the recording's
epoch grid. Every problem that would stop ``dsn fit`` (a recording without hypnogram, an unknown label, a
hypnogram that does not fit its recording, a missing channel) is one line; the command exits non-zero
when there is one. Only file headers and hypnograms are read (no signal, no cache entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsn.data.labels import STAGES

if TYPE_CHECKING:
    from dsn.data.edf import EdfHeader


@dataclass
class RecordingReport:
    """One paired recording: header facts and stage counts (``stages`` empty when its hypnogram failed)."""

    name: str
    subject: str
    night: int
    psg: str
    hypnogram: str
    hours: float = float("nan")
    channels: dict[str, float] = field(default_factory=dict)  # label -> Hz (all, or those asked for)
    stages: dict[str, int] = field(default_factory=dict)
    unscored: int = 0


@dataclass
class DataReport:
    """What :func:`inspect` found; ``problems`` would stop ``dsn fit``, ``notes`` would not."""

    data_dir: str
    dataset: str
    profile: str
    channels: list[str] | None
    recordings: list[RecordingReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.recordings})

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "subjects": self.subjects}


def edf_header(path: Path) -> tuple[float, dict[str, float]]:
    """Duration in seconds and ``{label: Hz}`` of an EDF or BDF file's signals (annotation channels left out)."""
    header = _header(path)
    return header.duration, header.rates


def _header(path: Path) -> EdfHeader:
    """:func:`dsn.data.edf.read_header`, refusing a header without a usable data record duration."""
    from dsn.data.edf import read_header
    from dsn.data.errors import DataError

    header = read_header(path)
    if not header.record_sec > 0:
        raise DataError(f"{path}: could not read the EDF header (data record duration "
                        f"{header.record_sec!r} s). Re-create the file with a valid header.")
    return header


def inspect(
    data_dir: str | Path,
    dataset: str = "sleep-edf",
    channels: Sequence[str] | None = None,
    epoch_sec: float = 30.0,
    length_mismatch: str = "raise",
) -> DataReport:
    """Pair, read headers and hypnograms, and collect every problem of a data folder (see the module docstring).

    Raises
    ------
    DataError
        Only if the folder does not exist or the profile cannot be loaded (everything else is a problem line).
    """
    from dsn.data import hypnograms
    from dsn.data.channels import ChannelLookupError, resolve_channels
    from dsn.data.datasets import scan
    from dsn.data.errors import DataError
    from dsn.data.labels import IGNORE_INDEX

    found = scan(data_dir, dataset)
    prof = found.profile
    rep = DataReport(str(data_dir), dataset, prof.source, list(channels) if channels else None,
                     problems=list(found.problems), notes=list(found.notes))
    for f in found.recordings:
        r = RecordingReport(f.name, f.subject, f.night, str(f.psg), str(f.hypnogram))
        rep.recordings.append(r)
        try:
            header = _header(f.psg)
            duration, rates = header.duration, header.rates
        except DataError as e:
            rep.problems.append(str(e))
            continue
        r.hours = duration / 3600
        if channels:
            for ch in channels:
                try:
                    (_, plus, minus), = resolve_channels([ch], list(rates), prof.channel_aliases)
                except (ChannelLookupError, ValueError) as e:
                    rep.problems.append(f"{f.psg}: {e}. Set --channels to channels of this file, or add an alias "
                                        f"to the profile's channel_aliases ({prof.source}).")
                    continue
                label = plus if minus is None else f"{plus} - {minus}"
                r.channels[label] = min(rates[plus], rates[minus]) if minus else rates[plus]
        else:
            r.channels = rates
        try:
            hyp, codes = hypnograms.read(f.hypnogram, prof)
            y = hypnograms.place(hyp, codes, int(duration // epoch_sec), epoch_sec, header.start,
                                 length_mismatch, prof.epoch_sec, str(f.psg))
        except DataError as e:
            rep.problems.append(str(e))
            continue
        r.stages = {s: int((y == i).sum()) for i, s in enumerate(STAGES)}
        r.unscored = int(((y == IGNORE_INDEX) | (y < 0)).sum())
        if not any(r.stages[s] for s in STAGES[1:]):
            rep.problems.append(f"{f.hypnogram}: no sleep epochs (N1, N2, N3, REM), nothing to train on. "
                                "Check the hypnogram file, or exclude this recording.")
    return rep


def format_report(rep: DataReport) -> str:
    """The report as text: one row per recording, totals, then one line per problem and note."""
    head = f"{'recording':<28} {'subject':<14} {'night':>5} {'hours':>6}  " + " ".join(f"{s:>5}" for s in STAGES)
    lines = [f"{rep.data_dir}: data set '{rep.dataset}' ({rep.profile})", head + "  unscored  channels"]
    for r in rep.recordings:
        counts = " ".join(f"{r.stages.get(s, 0):>5}" if r.stages else f"{'-':>5}" for s in STAGES)
        chans = ", ".join(f"{k} {v:g} Hz" for k, v in r.channels.items())
        lines.append(f"{r.name:<28} {r.subject:<14} {r.night:>5} {r.hours:>6.2f}  {counts}  {r.unscored:>8}  {chans}")
    total = {s: sum(r.stages.get(s, 0) for r in rep.recordings) for s in STAGES}
    hours = float(np.nansum([r.hours for r in rep.recordings])) if rep.recordings else 0.0
    lines.append(f"{len(rep.recordings)} recordings, {len(rep.subjects)} subjects, {hours:.1f} h; "
                 + ", ".join(f"{s} {n}" for s, n in total.items()))
    if rep.problems:
        lines.append(f"{len(rep.problems)} problem(s) that would stop dsn fit:")
        lines += [f"  {p}" for p in rep.problems]
    else:
        lines.append("no problems: dsn fit can use this folder.")
    lines += [f"  note: {n}" for n in rep.notes]
    return "\n".join(lines)


def build_parser():
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="dsn data", description="List what dsn fit would use from a data folder (no training).")
    p.add_argument("data_dir", type=str, help="data folder (searched recursively)")
    p.add_argument("--dataset", "--data.dataset", type=str, default="sleep-edf",
                   help="data-set profile: sleep-edf, nsrr, bids, generic (conf/datasets/) or a YAML path")
    p.add_argument("--channels", "--data.channels", type=list[str] | None, default=None,
                   help="channels to look for, as data.channels of dsn fit (aliases, NAME=PLUS-MINUS derivations), "
                        "e.g. '[EEG, EOG(L)]'; default: list every channel")
    p.add_argument("--epoch_sec", "--data.epoch_sec", type=float, default=30.0, help="sleep-epoch length, seconds")
    p.add_argument("--length_mismatch", "--data.length_mismatch", type=str, default="raise",
                   help="raise or crop: as data.length_mismatch of dsn fit")
    p.add_argument("--json", type=str | None, default=None, help="also write the report as JSON to this file")
    return p


def parse(argv: Sequence[str]):
    return build_parser().parse_args(list(argv))


def run(a) -> DataReport:
    """``dsn data``: inspect the folder, and write the JSON report if asked (the CLI prints :func:`render`)."""
    import json

    rep = inspect(a.data_dir, a.dataset, a.channels, a.epoch_sec, a.length_mismatch)
    if a.json:
        Path(a.json).write_text(json.dumps(rep.as_dict(), indent=1))
    return rep


def render(rep: DataReport):
    """The report; with problems, an error line on stderr and exit status 1."""
    from dsn.workflows.cli_args import Output

    out = Output().out(format_report(rep))
    if rep.problems:
        out.err(f"dsn data: error: {len(rep.problems)} problem(s) would stop dsn fit (listed above)")
        out.code = 1
    return out

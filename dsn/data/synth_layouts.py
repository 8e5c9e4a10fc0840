"""Synthetic data sets in the layouts of other data sets (NSRR, BIDS, a generic lab's EDF + CSV).

The signals and hypnograms are those of :mod:`dsn.data.synth` (same stage model, same stage signatures);
what changes is what real data sets of each kind look like on disk: file names and folders, channel names,
sampling rates and the hypnogram format. Each layout is read by the data-set profile of the same name
(``conf/datasets/<layout>.yaml``).

``nsrr``
    SHHS-like: ``polysomnography/edfs/shhs{visit}/shhs{visit}-{nsrrid}.edf`` with ``EEG`` (C4-A1) and
    ``EEG(sec)`` (C3-A2) at 125 Hz, ``EOG(L)``/``EOG(R)`` at 50 Hz, and
    ``polysomnography/annotations-events-nsrr/shhs{visit}/shhs{visit}-{nsrrid}-nsrr.xml`` (``ScoredEvent``
    stages in AASM: ``Stage 3 sleep|3`` for S3 and S4, plus a few arousal events). A second night is visit 2
    of the same nsrrid.
``bids``
    ``sub-XX/ses-YY/eeg/sub-XX_ses-YY_task-sleep_eeg.edf`` (``Fpz-Cz``, ``Pz-Oz``, ``EOG`` at 128 Hz) with
    ``*_events.tsv`` (onset, duration, ``trial_type`` in AASM: ``W``, ``N1``, ``N2``, ``N3``, ``R``), plus
    ``dataset_description.json`` and ``*_channels.tsv``.
``generic``
    ``sNN_night{N}.edf`` (``Fpz-Cz``, ``EOG`` at 100 Hz) with ``sNN_night{N}.csv``: a header ``epoch,stage``
    and one AASM label per 30-s epoch.
``sleep-edf``
    :func:`dsn.data.synth.write_dataset`.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from dsn.data.synth import EPOCH_SEC, generate_hypnogram, generate_signals, night_streams, write_dataset

LAYOUTS = ("sleep-edf", "nsrr", "bids", "generic")

_AASM = {"Sleep stage W": "W", "Sleep stage 1": "N1", "Sleep stage 2": "N2", "Sleep stage 3": "N3",
         "Sleep stage 4": "N3", "Sleep stage R": "R", "Sleep stage ?": "n/a", "Movement time": "n/a"}
_NSRR = {"Sleep stage W": "Wake|0", "Sleep stage 1": "Stage 1 sleep|1", "Sleep stage 2": "Stage 2 sleep|2",
         "Sleep stage 3": "Stage 3 sleep|3", "Sleep stage 4": "Stage 3 sleep|3", "Sleep stage R": "REM sleep|5",
         "Sleep stage ?": "Unscored|9", "Movement time": "Movement|6"}


def _night(subject: int, night: int, hours: float, seed: int, sfreq: float):
    """Stages (R&K, one per 30-s epoch), signals (volts) at ``sfreq``, start time and sex/age of one night."""
    n_ep, subj_rng, night_rng, prof = night_streams(seed, subject, night, hours)
    first = _dt.date(2000, 1, 1) + _dt.timedelta(days=int(subj_rng.integers(0, 6 * 365)))
    prof_n = prof.for_night(night_rng)
    stages = generate_hypnogram(n_ep, night_rng, prof_n)
    sig = generate_signals(stages, sfreq, night_rng, prof_n)
    start = _dt.datetime.combine(first + _dt.timedelta(days=night - 1), _dt.time(21, 30)) + _dt.timedelta(
        seconds=int(night_rng.integers(0, 150 * 60))
    )
    return stages, sig, start, prof


def _runs(labels: list[str]) -> list[tuple[float, float, str]]:
    out: list[list] = []
    for i, lab in enumerate(labels):
        if out and out[-1][2] == lab:
            out[-1][1] += EPOCH_SEC
        else:
            out.append([i * EPOCH_SEC, EPOCH_SEC, lab])
    return [tuple(r) for r in out]


def _down(x: np.ndarray, up: int, down: int) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(x, up, down)


def _write_edf(path: Path, channels: list[tuple[str, np.ndarray, float, tuple[float, float]]], start: _dt.datetime,
               patient_code: str) -> None:
    from edfio import Edf, EdfSignal, Patient, Recording

    signals = [
        EdfSignal(np.clip(data, *rng), fs, label=label, physical_dimension="uV", physical_range=rng)
        for label, data, fs, rng in channels
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    Edf(signals, patient=Patient(code=patient_code), recording=Recording(startdate=start.date()),
        starttime=start.time(), data_record_duration=EPOCH_SEC).write(path)


def _nsrr(out: Path, subject: int, night: int, hours: float, seed: int) -> tuple[Path, Path]:
    stages, sig, start, _ = _night(subject, night, hours, seed, 125.0)
    nsrrid = 200001 + subject
    name = f"shhs{night}-{nsrrid}"
    eog = sig["EOG horizontal"] * 1e6
    rng = np.random.default_rng([int(seed), int(subject), int(night), 7])
    eog_r = -0.9 * eog + 4.0 * rng.standard_normal(eog.size)
    edf = out / "polysomnography" / "edfs" / f"shhs{night}" / f"{name}.edf"
    _write_edf(edf, [
        ("EEG", sig["EEG Fpz-Cz"] * 1e6, 125.0, (-250.0, 250.0)),
        ("EEG(sec)", sig["EEG Pz-Oz"] * 1e6, 125.0, (-250.0, 250.0)),
        ("EOG(L)", _down(eog, 2, 5), 50.0, (-500.0, 500.0)),
        ("EOG(R)", _down(eog_r, 2, 5), 50.0, (-500.0, 500.0)),
    ], start, str(nsrrid))
    events = [("", "Recording Start Time", 0.0, len(stages) * EPOCH_SEC, start.strftime("00.00.00 %H.%M.%S"))]
    events += [("Stages|Stages", _NSRR[lab], on, du, None) for on, du, lab in _runs(stages)]
    for t in rng.uniform(0, len(stages) * EPOCH_SEC - 20, size=3):
        events.append(("Arousals|Arousals", "Arousal|Arousal ()", round(float(t), 1), 8.0, None))
    xml = ['<?xml version="1.0" encoding="UTF-8" standalone="no"?>', "<PSGAnnotation>",
           "<SoftwareVersion>Compumedics</SoftwareVersion>", "<EpochLength>30</EpochLength>", "<ScoredEvents>"]
    for kind, concept, on, du, clock in events:
        xml.append("<ScoredEvent>")
        xml.append(f"<EventType>{kind}</EventType>" if kind else "<EventType/>")
        xml.append(f"<EventConcept>{concept}</EventConcept><Start>{on:g}</Start><Duration>{du:g}</Duration>")
        if clock:
            xml.append(f"<ClockTime>{clock}</ClockTime>")
        xml.append("</ScoredEvent>")
    xml += ["</ScoredEvents>", "</PSGAnnotation>"]
    hyp = out / "polysomnography" / "annotations-events-nsrr" / f"shhs{night}" / f"{name}-nsrr.xml"
    hyp.parent.mkdir(parents=True, exist_ok=True)
    hyp.write_text("\n".join(xml) + "\n")
    return edf, hyp


def _bids(out: Path, subject: int, night: int, hours: float, seed: int) -> tuple[Path, Path]:
    stages, sig, start, prof = _night(subject, night, hours, seed, 128.0)
    sub, ses = f"{subject + 1:02d}", f"{night:02d}"
    folder = out / f"sub-{sub}" / f"ses-{ses}" / "eeg"
    base = f"sub-{sub}_ses-{ses}_task-sleep"
    edf = folder / f"{base}_eeg.edf"
    _write_edf(edf, [
        ("Fpz-Cz", sig["EEG Fpz-Cz"] * 1e6, 128.0, (-300.0, 300.0)),
        ("Pz-Oz", sig["EEG Pz-Oz"] * 1e6, 128.0, (-300.0, 300.0)),
        ("EOG", sig["EOG horizontal"] * 1e6, 128.0, (-500.0, 500.0)),
    ], start, f"sub-{sub}")
    rows = ["onset\tduration\ttrial_type"]
    rows += [f"{i * EPOCH_SEC:g}\t{EPOCH_SEC:g}\t{_AASM[lab]}" for i, lab in enumerate(stages)]
    events = folder / f"{base}_events.tsv"
    events.write_text("\n".join(rows) + "\n")
    (folder / f"{base}_channels.tsv").write_text(
        "name\ttype\tunits\tsampling_frequency\nFpz-Cz\tEEG\tuV\t128\nPz-Oz\tEEG\tuV\t128\nEOG\tEOG\tuV\t128\n"
    )
    desc = out / "dataset_description.json"
    if not desc.exists():
        desc.write_text(json.dumps({"Name": "dsn synthetic sleep", "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=1))
    return edf, events


def _generic(out: Path, subject: int, night: int, hours: float, seed: int) -> tuple[Path, Path]:
    stages, sig, start, _ = _night(subject, night, hours, seed, 100.0)
    name = f"s{subject + 1:02d}_night{night}"
    edf = out / f"{name}.edf"
    _write_edf(edf, [
        ("Fpz-Cz", sig["EEG Fpz-Cz"] * 1e6, 100.0, (-300.0, 300.0)),
        ("EOG", sig["EOG horizontal"] * 1e6, 100.0, (-500.0, 500.0)),
    ], start, name)
    csv = out / f"{name}.csv"
    csv.write_text("epoch,stage\n" + "".join(f"{i + 1},{_AASM[lab].replace('n/a', '?')}\n" for i, lab in enumerate(stages)))
    return edf, csv


_WRITERS = {"nsrr": _nsrr, "bids": _bids, "generic": _generic}


def write_layout(
    out_dir: str | Path, layout: str = "sleep-edf", *, subjects: int = 4, nights: int = 1, hours: float = 8.0,
    seed: int = 0, progress: bool = True,
) -> list[tuple[Path, Path]]:
    """Write ``subjects`` x ``nights`` synthetic recordings in ``layout`` (one of :data:`LAYOUTS`).

    Returns
    -------
    list of (Path, Path)
        ``(recording, hypnogram)`` per night, ordered by subject then night.

    Raises
    ------
    ValueError
        For an unknown layout, fewer than one subject, ``nights`` not in {1, 2} or a non-positive duration.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {list(LAYOUTS)}")
    if layout == "sleep-edf":
        return write_dataset(out_dir, subjects=subjects, nights=nights, hours=hours, seed=seed, progress=progress)
    if int(subjects) < 1 or int(nights) not in (1, 2) or not hours > 0 or int(seed) < 0:
        raise ValueError(f"subjects >= 1, nights 1 or 2, hours > 0 and seed >= 0 needed, got "
                         f"{subjects}, {nights}, {hours}, {seed}")
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, n) for s in range(int(subjects)) for n in range(1, int(nights) + 1)]
    return [_WRITERS[layout](out, s, n, hours, seed) for s, n in tqdm(jobs, desc=f"synthetic {layout}", unit="rec",
                                                                     disable=not progress)]

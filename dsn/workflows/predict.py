"""``dsn predict``: score whole nights of PSG recordings that have no hypnogram.

For each recording: read the model's channels (found by name or alias, resampled to the model's rate), cut
30-s epochs, find the sleep period with a first pass and score it as the model's training data was scored
(normalised by its own statistics, the sequence model streamed from its first epoch with the LSTM state
carried from chunk to chunk; :func:`scaled_proba`), and write, next to each other in ``--out``:

- ``<name>_hypnogram.csv``: epoch onset (s), stage, one probability column per class (calibrated with the
  model's temperature unless ``--no_calibration``), then ``confidence`` (top-class probability), ``entropy``
  (normalised to [0, 1]) and ``low_confidence`` (1 when ``confidence < --low_confidence``);
- ``<name>_hypnogram.edf``: an EDF+ hypnogram with Sleep-EDF-style annotations (``Sleep stage W/1/2/3/R``);
- ``<name>_low_confidence.edf``: an annotations-only EDF+ file, one ``Low confidence`` annotation per run of
  flagged epochs;
- ``<name>_hypnogram.png``: the hypnogram (flagged epochs shaded) with the hypnodensity beneath it;
- ``<name>_summary.json``: night statistics (YASA definitions), the model, timings, the confidence summary
  (low-confidence minutes and their stage mix), and with an expert hypnogram the agreement (per-class F1,
  kappa, confusion matrix).

The output names never end in ``-Hypnogram.edf``, so they are never mistaken for expert hypnograms by
``dsn fit``'s file discovery.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsn.errors import ConfigError
from dsn.evaluation import apply_temperature
from dsn.workflows.evaluate import trained_on_entry


def scaled_proba(scorer, x: np.ndarray, source: str = "recording", return_input: bool = False):
    """The scorer's probabilities for a whole night, normalised and scored as its training data was.

    Training normalised each recording with the statistics of its epochs trimmed to the sleep period (the
    expert's, plus ``trim_minutes`` of wake on each side) and streamed the sequence model from the first
    kept epoch. Here the model finds the sleep period itself:

    1. a first pass over the whole night normalised with its own statistics (one streaming, no offset
       averaging) gives a hypnogram, and with it the sleep period plus ``trim_minutes``
       (:func:`dsn.data.normalize.sleep_window`);
    2. the final pass scores that period as training and ``dsn evaluate`` score a labelled night: normalised
       with its own statistics, streamed from its first epoch (all ``n_offsets``). The epochs outside it,
       which the first pass scored as wake (that is what puts them outside), keep the first pass's
       probabilities. When the period is the whole night, the statistics are the first pass's: its CNN
       features, forward LSTM and first streaming are reused, and only the other offsets are computed.

    One pass when the model was trained on raw signals (``normalize: none``). ``return_input``: return
    ``(proba, the normalised epochs, period)``: the whole night scaled by the sleep period's statistics, and
    the slice of epochs the final pass scored (all of them without normalisation).
    Calibrated with the scorer's temperature, as :meth:`~dsn.models.scoring.SleepScorer.predict_proba`.
    """
    from dsn.data.normalize import normalize, sleep_window

    prep = scorer.preprocessing
    method = prep.get("normalize", "none")
    try:
        window = slice(0, len(x))
        if method == "none":
            x_in = x
            proba = scorer.raw_proba(x)
        else:
            x_in = normalize(x, method, scorer.sfreq)
            nf = scorer.night_features(x_in)
            first = scorer.proba_from_features(nf, n_offsets=1)
            window = sleep_window(first.argmax(-1), prep.get("trim_minutes"), float(prep.get("epoch_sec", 30.0)))
            if window == slice(0, len(x)):
                proba = scorer.proba_from_features(nf)  # the same statistics: nothing to recompute
            else:
                x_in = normalize(x, method, scorer.sfreq, stats_from=x[window])  # the period: normalised by itself
                proba = first.copy()
                proba[window] = scorer.raw_proba(x_in[window])
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    if scorer.temperature != 1.0:
        proba = apply_temperature(proba, scorer.temperature)
    return (proba, x_in, window) if return_input else proba


def confidence_summary(stages: np.ndarray, proba: np.ndarray, threshold: float, epoch_sec: float,
                       class_names: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The summary's ``confidence`` entry and the ``(n_epochs,)`` low-confidence flags of a scored night."""
    from dsn.evaluation import confidence

    top, ent = confidence(proba) if len(stages) else (np.zeros(0), np.zeros(0))
    flagged = top < threshold
    minutes = epoch_sec / 60.0
    return {
        "threshold": float(threshold), "mean_confidence": float(top.mean()) if top.size else float("nan"),
        "mean_entropy": float(ent.mean()) if ent.size else float("nan"),
        "low_confidence_epochs": int(flagged.sum()), "low_confidence_minutes": float(flagged.sum() * minutes),
        "low_confidence_stages_min": {c: float(((stages == i) & flagged).sum() * minutes) for i, c in enumerate(class_names)},
    }, flagged  # fmt: skip


def night_familiarity(scorer, x: np.ndarray, proba: np.ndarray) -> dict[str, Any] | None:
    """:func:`dsn.familiarity.check` of a night (``x`` the normalised epochs, ``proba`` the calibrated
    probabilities) against the scorer's training nights; None for a model saved without a description."""
    from dsn import familiarity
    from dsn.evaluation import confidence

    desc = getattr(scorer, "familiarity", None)
    if not desc or not len(x):
        return None
    feats = familiarity.night_features(x, scorer.sfreq, float(confidence(proba)[0].mean()))
    return familiarity.check(feats, desc)


def read_night(scorer, path: str | Path, channel: str | Sequence[str] | None = None):
    """The :class:`~dsn.data.psg.ScoringInput` of one recording as ``scorer`` reads it (its channels, found by
    name or alias or named by ``channel``, at its rate, cut into its epochs).

    Raises
    ------
    DataError, ConfigError
        For a file that cannot be read, lacks a channel, or whose epochs do not fit the model.
    """
    from dsn.data.psg import read_epochs
    from dsn.workflows.evaluate import channel_uses

    prep = scorer.preprocessing
    channel = source_channels(scorer, path, channel)
    uses = channel_uses(scorer.channels, channel, source=str(path), option="--channel")
    inp = read_epochs(path, [u.asked for u in uses], scorer.sfreq, float(prep.get("epoch_sec", 30.0)),
                      prep.get("channel_aliases"), prep.get("source_sfreq"))
    if inp.x.shape[-1] != scorer.n_times:
        raise ConfigError(f"{path}: epochs of {inp.x.shape[-1]} samples, but the model expects {scorer.n_times}.")
    return inp


def source_channels(scorer, path: str | Path, channel: str | Sequence[str] | None):
    """What to read for the channels of a model trained on several data sets (``preprocessing.sources``) when
    ``--channel`` names none: the model's channels when the file has them (by name or alias), else the channels of
    the first of its sources whose labels (or derivations) the file has, so a night of any source is read as it
    was in training. ``channel`` itself for any other model, or when given."""
    from dsn.data.edf import locate_channels
    from dsn.data.errors import DataError

    sources = scorer.preprocessing.get("sources")
    if channel or not sources:
        return channel
    aliases = scorer.preprocessing.get("channel_aliases")
    for chans in [None, *(list(s["channels"].values()) for s in sources)]:
        try:
            locate_channels(path, chans or scorer.channels, aliases)
            return chans
        except DataError:
            continue
    return None  # none fits: the model's own channels, whose error names what is missing


def signal_problems(inp, force: bool = False) -> list:
    """The impossible channels of a read night (:func:`dsn.data.sanity.check_signals`).

    Raises
    ------
    DataError
        Naming the file and channel, unless ``force`` (then the problems are returned, to flag every output).
    """
    from dsn.data.errors import DataError
    from dsn.data.sanity import check_signals, describe_problems

    problems = check_signals(inp.x, inp.channels)
    if problems and not force:
        raise DataError(f"{describe_problems(problems, str(inp.path))}: no sleep stage can be read from it. Check the "
                        "electrode, read another channel with --channel NAME, or score it anyway with --force (every "
                        "output is then flagged).")
    return problems


def score_recording(scorer, path: str | Path, out_dir: str | Path, channel: str | Sequence[str] | None = None,
                    hypnogram: str | Path | None = None, model_ref: str = "",
                    low_confidence: float | None = None, inp=None, force: bool = False,
                    read_s: float = 0.0, norms=None, age: float | None = None) -> dict[str, Any]:
    """Score one recording and write its five outputs; returns the summary (also written as JSON).

    The model's channels are read by their names and aliases (its ``channel_aliases``); ``channel`` reads
    other labels of this file in their place (one per model channel, in the model's order); ``inp``: the
    recording already read (:func:`read_night`, in ``read_s`` seconds).
    ``low_confidence``: threshold of the per-epoch flag on the top-class probability (default: the one in
    the model's spec, chosen on its validation subjects; else :data:`dsn.evaluation.LOW_CONFIDENCE`).
    An impossible signal (:mod:`dsn.data.sanity`) is refused; with ``force`` it is scored and flagged: every
    epoch low-confidence (CSV, EDF+ annotations, PNG), the summary's ``signal_problems``.
    The summary's ``trust`` is the night's verdict (:func:`dsn.workflows.trust.scorer_verdict`; ``norms``, ``age``:
    the plausibility ranges' override file and the subject's age).
    """
    from dsn.evaluation import LOW_CONFIDENCE
    from dsn.hypnogram import agreement, atomic_write, sleep_statistics
    from dsn.workflows.trust import scorer_verdict

    timings: dict[str, float] = {}
    t = time.perf_counter()
    epoch_sec = float(scorer.preprocessing.get("epoch_sec", 30.0))
    inp = read_night(scorer, path, channel) if inp is None else inp
    problems = signal_problems(inp, force)
    timings["read_s"] = time.perf_counter() - t + read_s
    t = time.perf_counter()
    proba, x_in, period = scaled_proba(scorer, inp.x, str(path), return_input=True)
    stages = proba.argmax(-1)
    timings["model_s"] = time.perf_counter() - t
    familiar = night_familiarity(scorer, x_in, proba)
    t = time.perf_counter()
    threshold = float(scorer.calibration.get("threshold", LOW_CONFIDENCE) if low_confidence is None else low_confidence)
    flag_below = np.inf if problems else threshold  # an impossible signal: no epoch is to be trusted
    conf, flagged = confidence_summary(stages, proba, flag_below, epoch_sec, scorer.class_names)
    conf.update(threshold=threshold, temperature=scorer.temperature)
    files = write_outputs(Path(out_dir), inp, stages, proba, flagged, flag_below, epoch_sec, scorer.class_names, problems)
    summary: dict[str, Any] = {
        "recording": str(path), "name": inp.name, "channel": inp.channel, "channels": inp.channels,
        "labels": inp.labels, "source_sfreq": inp.source_sfreq, "source_sfreqs": inp.source_sfreqs,
        "sfreq": inp.sfreq, "n_epochs": int(len(stages)), "model": model_ref, "model_kind": scorer.kind,
        "scored_period": {"first_epoch": int(period.start), "n_epochs": int(period.stop - period.start)},
        "statistics": sleep_statistics(stages, epoch_sec), "confidence": conf, "familiarity": familiar,
        "signal_problems": [p.as_dict() for p in problems], "files": {k: str(v) for k, v in files.items()},
        "trust": scorer_verdict(scorer, stages, x_in, period, familiar=familiar, problems=problems, norms=norms,
                                age=age).as_dict(), **trained_on_entry(scorer),
    }  # fmt: skip
    if hypnogram is not None:
        from dsn.data.datasets import expert_labels  # every profile's format, placed by the start times

        y_true = expert_labels(hypnogram, path, len(stages), epoch_sec)
        ag = agreement(y_true, stages, scorer.class_names)
        summary["agreement"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ag.items()}
        summary["expert_hypnogram"] = str(hypnogram)
    timings["write_s"] = time.perf_counter() - t
    summary["timings"] = timings
    with atomic_write(files["summary"]) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float))
    return summary


def write_outputs(out: Path, inp, stages: np.ndarray, proba: np.ndarray, flagged: np.ndarray, threshold: float,
                  epoch_sec: float, class_names: Sequence[str], problems: Sequence = ()) -> dict[str, Path]:
    """Write a scored night's CSV, EDF+ hypnogram, low-confidence EDF+ annotations and PNG (each atomically,
    ``out`` made when missing); returns every output's path, the summary JSON's included (written last by
    :func:`score_recording`). ``problems``: the night's impossible channels, scored with ``--force``: the
    annotations and the figure's title name them."""
    from dsn import plots
    from dsn.data.labels import true_runs
    from dsn.hypnogram import atomic_write, write_csv, write_edf_annotations, write_edf_hypnogram

    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / f"{inp.name}_hypnogram.csv", "edf": out / f"{inp.name}_hypnogram.edf",
             "low_confidence": out / f"{inp.name}_low_confidence.edf",
             "png": out / f"{inp.name}_hypnogram.png", "summary": out / f"{inp.name}_summary.json"}
    write_csv(files["csv"], inp.onsets, stages, proba, class_names, low_confidence=threshold)
    write_edf_hypnogram(files["edf"], stages, epoch_sec, start=inp.start)
    flag = "Low confidence"
    if problems:
        flag = "Impossible signal (" + ", ".join(f"{p.channel} {p.kind}" for p in problems) + "), scored with --force"
    write_edf_annotations(files["low_confidence"], [(float(a * epoch_sec), float((b - a) * epoch_sec), flag)
                                                    for a, b in true_runs(flagged)], start=inp.start,
                          empty_text="No low-confidence epochs")
    fig = plots.hypnodensity_figure(stages, proba, epoch_sec, title=f"{inp.name}: dsn hypnogram and hypnodensity"
                                    + (f" - {flag}" if problems else ""), low_confidence=flagged)
    with atomic_write(files["png"]) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return files


def format_agreement(ag: dict[str, Any], class_names: Sequence[str]) -> str:
    lines = [f"{'stage':<6} {'prec':>6} {'recall':>6} {'F1':>6}"]
    for c in class_names:
        lines.append(f"{c:<6} " + " ".join(f"{ag.get(f'{m}_{c}', float('nan')):>6.3f}" for m in ("precision", "recall", "f1")))
    lines.append(f"macro-F1 {ag['f1_macro']:.3f}  accuracy {ag['acc']:.3f}  kappa {ag['kappa']:.3f}  "
                 f"({ag['n_epochs']} epochs scored by both)")
    return "\n".join(lines)


#: Nights read ahead (to check every input before scoring any) are kept in memory up to this many bytes, then
#: read again when their turn comes.
KEEP_BYTES = 2 << 30


def check_paths(recordings: Sequence[str], hypnograms: Sequence[str] | None) -> None:
    """Every recording and expert hypnogram is a file (before the model is loaded).

    Raises
    ------
    DataError
        Naming a folder (and the PSG files in it) or a missing file.
    """
    from dsn.data.errors import DataError

    for kind, paths in (("recording", recordings), ("expert hypnogram", hypnograms or ())):
        for p in map(Path, paths):
            if p.is_dir():
                inside = sorted((q.name for q in p.iterdir() if q.suffix.lower() in (".edf", ".bdf")),
                                key=lambda n: ("hypnogram" in n.lower(), n))
                raise DataError(f"{p}: a folder, not a {kind} file. Pass the file(s) themselves"
                                + (f" (e.g. {p / inside[0]})" if inside else "") + ".")
            if not p.exists():
                raise DataError(f"{p}: {kind} file not found. Check the path.")


def read_all(scorer, a) -> list[tuple[Any, float]]:
    """Read and check every recording before any is scored (:func:`read_night`, :func:`signal_problems`): each
    night, kept while they fit in :data:`KEEP_BYTES` (None for one to read again), and its reading time."""
    kept, inputs = 0, []
    for rec in a.recordings:
        t = time.perf_counter()
        inp = read_night(scorer, rec, a.channel)
        signal_problems(inp, getattr(a, "force", False))
        kept += inp.x.nbytes
        inputs.append((inp, time.perf_counter() - t) if kept <= KEEP_BYTES else (None, 0.0))
    return inputs


@dataclass
class PredictResult:
    """What ``dsn predict`` did: the model (its reference, kind, channels, rate, loading time), the output
    folder, each night's summary (as written to ``<name>_summary.json``: statistics, confidence, agreement,
    familiarity, verdict, files) with its expert hypnogram, and whether ``--strict`` was given."""

    model: str
    kind: str
    channels: list[str]
    sfreq: float
    load_s: float
    out: str
    class_names: list[str]
    nights: list[dict[str, Any]] = field(default_factory=list)
    hypnograms: list[str | None] = field(default_factory=list)
    strict: bool = False

    @property
    def do_not_use(self) -> list[str]:
        """The nights whose verdict is 'do not use'."""
        return [s["name"] for s in self.nights if s.get("trust", {}).get("verdict") == "do not use"]


def build_parser():
    from dsn.workflows.cli_args import REF_HELP, command_parser, tracking_options

    p = command_parser("predict")
    p.add_argument("recordings", nargs="+", type=str, help="PSG EDF file(s) to score (no hypnogram needed).")
    p.add_argument("--model", type=str, default="models:/deepsleepnet@champion", help=REF_HELP)
    p.add_argument("--out", type=str, required=True,
                   help="Output folder (CSV, EDF+ hypnogram, PNG, summary JSON per recording).")
    p.add_argument("--channel", type=list[str] | None, default=None,
                   help="A channel of the file to read in place of the model's (repeat once per model channel, in its "
                        "order; null: the model's channels, found by name or alias).")
    p.add_argument("--hypnogram", type=list[str] | None, default=None,
                   help="Expert hypnogram(s) of the recording(s), in the same order (repeat the flag): report agreement.")
    p.add_argument("--no_calibration", type=bool, default=False,
                   help="Write the network's raw softmax instead of the probabilities calibrated on validation subjects.")
    p.add_argument("--low_confidence", type=float | None, default=None,
                   help="Flag epochs whose top-class probability is below this (null: the model's threshold, chosen on its "
                        "validation subjects; 0.5 for a model without one or with --no_calibration).")
    p.add_argument("--force", type=bool, default=False,
                   help="Score a night whose signal is impossible (a flat, saturated or not-a-number channel) instead "
                        "of refusing it; every output is then flagged (all epochs low-confidence, signal_problems).")
    p.add_argument("--norms", type=str | None, default=None,
                   help="A YAML file overriding the plausibility ranges of dsn/trust/norms.yaml (see docs/trust.md).")
    p.add_argument("--age", type=float | None, default=None,
                   help="The subject's age in years: age-aware plausibility ranges where the sources give them.")
    p.add_argument("--strict", type=bool, default=False,
                   help="Exit with status 3 when a night's verdict is 'do not use' (outputs are still written).")
    tracking_options(p, experiment_help="none needed")
    return p


def parse(argv: Sequence[str]):
    from dsn.workflows.cli_args import bare_flags, parse_command

    argv = bare_flags(argv, ("--no_calibration", "--force", "--strict"))
    return parse_command(build_parser(), argv, appends=("--hypnogram", "--channel"))


def run(a) -> PredictResult:
    """``dsn predict``: every input checked (the output folder first), then each night scored and its outputs
    written (``--out`` made only then)."""
    from dsn import tracking
    from dsn.trust import load_norms
    from dsn.workflows.cli_args import check_out_folder, is_remote
    from dsn.workflows.registry import load_scorer

    check_out_folder(a.out)
    if a.hypnogram and len(a.hypnogram) != len(a.recordings):
        raise ConfigError(f"--hypnogram given {len(a.hypnogram)} time(s) for {len(a.recordings)} recording(s): "
                          "give one expert hypnogram per recording, in the same order, or none.")
    check_paths(a.recordings, a.hypnogram)
    uri = tracking.reading_uri(a.tracking_uri, a.tracking_home) if is_remote(a.model) else None
    t = time.perf_counter()
    scorer = load_scorer(a.model, uri)
    if getattr(a, "no_calibration", False):
        scorer.calibration = {}  # the raw softmax
    res = PredictResult(a.model, scorer.kind, list(scorer.channels), scorer.sfreq, time.perf_counter() - t, a.out,
                        list(scorer.class_names), strict=getattr(a, "strict", False))
    inputs = read_all(scorer, a)
    norms = load_norms(a.norms) if getattr(a, "norms", None) else None  # a bad file: one line before any scoring
    from tqdm.auto import tqdm

    bar = len(a.recordings) > 1 and sys.stderr.isatty()  # each night's report is printed at the end
    for i, rec in enumerate(tqdm(a.recordings, desc="scoring nights", unit="night", disable=not bar)):
        hyp = a.hypnogram[i] if a.hypnogram else None
        inp, read_s = inputs[i]
        inputs[i] = (None, 0.0)
        res.nights.append(score_recording(scorer, rec, Path(a.out), a.channel, hyp, a.model,
                                          getattr(a, "low_confidence", None), inp, getattr(a, "force", False), read_s,
                                          norms, getattr(a, "age", None)))
        res.hypnograms.append(hyp)
    return res


def render(res: PredictResult):
    """The model line, then each night's report (warnings and a verdict other than 'trusted' on stderr); with
    ``--strict`` and a 'do not use' night, a last line on stderr and exit status 3."""
    from dsn.workflows.cli_args import Output

    out = Output().out(f"model {res.model}: {res.kind} model, channels {', '.join(res.channels)}, {res.sfreq:g} Hz "
                       f"(loaded in {res.load_s:.2f} s)")
    for s, hyp in zip(res.nights, res.hypnograms, strict=True):
        out.parts += night_report(s, hyp, res.class_names, Path(res.out))
    if res.strict and res.do_not_use:
        out.err(f"dsn predict: --strict: verdict 'do not use' for {', '.join(res.do_not_use)} (reasons above and in "
                "the summary JSON)")
        out.code = 3
    return out


def night_report(s: dict[str, Any], hyp: str | None, class_names: Sequence[str], out: Path) -> list[tuple[str, bool]]:
    """A scored night's lines, each ``(text, a warning)``: timings, night statistics, low confidence, agreement,
    familiarity, problems, verdict, files."""
    from dsn import familiarity
    from dsn.hypnogram import format_sleep_statistics

    tm = s["timings"]
    lines = [(f"\n{s['name']}: {s['n_epochs']} epochs scored in {sum(tm.values()):.2f} s "
              f"(read {tm['read_s']:.2f}, model {tm['model_s']:.2f}, write {tm['write_s']:.2f})", False)]
    lines += [(f"warning: impossible signal, scored with --force (every epoch flagged low-confidence): "
               f"{p['channel']}: {p['message']}", True) for p in s.get("signal_problems", [])]
    lines.append((format_sleep_statistics(s["statistics"]), False))
    c = s["confidence"]
    mix = ", ".join(f"{k} {v:.1f}" for k, v in c["low_confidence_stages_min"].items() if v > 0)
    lines.append((f"low confidence (top-class probability < {c['threshold']:g}, temperature {c['temperature']:.2f}): "
                  f"{c['low_confidence_minutes']:.1f} min" + (f" ({mix} min)" if mix else ""), False))
    if "agreement" in s:
        lines += [(f"\nagreement with {hyp}:", False), (format_agreement(s["agreement"], class_names), False)]
    fam = s.get("familiarity")
    if fam:
        lines.append((familiarity.verdict(fam), False))
        lines += [(f"warning: {line}", True) for line in fam["warnings"]]
    trust = s.get("trust")
    if trust:
        lines.append((f"verdict: {trust['verdict']}" + (f" ({'; '.join(trust['reasons'])})" if trust["reasons"] else ""),
                      trust["verdict"] != "trusted"))
    lines.append(("wrote " + ", ".join(Path(p).name for p in s["files"].values()) + f" to {out}", False))
    return lines

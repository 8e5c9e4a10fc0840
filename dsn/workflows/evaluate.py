"""``dsn evaluate``: score every labelled recording of a data set with a trained model.

The cross-data-set check (train on Sleep-EDF, test on another site): the model's channel is read from each
recording (found by the data-set profile's aliases, or mapped explicitly with ``--data.channels``), the
recordings are prepared as the model's training data was (sampling rate, epoch length, trimming around sleep,
normalisation; unscored epochs dropped) and the figures ``dsn cv`` reports are computed: the pooled confusion
matrix, accuracy, macro-F1, Cohen's kappa, per-class F1 / precision / recall, and the same per recording.
They go to one MLflow run (metrics ``eval/<name>``, the confusion matrix and its figures) and to
``<out>/evaluate_summary.json``. Reading a channel in place of another montage (the model's Fpz-Cz from
NSRR's C4-A1 ``EEG``) is named in the output as a cross-montage check.

Every recording is read and checked before the MLflow run opens, so bad input leaves no run behind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsn.errors import ConfigError


@dataclass(frozen=True)
class ChannelUse:
    """Which file channel stands for one of the model's channels.

    Attributes
    ----------
    model : the model's channel (``EEG Fpz-Cz``)
    asked : what the user named for it (``--data.channels``, ``dsn predict --channel``; the model's channel when
        not given)
    read : the label read from the files (``EEG``); ``asked`` when no file labels were given
    montage : the derivation the profile calls it (``C4-A1``), else ``read``
    cross_montage : ``read`` is not ``model`` nor one of its aliases: another derivation stands in for it
    """

    model: str
    asked: str
    read: str
    montage: str
    cross_montage: bool

    def describe(self) -> str:
        if self.cross_montage:
            return (f"cross-montage check: the model's {self.model} read from {self.read}"
                    f"{f' ({self.montage})' if self.montage != self.read else ''}")
        if self.read != self.model:
            return f"the model's {self.model} read from {self.read} (alias)"
        return f"the model's {self.model}"


def _montage(label: str, aliases: dict[str, list[str]]) -> str:
    return next((canon for canon, alts in aliases.items() if label == canon or label in alts), label)


def channel_uses(model_channels: Sequence[str], asked: str | Sequence[str] | None,
                 labels: Sequence[str] | None = None, aliases: dict[str, list[str]] | None = None, source: str = "",
                 option: str = "--data.channels") -> list[ChannelUse]:
    """Map a user's channels onto a model's (``dsn evaluate``, ``dsn predict``): the one place that pairs them.

    Parameters
    ----------
    model_channels : sequence of str
        The model's channels (:attr:`SleepScorer.channels <dsn.models.scoring.SleepScorer.channels>`).
    asked : str or sequence of str, optional
        The file channels the user names in their place, one per model channel in its order (one string: one
        channel); None or empty: the model's own channels.
    labels : sequence of str, optional
        A file's channel labels: each asked channel is found among them (:func:`~dsn.data.channels.find_label`
        with ``aliases``) and a label of another montage is named as a cross-montage check. None: the channels
        are not looked up here (the reader finds them, as ``dsn predict``'s does).
    source : str
        The file, for the messages. ``option`` names the user's option in them.

    Raises
    ------
    ConfigError
        If ``asked`` has another length than the model's channels, or a channel is not in the file.
    """
    from dsn.data.channels import ChannelLookupError, find_label

    asked = [asked] if isinstance(asked, str) else list(asked or model_channels)
    if len(asked) != len(model_channels):
        raise ConfigError(f"{source}: {option} names {len(asked)} channel(s) ({', '.join(asked)}) but the model reads "
                          f"{len(model_channels)} ({', '.join(model_channels)}); name one file channel for each, in the "
                          "model's order.")
    if labels is None:
        return [ChannelUse(m, a, a, a, False) for m, a in zip(model_channels, asked, strict=True)]
    aliases = aliases or {}
    out = []
    for m, a in zip(model_channels, asked, strict=True):
        try:
            label = find_label(a, labels, aliases)
        except ChannelLookupError as e:
            raise ConfigError(f"{source}: {e} (for the model's {m}). Name the file channel to read for it with "
                              f"{option}.") from None
        try:
            same = find_label(m, [label], aliases) == label
        except ChannelLookupError:
            same = False
        out.append(ChannelUse(m, a, label, _montage(label, aliases), not same))
    return out


def _figures(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    from dsn.evaluation import agreement

    ag = agreement(y_true, y_pred, class_names)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ag.items()}


def evaluate(
    model: str,
    data_dir: str | Path,
    dataset: str = "sleep-edf",
    channels: Sequence[str] | None = None,
    length_mismatch: str = "raise",
    cache_dir: str | None = None,
    use_cache: bool = True,
    uri: str | None = None,
) -> dict[str, Any]:
    """Score every paired recording of ``data_dir`` with ``model``; the summary (no MLflow run).

    Returns
    -------
    dict
        ``pooled`` (acc, f1_macro, kappa, f1_/precision_/recall_<class>, confusion, n_epochs), ``per_recording``
        (the same per recording), ``channels`` (one :class:`ChannelUse` dict per model channel),
        ``cross_montage``, ``model``, ``data_dir``, ``dataset``, ``class_names``.
    """
    from dsn.data.datasets import find_recordings, load_profile
    from dsn.data.normalize import normalize
    from dsn.data.recording import Preprocessing, load_recording
    from dsn.workflows.data import edf_header
    from dsn.workflows.registry import load_scorer
    from dsn.workflows.trust import scorer_verdict

    scorer = load_scorer(model, uri)
    prep = scorer.preprocessing
    profile = load_profile(dataset)
    files = find_recordings(data_dir, profile)
    loaded, uses = [], None
    for f in files:
        _, rates = edf_header(f.psg)
        rec_uses = channel_uses(scorer.channels, channels, list(rates), reading_aliases(profile, prep), str(f.psg))
        uses = uses or rec_uses
        p = Preprocessing(channels=tuple(u.read for u in rec_uses), sfreq=scorer.sfreq, epoch_sec=float(prep.get("epoch_sec", 30.0)),
                          trim_minutes=prep.get("trim_minutes", 30.0), unscored="drop", length_mismatch=length_mismatch)
        rec = load_recording(f, p, cache_dir, use_cache)
        if rec.x.shape[-1] != scorer.n_times:
            raise ConfigError(f"{f.psg}: epochs of {rec.x.shape[-1]} samples, but the model expects {scorer.n_times}.")
        refuse_impossible(rec.x, scorer.channels, f.psg, data_dir)
        loaded.append((f, rec))
    method = prep.get("normalize", "none")
    per, y_all, p_all = [], [], []
    for f, rec in loaded:
        x = rec.x if method == "none" else normalize(np.asarray(rec.x), method, scorer.sfreq)
        y_pred = scorer.predict(x)
        per.append({"name": rec.name, "subject": rec.subject, "night": rec.night, "psg": str(f.psg),
                    "hypnogram": str(f.hypnogram), **_figures(rec.y, y_pred, scorer.class_names),
                    "trust": scorer_verdict(scorer, y_pred, x).as_dict()})
        y_all.append(rec.y)
        p_all.append(y_pred)
    pooled = _figures(np.concatenate(y_all), np.concatenate(p_all), scorer.class_names)
    return {
        "model": model, "model_kind": scorer.kind, "data_dir": str(data_dir), "dataset": profile.name,
        "class_names": list(scorer.class_names), "n_recordings": len(per), **trained_on_entry(scorer),
        "n_subjects": len({r["subject"] for r in per}), "channels": [u.__dict__ for u in uses or []],
        "cross_montage": any(u.cross_montage for u in uses or []), "pooled": pooled, "per_recording": per,
        "verdicts": {v: sum(r["trust"]["verdict"] == v for r in per) for v in ("trusted", "check", "do not use")},
    }  # fmt: skip


def refuse_impossible(x: np.ndarray, channels: Sequence[str], psg: str | Path, data_dir: str | Path) -> None:
    """Refuse a recording with an impossible signal (:func:`dsn.data.sanity.check_signals`) before anything is
    scored: it would spoil the pooled figures.

    Raises
    ------
    ConfigError
        Naming the file and channel, and what to do.
    """
    from dsn.data.sanity import check_signals, describe_problems

    if problems := check_signals(x, channels):
        raise ConfigError(f"{describe_problems(problems, str(psg))}: no sleep stage can be read from it, and scoring "
                          f"it would spoil the pooled figures; move it out of {data_dir} (or read another channel "
                          "with --data.channels) and evaluate again.")


def format_summary(s: dict[str, Any]) -> str:
    """The pooled row, one row per recording, and the channel mapping (a cross-montage check named as such)."""
    from dsn.workflows.cv.report import MetricTable

    width = max([30, *(len(r["name"]) + 3 for r in s["per_recording"])])  # whole recording names (BIDS's are long)
    table = MetricTable(s["class_names"], label_width=width, cell_width=9, count=("epochs", 8))
    head = table.header()
    lines = [f"dsn evaluate: {s['model']} on {s['data_dir']} (data set '{s['dataset']}', {s['n_recordings']} recordings, "
             f"{s['n_subjects']} subjects)"]
    lines += [f"  {ChannelUse(**u).describe()}" for u in s["channels"]]
    lines += [f"  model trained on: {trained_on(s['trained_on'])}"] if s.get("trained_on") else []
    lines += [head, "-" * len(head), table.row("pooled", s["pooled"], s["pooled"]["n_epochs"])]
    lines += [table.row(f"  {r['name']}", r, r["n_epochs"]) for r in s["per_recording"]]
    return "\n".join(lines + format_verdicts(s))


def reading_aliases(profile, prep: dict[str, Any]) -> dict[str, list[str]]:
    """The aliases ``dsn evaluate`` finds the model's channels with: the data set's profile's, plus, for a model
    trained on several data sets (``preprocessing.sources``), the model's own (each source's label of each of its
    channels: a night of any of its sources is read as it was in training)."""
    from dsn.data.channels import merge_aliases

    return merge_aliases(profile.channel_aliases, prep.get("channel_aliases") if prep.get("sources") else None)


def trained_on_entry(scorer) -> dict[str, Any]:
    """A summary's ``trained_on`` entry: the data sets of a model trained on several (its spec's
    ``preprocessing.sources``, :mod:`dsn.data.sources`); empty for a model trained on one."""
    sources = scorer.preprocessing.get("sources")
    return {"trained_on": sources} if sources else {}


def trained_on(sources: list[dict[str, Any]]) -> str:
    """One line naming the data sets a model was trained on (its spec's ``preprocessing.sources``)."""
    return "; ".join(f"{s['name']} ({s['dataset']}{', test only' if s.get('test_only') else ''}: "
                     + ", ".join(f"{k}={v}" for k, v in s["channels"].items()) + ")" for s in sources)


def format_verdicts(s: dict[str, Any]) -> list[str]:
    """The count of each verdict (:mod:`dsn.trust`) over the recordings, then each recording not trusted with its
    reasons (a summary without verdicts, from an older dsn: nothing)."""
    if "verdicts" not in s:
        return []
    lines = ["verdicts: " + ", ".join(f"{n} {v}" for v, n in s["verdicts"].items())]
    return lines + [f"  {r['name']}: {r['trust']['verdict']} ({'; '.join(r['trust']['reasons'])})"
                    for r in s["per_recording"] if r.get("trust", {}).get("verdict", "trusted") != "trusted"]


def record(summary: dict[str, Any], uri: str, experiment: str, home: str | Path, run_name: str | None = None) -> str:
    """Log the summary to a new MLflow run (metrics ``eval/<name>``, confusion matrix, JSON); its id."""
    from dsn import tracking
    from dsn.tags import CROSS_MONTAGE_TAG, DATASET_TAG

    exp = tracking.experiment_id(uri, experiment, home)
    tags = {DATASET_TAG: summary["dataset"], CROSS_MONTAGE_TAG: str(summary["cross_montage"]).lower()}
    params = {"model": summary["model"], "data_dir": summary["data_dir"], "dataset": summary["dataset"],
              "channels": "; ".join(ChannelUse(**u).describe() for u in summary["channels"])}
    run_id = tracking.start_top_run(uri, exp, "evaluate", run_name or f"evaluate-{summary['dataset']}", tags=tags,
                                    params=params)
    with tracking.run_guard(uri, [run_id]):
        pooled = summary["pooled"]
        metrics = {f"eval/{k}": float(v) for k, v in pooled.items() if isinstance(v, int | float) and not isinstance(v, bool)
                   and k not in ("n_epochs", "n_ignored") and not math.isnan(float(v))}
        metrics.update({f"eval/n_{v.replace(' ', '_')}": float(n) for v, n in summary.get("verdicts", {}).items()})
        tracking.log_evaluation(uri, run_id, "eval", metrics, np.asarray(pooled["confusion"]))
        tracking.log_dict(uri, run_id, summary, "evaluate_summary.json")
    return run_id


def build_parser():
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="dsn evaluate", description="Score every labelled recording of a data set with a model.")
    p.add_argument("--model", type=str, default="models:/deepsleepnet@champion",
                   help="model reference: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a selected.ckpt")
    p.add_argument("--data.data_dir", type=str, required=True, help="data folder (searched recursively)")
    p.add_argument("--data.dataset", type=str, default="sleep-edf",
                   help="data-set profile: sleep-edf, nsrr, bids, generic (conf/datasets/) or a YAML path")
    p.add_argument("--data.channels", type=list[str] | None, default=None,
                   help="file channel to read for each of the model's channels, e.g. '[EEG]' (another derivation "
                        "is reported as a cross-montage check); default: the model's channels, found by alias")
    p.add_argument("--data.length_mismatch", type=str, default="raise", help="raise or crop (as in dsn fit)")
    p.add_argument("--data.cache_dir", type=str | None, default=None, help="preprocessing cache (default $DSN_CACHE_DIR)")
    p.add_argument("--data.use_cache", type=bool, default=True, help="read and write the preprocessing cache")
    p.add_argument("--out", type=str, default="results/evaluate", help="folder of evaluate_summary.json")
    p.add_argument("--tracking.uri", type=str | None, default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<home>/mlflow.db)")
    p.add_argument("--tracking.home", type=str, default="mlruns", help="local tracking home")
    p.add_argument("--tracking.experiment", type=str, default="dsn-evaluate", help="MLflow experiment of the run")
    p.add_argument("--tracking.run_name", type=str | None, default=None, help="run name (default evaluate-<dataset>)")
    return p


def parse(argv: Sequence[str]):
    return build_parser().parse_args(list(argv))


def run(a) -> dict[str, Any]:
    """``dsn evaluate``: evaluate, then record the run and write the JSON (the CLI prints :func:`render`)."""
    from dsn import tracking

    uri = tracking.tracking_uri(a.tracking.uri, a.tracking.home)
    tracking.check_tracking(uri)
    d = a.data
    summary = evaluate(a.model, d.data_dir, d.dataset, d.channels, d.length_mismatch, d.cache_dir, d.use_cache, uri)
    summary["run_id"] = record(summary, uri, a.tracking.experiment, a.tracking.home, a.tracking.run_name)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluate_summary.json"
    path.write_text(json.dumps(summary, indent=1, default=float))
    summary["json"] = str(path)
    return summary


def render(summary: dict[str, Any]) -> str:
    """The summary tables, the MLflow run and the JSON written."""
    return format_summary(summary) + f"\nMLflow run {summary['run_id']}; wrote {summary['json']}"

"""Where a fit is recorded: one interface, MLflow on global rank 0, nothing on the other ranks.

The stage loop (:mod:`dsn.workflows.stage`) calls the same methods on every rank; only
:class:`MlflowRecorder` (rank 0) opens runs, logs, writes the checkpoint folder's evaluation files, logs
the model and registers it. :class:`Recorder` (the other DDP ranks) records nothing and reads the
tracking store only to find the run being resumed, so that every rank skips the same finished stages.
:func:`open_recorder` is the one place that asks which rank this is.

MLflow layout of one fit::

    <fit run>                 tags dsn.kind=<kind>; config.yaml, data_summary.json, summary.json;
    |                         the selected models' figures: {split}/{metric} (final stage) and
    |                         {stage}/{split}/{metric}
    +-- pretrain              per-epoch curves train/loss, val/loss, val/f1_macro, ...; the selected
    +-- finetune              model's selected/{split}/{metric}, confusion matrices, a hypnogram,
                              predictions/{split}.npz, checkpoints, the model (a SleepScorer); its
                              calibration: selected/calibration/{temperature,threshold},
                              selected/{split}/{ece,brier}[_raw], .../acc_confident, acc_flagged,
                              flagged_frac, calibration/reliability_{split}.png, familiarity.json
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dsn import config, tracking
from dsn.errors import ConfigError
from dsn.tags import CONFIG_CHANGED_TAG, MODEL_URI_TAG, STAGE_TAG, SUPERSEDED_TAG
from dsn.workflows.distributed import is_global_zero
from dsn.workflows.results import Prediction, StageResult, save_predictions

log = logging.getLogger(__name__)


class Recorder:
    """The no-op recorder of a DDP rank other than 0: the same calls as :class:`MlflowRecorder`, no writes.

    Attributes
    ----------
    uri, exp_id : the tracking store and experiment (``exp_id`` empty unless resuming).
    run_id : the fit's run (rank 0's, learnt from it at the first ``trainer.fit`` unless resuming).
    changed : config keys that differ from the resumed run's (``--allow_config_change``).
    """

    def __init__(self, uri: str, exp_id: str, run_id: str, changed: list[str] | None = None):
        self.uri, self.exp_id, self.run_id, self.changed = uri, exp_id, run_id, list(changed or [])

    @property
    def fit_run_id(self) -> str:
        """The run id a :class:`~dsn.workflows.results.FitResult` reports (empty on the other ranks)."""
        return ""

    def guard(self):
        return contextlib.nullcontext()

    def start_fit(self, cfg, summary: dict, resumed: bool) -> None:
        """Log the config and the data summary on the fit run."""

    def find_stage(self, name: str):
        """The run of stage ``name`` under the fit run being resumed, or None."""
        return tracking.find_child(self.uri, self.run_id, name) if self.run_id else None

    def open_stage(self, name: str, params: dict[str, Any], prior) -> str:
        """Open (or reopen ``prior``) the stage's run; returns its id."""
        return ""

    @property
    def reports(self) -> bool:
        """Whether this process reports progress (one process does, under DDP)."""
        return False

    def supersede(self, prior) -> None:
        """Tag a stage run whose params (immutable) no longer hold after a config change on resume."""

    def logger(self, stage_run: str):
        """The Lightning logger of the stage's Trainer (False: none)."""
        return False

    def record_split(self, stage_run: str, split: str, metrics: dict[str, float], cm: np.ndarray,
                     preds: list[Prediction], ckpt_dir: Path) -> None:
        """Record the selected model's figures, confusion matrix and predictions over one split."""

    def record_trust(self, stage_run: str, figures: dict[str, float], reliability: dict[str, tuple],
                     familiarity: dict[str, Any] | None) -> None:
        """Record the selected model's calibration figures (``selected/{key}``), a reliability diagram per
        split (``reliability[split]``: raw bins, calibrated bins, title; ``calibration/reliability_{split}.png``)
        and the description of its training nights (``familiarity.json``)."""

    def record_stage(self, stage_run: str, result: StageResult, example: np.ndarray | None) -> str | None:
        """Record the selected checkpoint and epoch, log the model (with ``example`` as input example);
        close the stage run. Returns the logged model's URI (None when not logged)."""
        return None

    def close_stage(self, stage_run: str, trainer, timings: dict[str, float]) -> None:
        """Log the stage's timings and close its run as FINISHED."""

    def finish_fit(self, cfg, results: list[StageResult], tags: dict[str, str] | None) -> tuple[str, str] | None:
        """The fit run's figures and summary; register the final model (``tags``: the fit's extra tags, also
        set on the model version). Returns (registered-model name, version) or None."""
        return None


class MlflowRecorder(Recorder):
    """Global rank 0's recorder: the fit's MLflow runs, its evaluation files and the registry."""

    def __init__(self, uri: str, exp_id: str, run_id: str, changed: list[str] | None = None):
        super().__init__(uri, exp_id, run_id, changed)
        self.open_runs = [run_id]  # closed by guard(): FINISHED, KILLED or FAILED
        self.reopened: set[str] = set()  # stage runs continued on resume: their params are already logged

    @property
    def fit_run_id(self) -> str:
        return self.run_id

    def guard(self):
        return tracking.run_guard(self.uri, self.open_runs)

    def start_fit(self, cfg, summary: dict, resumed: bool) -> None:
        uri, run_id = self.uri, self.run_id
        if resumed:  # MLflow params are immutable: the config resumed with is kept beside the first one
            tracking.log_text(uri, run_id, config.dump(cfg), "config_resumed.yaml")
        if self.changed:
            tracking.set_tags(uri, run_id, {CONFIG_CHANGED_TAG: ", ".join(self.changed)[:5000]})
        if not resumed:  # (its config.yaml and training params were logged when the run opened)
            tracking.log_params(uri, run_id, summary_params(summary))
        tracking.log_dict(uri, run_id, summary, "data_summary.json")

    def open_stage(self, name: str, params: dict[str, Any], prior) -> str:
        if prior is not None:
            stage_run = prior.info.run_id
            tracking.reopen_run(self.uri, stage_run)
            self.reopened.add(stage_run)
        else:
            stage_run = tracking.start_run(self.uri, self.exp_id, name, parent=self.run_id, tags={STAGE_TAG: name})
            tracking.log_params(self.uri, stage_run, params)
        self.open_runs.append(stage_run)
        return stage_run

    @property
    def reports(self) -> bool:
        return True

    def supersede(self, prior) -> None:
        tracking.set_tags(self.uri, prior.info.run_id, {SUPERSEDED_TAG: "config changed on resume"})

    def logger(self, stage_run: str):
        logger = tracking.lightning_logger(self.uri, stage_run)
        if stage_run in self.reopened:  # MLflow params are immutable: a loader or progress setting may differ now
            logger.log_hyperparams = lambda *args, **kwargs: None
        return logger

    def record_split(self, stage_run, split, metrics, cm, preds, ckpt_dir) -> None:
        path = Path(ckpt_dir) / f"predictions_{split}.npz"
        save_predictions(path, preds)
        first = preds[0] if preds else None
        tracking.log_evaluation(self.uri, stage_run, split, {f"selected/{k}": v for k, v in metrics.items()}, cm,
                                (first.name, first.y_true, first.y_pred) if first else None)
        tracking.log_file(self.uri, stage_run, path, "predictions")

    def record_trust(self, stage_run, figures, reliability, familiarity) -> None:
        from dsn import plots

        tracking.log_metrics(self.uri, stage_run, {f"selected/{k}": v for k, v in figures.items()})
        for split, (raw, cal, title) in reliability.items():
            tracking.log_figure(self.uri, stage_run, plots.reliability_figure(raw, cal, title=title),
                                f"calibration/reliability_{split}.png")
        if familiarity:
            tracking.log_dict(self.uri, stage_run, familiarity, "familiarity.json")

    def record_stage(self, stage_run, result, example) -> str | None:
        uri = self.uri
        tracking.log_metrics(uri, stage_run, {"selected/epoch": result.selected_epoch})
        for path in (result.best_checkpoint, result.selected_checkpoint):
            if path:
                tracking.log_file(uri, stage_run, path, "checkpoints")
        model_uri = None
        if example is not None:
            model_uri = tracking.log_model(uri, stage_run, result.scorer, example, metadata=result.scorer.spec())
            tracking.set_tags(uri, stage_run, {MODEL_URI_TAG: model_uri})
        return model_uri

    def close_stage(self, stage_run: str, trainer, timings: dict[str, float]) -> None:
        tracking.log_metrics(self.uri, stage_run, {f"time/{k}_s": v for k, v in timings.items()})
        trainer.logger.finalize("success")
        tracking.set_terminated(self.uri, stage_run)
        self.open_runs.remove(stage_run)

    def finish_fit(self, cfg, results, tags) -> tuple[str, str] | None:
        uri, run_id, final = self.uri, self.run_id, results[-1]
        top = dict(final.metrics)
        for r in results:
            top.update({f"{r.name}/{k}": v for k, v in r.metrics.items()})
        tracking.log_metrics(uri, run_id, top)
        tracking.log_dict(uri, run_id, fit_summary(results), "summary.json")
        if final.model_uri:
            tracking.set_tags(uri, run_id, {MODEL_URI_TAG: final.model_uri})
        if not cfg.tracking.register:
            return None
        if not final.model_uri:
            raise ConfigError(f"tracking.register: the {final.name} stage has no logged model to register "
                              "(it was trained with tracking.log_model: false).")
        name = cfg.tracking.register
        version = tracking.register_model(uri, final.model_uri, name,
                                          registry_tags(cfg, run_id, final.name, final.metrics, tags))
        if cfg.tracking.register_alias:
            tracking.set_alias(uri, name, version, cfg.tracking.register_alias)
        return name, version


# ----------------------------------------------------------------------------- opening a fit's run
def open_recorder(cfg, uri: str, *, resume: str | None, kind: str, parent_run_id: str | None,
                  allow_config_change: bool, tags: dict[str, str] | None, run_name: str | None) -> Recorder:
    """The recorder of this process: rank 0 opens (or reopens) the fit's run, the other ranks only look
    up the run being resumed (read only), so that all of them skip the same finished stages."""
    home = Path(cfg.tracking.home)
    if not is_global_zero():
        if not resume:
            return Recorder(uri, "", "")
        exp_id = tracking.find_experiment_id(uri, cfg.tracking.experiment)
        if exp_id is None:
            raise ConfigError(f"--resume {resume}: experiment '{cfg.tracking.experiment}' does not exist in {uri}.")
        run_id, changed = find_resumed(uri, exp_id, cfg, resume, kind, parent_run_id, allow_config_change)
        return Recorder(uri, exp_id, run_id, changed)
    exp_id = tracking.experiment_id(uri, cfg.tracking.experiment, home)
    if resume:
        run_id, changed = find_resumed(uri, exp_id, cfg, resume, kind, parent_run_id, allow_config_change)
        tracking.reopen_run(uri, run_id)
        log.info("Resuming run %s%s", run_id, f" with a changed config ({', '.join(changed[:5])})" if changed else "")
        return MlflowRecorder(uri, exp_id, run_id, changed)
    name = run_name or cfg.tracking.run_name or default_run_name("fit", cfg)
    run_id = tracking.start_top_run(uri, exp_id, kind, name, cfg=cfg, tags=tags, parent=parent_run_id)
    return MlflowRecorder(uri, exp_id, run_id)


def default_run_name(prefix: str, cfg) -> str:
    """``<prefix>-<config file stems>``: ``fit-demo-debug`` for ``--config conf/demo.yaml --config conf/debug.yaml``."""
    return "-".join([prefix, *(Path(str(c)).stem for c in (cfg.get("config") or []))])


def find_resumed(uri, exp_id, cfg, resume, kind, parent_run_id, allow_change) -> tuple[str, list[str]]:
    """The run ``--resume`` names (``last`` or an id) and the weight-relevant keys its config changed.

    Raises ``ConfigError`` (before anything is reopened) when no such run exists, or when the config
    differs in a key that can change the trained weights and ``allow_change`` is false."""
    if resume == "last":
        run = tracking.latest_run(uri, exp_id, kind, parent_run_id)
    else:
        try:
            run = tracking.get_run(uri, resume)
        except Exception:
            run = None
    if run is None:
        raise ConfigError(f"--resume {resume}: no earlier `dsn {kind}` run found in experiment '{cfg.tracking.experiment}'. "
                          "Run without --resume to start a new one.")
    rid = run.info.run_id
    old_text = tracking.read_text_artifact(uri, rid, "config_resumed.yaml") or tracking.read_text_artifact(uri, rid, "config.yaml")
    if old_text is None:
        return rid, []
    old, new = config.identity_items(config.default_parser().parse_string(old_text)), config.identity_items(cfg)
    diff = sorted(k for k in set(old) | set(new) if str(old.get(k)) != str(new.get(k)))
    if diff and not allow_change:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
        raise ConfigError(
            f"--resume {resume}: the config differs from run {rid}'s ({shown}{' ...' if len(diff) > 5 else ''}). "
            "Resume with the same config files and flags, or add `--allow_config_change true`."
        )
    return rid, diff


# ----------------------------------------------------------------------------- what the fit run holds
def summary_params(summary: dict) -> dict[str, Any]:
    """The data summary as run params: subjects and epoch counts per split."""
    out: dict[str, Any] = {}
    for split, subs in (summary.get("split") or {}).items():
        out[f"data.n_subjects_{split}"] = len(subs)
        out[f"data.subjects_{split}"] = ",".join(subs)
    for split, counts in summary["class_counts"].items():
        out[f"data.n_epochs_{split}"] = sum(counts.values())
    return out


def fit_summary(results: list[StageResult]) -> dict:
    """``summary.json`` of a fit run: per stage its run, selected epoch, figures, confusion and model."""
    return {
        r.name: {"run_id": r.run_id, "selected_epoch": r.selected_epoch, "metrics": r.metrics,
                 "confusion": {s: cm.tolist() for s, cm in r.confusion.items()}, "model_uri": r.model_uri}
        for r in results
    }  # fmt: skip


def registry_tags(cfg, run_id: str, stage: str, metrics: dict[str, float], extra: dict | None) -> dict[str, str]:
    """Tags of a registered model version (``dsn fit --tracking.register``, ``dsn cv --register_fold``).

    Parameters
    ----------
    cfg : jsonargparse.Namespace
        The config the model was trained with (a cv fold's: its ``data.fold`` and ``data.n_folds``).
    run_id : str
        The fit (or fold) run that trained it.
    stage, metrics : str, dict
        The final stage and its figures (``test/f1_macro`` ..., else ``val/...``).
    extra : dict, optional
        More tags (the fit's extra tags, a fold's ``cv_run_id``).

    Returns
    -------
    dict of str to str
        ``dataset``, ``channel``, ``sfreq``, ``fold``, ``stage``, ``run_id``, the headline figures of the test
        split (else the validation one), ``git_commit`` and ``extra``.
    """
    from dsn.data.channels import channel_names

    data = cfg.data  # normalised when parsed: data.channels holds the deprecated data.channel too
    tags = {
        "dataset": Path(str(data.data_dir)).name, "channel": ", ".join(channel_names(data.channels)), "sfreq": str(data.sfreq),
        "fold": f"{data.fold}/{data.n_folds}", "stage": stage, "run_id": run_id,
    }  # fmt: skip
    split = "test" if "test/f1_macro" in metrics else "val"
    for k in ("f1_macro", "kappa", "acc"):
        if f"{split}/{k}" in metrics:
            tags[f"{split}/{k}"] = f"{metrics[f'{split}/{k}']:.4f}"
    commit = tracking.environment_tags().get("mlflow.source.git.commit")
    if commit:
        tags["git_commit"] = commit
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags

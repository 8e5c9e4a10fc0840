"""What a study leaves behind: the trials table, the figures and links on the study's MLflow run, the
best trial as a config overlay or a registered model, and the text the CLI prints (returned as strings).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsn.tags import COMPARE_URL_TAG, KIND_TAG, STUDY_TAG, TRIAL_STATE_TAG, TRIAL_TAG
from dsn.utils import set_dotted
from dsn.workflows.sweep.study import SweepResult

if TYPE_CHECKING:
    from dsn.workflows.sweep.spec import SweepSpec

log = logging.getLogger(__name__)


def _states(study, *names: str) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in names]


def trials_table(study, spec: SweepSpec, top: int | None = None) -> list[dict[str, Any]]:
    """Finished trials as rows (best first for complete ones, then pruned and failed)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name not in ("RUNNING", "WAITING")]
    complete = sorted((t for t in done if t.state.name == "COMPLETE"), key=lambda t: t.value,
                      reverse=spec.direction == "maximize")
    rest = [t for t in done if t.state.name != "COMPLETE"]
    rows = []
    for t in complete + rest:
        row = {"trial": t.number, "state": t.state.name, spec.metric: "" if t.value is None else f"{t.value:.4f}"}
        row.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in t.params.items()})
        note = t.user_attrs.get("pruned_reason") or t.user_attrs.get("error") or ""
        row["note"] = ("baseline (the base config) " if t.user_attrs.get("baseline") else
                       f"probe: {t.user_attrs['probe']} " if t.user_attrs.get("probe") else "") + note[:60]
        rows.append(row)
    return rows[:top] if top else rows


def compare_runs(study) -> list[str]:
    """The MLflow run ids of the study's complete trials, in trial order."""
    return [t.user_attrs["run_id"] for t in sorted(_states(study, "COMPLETE"), key=lambda t: t.number)
            if t.user_attrs.get("run_id")]


def ui_base(uri: str, port: int = 5000, host: str = "127.0.0.1") -> str:
    """The MLflow UI's address for a tracking URI: the server itself, else where ``dsn ui`` serves."""
    return uri if uri.startswith(("http://", "https://")) else f"http://{host}:{port}/"


def study_compare_url(uri: str, study_name: str, experiment: str | None = None, base: str | None = None) -> str:
    """The side-by-side comparison link of a study's complete trials, found in MLflow by the study's tags.

    Raises
    ------
    ConfigError
        When no sweep run of that study exists (in ``experiment``, or in any experiment).
    """
    from dsn import tracking
    from dsn.errors import ConfigError

    parents = tracking.find_tagged_runs(uri, {KIND_TAG: "sweep", STUDY_TAG: study_name}, experiment)
    if not parents:
        raise ConfigError(f"--study {study_name}: no sweep of that name in {uri}"
                          + (f" (experiment {experiment})" if experiment else "") + "; `dsn sweep ... --study NAME` makes one.")
    exp_id = parents[0].info.experiment_id
    trials = tracking.find_runs(uri, exp_id, {STUDY_TAG: study_name, TRIAL_STATE_TAG: "COMPLETE"},
                                parent=parents[0].info.run_id)
    if not trials:
        raise ConfigError(f"--study {study_name}: the study has no complete trial to compare yet.")
    runs = sorted(trials, key=lambda r: int(r.data.tags.get(TRIAL_TAG, 0)))
    return tracking.compare_url([r.info.run_id for r in runs], [exp_id], base or ui_base(uri))


def summarise(study, spec: SweepSpec, parent: str, uri: str, exp_id: str, storage: str) -> SweepResult:
    """Record the study on its MLflow run (counts, best trial, trials table, plots, compare link)."""
    from dsn import tracking

    complete = _states(study, "COMPLETE")
    best = study.best_trial if complete else None
    rows = trials_table(study, spec)
    counts = {s: len(_states(study, s)) for s in ("COMPLETE", "PRUNED", "FAIL")}
    tracking.log_metrics(uri, parent, {f"n_trials_{k.lower()}": v for k, v in counts.items()})
    link = None
    if best is not None:
        tracking.log_metrics(uri, parent, {f"best/{spec.metric}": best.value, "best/trial": best.number})
        link = tracking.compare_url(compare_runs(study), [exp_id], ui_base(uri))
        tracking.set_tags(uri, parent, {"best.trial": best.number, **{f"best.{k}": v for k, v in best.params.items()},
                                        "best.run_id": best.user_attrs.get("run_id", ""), COMPARE_URL_TAG: link[:5000]})
        tracking.log_dict(uri, parent, {"trial": best.number, "value": best.value, "params": best.params,
                                        "metrics": best.user_attrs.get("metrics", {})}, "best_trial.json")
    tracking.log_dict(uri, parent, rows, "trials.json")
    log_study_plots(study, uri, parent)
    res = result(study, spec, parent, storage, rows)
    res.counts, res.compare_url = counts, link
    return res


def result(study, spec: SweepSpec, parent: str, storage: str, rows: list | None = None) -> SweepResult:
    """The study's state as a :class:`~dsn.workflows.sweep.study.SweepResult`."""
    best = study.best_trial if _states(study, "COMPLETE") else None
    return SweepResult(study.study_name, storage, parent, len(study.trials), best.value if best else None,
                       dict(best.params) if best else {}, rows if rows is not None else trials_table(study, spec),
                       metric=spec.metric, best_trial=best.number if best else None)


def log_study_plots(study, uri: str, parent: str) -> None:
    """Optuna's optimisation history, parallel coordinates and parameter importances (PNG artifacts)."""
    import warnings

    from dsn import tracking

    complete = _states(study, "COMPLETE")
    if not complete:
        return
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history, "parallel_coordinate": ovm.plot_parallel_coordinate}
    if len(complete) >= 2 and len(study.best_trial.params) >= 1:
        plots["param_importances"] = ovm.plot_param_importances
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            tracking.log_figure(uri, parent, fig, f"study/{name}.png")
            plt.close(fig)  # Optuna draws with pyplot: release its figure
        except Exception as e:  # a plot Optuna cannot draw (e.g. one distinct value) is skipped, not fatal
            log.info("could not draw %s (%s: %s)", name, type(e).__name__, e)


def register_best(study, uri: str, name: str) -> str | None:
    """Register the best trial's model under ``name``; returns the version (None: the trial logged no model)."""
    from dsn import tracking

    best = study.best_trial
    model_uri = best.user_attrs.get("model_uri")
    if not model_uri:
        log.warning("the best trial logged no model (tracking.log_model false): nothing registered")
        return None
    return tracking.register_model(uri, model_uri, name, {
        "study": study.study_name, "trial": best.number, "val_objective": f"{best.value:.4f}",
        "run_id": best.user_attrs.get("run_id", ""), **{f"param.{k}": v for k, v in best.params.items()}})


def export_best(study, spec: SweepSpec, path: str | Path) -> Path:
    """Write the best trial's values (sampled and derived) as a config overlay YAML."""
    import yaml

    from dsn.hypnogram import atomic_write
    from dsn.workflows.sweep.spec import derive

    best = study.best_trial
    nested: dict[str, Any] = {}
    params = derive(spec, dict(best.params))
    overlay = params.pop("config", None)  # a chosen config file: stacked before this one
    configs = [*spec.base, *([overlay] if overlay else [])]
    for key, value in params.items():
        set_dotted(nested, key, value)
    header = (f"# Best trial of study '{study.study_name}' (sweep {spec.path}): trial {best.number}, "
              f"{spec.metric} = {best.value:.4f} on validation subjects\n"
              f"# ({len(study.trials)} trials). Overlay on the sweep's base config:\n"
              f"#   dsn fit " + " ".join(f"--config {b}" for b in configs) + f" --config {path}\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump(nested, sort_keys=False))
    return path


def format_summary(res: SweepResult, top: int = 10) -> str:
    """What ``dsn sweep`` prints at the end: counts, the best trials, the best one, the compare link."""
    from dsn.workflows.registry import format_table

    c = res.counts
    lines = [f"Study '{res.study_name}' ({res.storage}): {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, "
             f"{c.get('FAIL', 0)} failed", format_table(res.trials[:top])]
    if res.best_value is not None:
        lines.append(f"\nbest: trial {res.best_trial}, {res.metric} = {res.best_value:.4f}")
    if res.compare_url:
        lines.append(f"compare the trials side by side (with `dsn ui` running, or on the tracking server):\n  {res.compare_url}")
    return "\n".join(lines)

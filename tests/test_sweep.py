"""`dsn sweep`: spec checks, trials nested in MLflow, resumed studies, pruning, failures, two workers."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from dsn import config, tracking
from dsn.errors import ConfigError, Pruned
from dsn.workflows import sweep

ROOT = Path(__file__).resolve().parents[1]
DATA_SET = ["--data.n_folds", "3", "--data.progress", "false", "--pretrain.trainer.enable_progress_bar", "false",
            "--net.small_kernel", "50"]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _argv(synth_dir, home, tmp_path, *extra):
    return ["sweep", "sweeps/tiny.yaml", *DATA_SET, "--data.data_dir", str(synth_dir),
            "--data.cache_dir", str(tmp_path / "cache"), "--tracking.home", str(home), *extra]


def _trial_runs(home, study):
    c = mlflow.MlflowClient(tracking.tracking_uri(None, home))
    exp = c.get_experiment_by_name("dsn-sweeps")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`dsn.study` = '{study}'")
    parents = [r for r in runs if r.data.tags.get("dsn.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("dsn.kind") == "trial"]
    return parents, trials


def test_spec_errors_name_the_file_and_entry(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [conf/demo.yaml]\nspace:\n  net.drop_prob: {type: uniform, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: space.net.drop_prob: type='uniform'"):
        sweep.load_spec(bad)
    bad.write_text("base: [conf/demo.yaml]\nspcae: {}\n")
    with pytest.raises(ConfigError, match="unknown entries"):
        sweep.load_spec(bad)
    with pytest.raises(ConfigError, match="sweep file not found"):
        sweep.load_spec(tmp_path / "nope.yaml")


def test_invalid_values_are_rejected_before_any_trial(tmp_path):
    spec = sweep.load_spec("sweeps/tiny.yaml")
    base = config.load_config(spec.base)
    sweep.check_space(spec, base)  # the shipped space: every value is valid in some combination
    spec.space["net.large_stride"] = {"type": "categorical", "choices": [50, 3000]}
    with pytest.raises(ConfigError, match=r"space.net.large_stride: the value 3000 is invalid"):
        sweep.check_space(spec, base)
    spec.space = {"net.dropprob": {"type": "float", "low": 0.1, "high": 0.2}}
    with pytest.raises(ConfigError, match="did you mean net.drop_prob"):
        sweep.check_space(spec, base)


def test_shipped_sweeps_are_valid():
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        spec = sweep.load_spec(path)
        base = config.load_config(spec.base, spec.set)
        sweep.check_space(spec, base)
        if spec.baseline:  # its base config lies inside its space
            sweep.baseline_params(spec, base)


def test_baseline_params_are_the_base_config_values():
    spec = sweep.load_spec("sweeps/recipe.yaml")
    base = config.load_config(spec.base, spec.set)
    params = sweep.baseline_params(spec, base)
    assert set(params) == set(spec.space)
    # a string choice that spells the config's list is matched, and given back as the choice
    assert base.finetune.system.class_weights == [1.0, 1.5, 1.0, 1.0, 1.0]
    assert params["finetune.system.class_weights"] == "[1.0, 1.5, 1.0, 1.0, 1.0]"
    assert params["pretrain.system.class_weights"] is None
    assert params["finetune.system.lr_pretrained"] == pytest.approx(base.finetune.system.lr_pretrained)
    assert params["finetune.seq_len"] == base.finetune.seq_len
    assert params["data.normalize"] == base.data.normalize
    # the derived keys of the baseline reproduce the base config
    cfg = config.set_keys(base, sweep.derive(spec, params))
    assert config.to_dict(cfg) == config.to_dict(base)
    spec.space["net.bn_momentum"] = {"type": "categorical", "choices": [0.01, 0.3]}
    with pytest.raises(ConfigError, match=r"baseline: the base config's net.bn_momentum=0.1 is not one of"):
        sweep.baseline_params(spec, base)
    spec.space["net.bn_momentum"] = {"type": "float", "low": 0.2, "high": 0.5}
    with pytest.raises(ConfigError, match=r"net.bn_momentum=0.1 is outside \[0.2, 0.5\]"):
        sweep.baseline_params(spec, base)


def _tiny_with_baseline(synth_dir, tmp_path):
    """sweeps/tiny.yaml with a baseline (drop_prob 0.35, large_stride 50) and no invalid points."""
    spec = sweep.load_spec("sweeps/tiny.yaml")
    spec.baseline = True
    spec.space.pop("net.large_pool")
    overrides = {"data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "c"), "data.n_folds": 3,
                 "data.progress": False, "net.small_kernel": 50, "net.drop_prob": 0.35, "net.large_stride": 50}
    return spec, overrides


def test_baseline_is_the_first_trial_of_a_new_study(synth_dir, tracking_home, tmp_path):
    spec, overrides = _tiny_with_baseline(synth_dir, tmp_path)
    kw = dict(study_name="b", tracking_home=str(tracking_home), verbose=False, overrides=overrides)
    sweep.run_sweep(spec, n_trials=1, **kw)
    sweep.run_sweep(spec, n_trials=1, **kw)  # a continued study is not given a second baseline
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    first, second = study.trials
    assert first.user_attrs.get("baseline") and not second.user_attrs.get("baseline")
    assert first.params["net.drop_prob"] == pytest.approx(0.35) and first.params["net.large_stride"] == 50
    assert second.params["net.drop_prob"] != pytest.approx(0.35)
    _, trials = _trial_runs(tracking_home, "b")
    tagged = [r for r in trials if r.data.tags.get("dsn.baseline") == "true"]
    assert [r.data.tags["dsn.trial"] for r in tagged] == ["0"]
    assert float(tagged[0].data.params["net.drop_prob"]) == pytest.approx(0.35)


def test_probes_are_the_baseline_with_one_change_each():
    spec = sweep.load_spec("sweeps/recipe.yaml")
    base = config.load_config(spec.base, spec.set)
    baseline = sweep.baseline_params(spec, base)
    probes = sweep.probe_params(spec, baseline)
    assert len(probes) == len(spec.probes) >= 1
    for probe, params in zip(spec.probes, probes):
        changed = {k for k in params if params[k] != baseline[k]}
        assert changed == set(probe) and all(params[k] == v for k, v in probe.items())
    spec.probes = [{"data.normalize": "minmax"}]
    with pytest.raises(ConfigError, match=r"probes\[0\]: data.normalize='minmax' is not one of"):
        sweep.probe_params(spec, baseline)
    spec.probes = [{"net.drop_prob": 0.3}]
    with pytest.raises(ConfigError, match=r"probes\[0\]: net.drop_prob is not a key of `space`"):
        sweep.probe_params(spec, baseline)


def test_probes_follow_the_baseline_in_a_new_study(synth_dir, tracking_home, tmp_path):
    spec, overrides = _tiny_with_baseline(synth_dir, tmp_path)
    spec.probes = [{"net.large_stride": 400}]
    sweep.run_sweep(spec, n_trials=2, study_name="p", tracking_home=str(tracking_home), verbose=False, overrides=overrides)
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    first, second = study.trials
    assert first.params["net.large_stride"] == 50 and second.params["net.large_stride"] == 400
    assert second.params["net.drop_prob"] == pytest.approx(0.35)  # everything else as the baseline
    assert second.user_attrs["probe"] == "net.large_stride=400"
    _, trials = _trial_runs(tracking_home, "p")
    assert {r.data.tags["dsn.trial"]: r.data.tags.get("dsn.probe") for r in trials} == {"0": None, "1": "net.large_stride=400"}
    spec.baseline = False
    with pytest.raises(ConfigError, match="probes .* need `baseline: true`"):
        sweep.run_sweep(spec, n_trials=1, study_name="q", tracking_home=str(tracking_home), verbose=False, overrides=overrides)


def test_pruning_callback_reports_and_prunes():
    class FakeTrial:
        def __init__(self, prune_at):
            self.reports, self.prune_at = [], prune_at

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) >= self.prune_at

    class FakeTrainer:
        sanity_checking = False
        current_epoch = 1
        callback_metrics = {"val/f1_macro": 0.25}

    trial = FakeTrial(prune_at=2)
    cb = sweep.pruning_callback(trial, "val/f1_macro", offset=sweep.STEP_OFFSET)
    cb.on_validation_end(FakeTrainer(), None)
    assert trial.reports == [(sweep.STEP_OFFSET + 1, 0.25)]
    with pytest.raises(Pruned, match="val/f1_macro=0.2500"):
        cb.on_validation_end(FakeTrainer(), None)


def test_sweep_twice_continues_the_study(synth_dir, tracking_home, tmp_path, capsys):
    from dsn.cli import main

    export = tmp_path / "best.yaml"
    assert main(_argv(synth_dir, tracking_home, tmp_path, "--n_trials", "2", "--study", "s")) == 0
    assert main(_argv(synth_dir, tracking_home, tmp_path, "--n_trials", "2", "--study", "s", "--export", str(export))) == 0
    out = capsys.readouterr().out
    parents, trials = _trial_runs(tracking_home, "s")
    assert len(parents) == 1 and len(trials) == 4
    assert sorted(int(r.data.tags["dsn.trial"]) for r in trials) == [0, 1, 2, 3]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 4 and "PRUNED" in states.values() and "COMPLETE" in states.values()
    for r in trials:  # the MLflow state matches Optuna's; pruned is not a plain failure
        state = states[int(r.data.tags["dsn.trial"])]
        assert r.data.tags["dsn.trial_state"] == state
        assert r.info.status == ("FINISHED" if state == "COMPLETE" else "KILLED")
        if state == "PRUNED":
            assert "too few samples" in r.data.tags["dsn.pruned_reason"]
    complete = [r for r in trials if r.data.tags["dsn.trial_state"] == "COMPLETE"]
    assert all("val/f1_macro" in r.data.metrics and "net.drop_prob" in r.data.params for r in complete)
    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    arts = {a.path for a in c.list_artifacts(parents[0].info.run_id, "study")}
    assert {"study/optimization_history.png", "study/parallel_coordinate.png"} <= arts
    assert "best.trial" in c.get_run(parents[0].info.run_id).data.tags
    assert "state" in out and "COMPLETE" in out  # the printed table of trials
    # the link that opens the complete trials side by side: printed and tagged on the study's run
    link = c.get_run(parents[0].info.run_id).data.tags["dsn.compare_url"]
    assert link in out and link.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    assert all(r.info.run_id in urllib.parse.unquote(link) for r in complete)
    # --export writes an overlay that stacks on the base configs
    overlay = yaml.safe_load(export.read_text())
    assert overlay["net"]["drop_prob"] == pytest.approx(study.best_trial.params["net.drop_prob"])
    cfg = config.load_config(["conf/demo.yaml", "conf/debug.yaml", str(export)])
    assert cfg.pretrain.system.lr == pytest.approx(study.best_trial.params["pretrain.system.lr"])


def test_failed_trial_is_recorded_and_the_study_goes_on(synth_dir, tracking_home, tmp_path, monkeypatch):
    import torch

    from dsn.systems.pretrain import PretrainSystem

    orig = PretrainSystem.training_step
    monkeypatch.setattr(PretrainSystem, "training_step", lambda self, b, i: orig(self, b, i) * torch.tensor(float("nan")))
    spec = sweep.load_spec("sweeps/tiny.yaml")
    spec.space.pop("net.large_pool")  # no invalid points: every trial trains (and diverges)
    res = sweep.run_sweep(spec, n_trials=2, study_name="f", tracking_home=str(tracking_home), verbose=False,
                          overrides={"data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "c"),
                                     "data.n_folds": 3, "data.progress": False, "net.small_kernel": 50})
    assert [r["state"] for r in res.trials] == ["FAIL", "FAIL"]
    assert all("training diverged" in r["note"] for r in res.trials)
    _, trials = _trial_runs(tracking_home, "f")
    assert len(trials) == 2 and all(r.data.tags["dsn.trial_state"] == "FAILED" and r.info.status == "FAILED" for r in trials)


def test_sigterm_during_a_trial_closes_the_trial_and_its_runs(synth_dir, tracking_home, tmp_path, monkeypatch):
    from dsn.systems.pretrain import PretrainSystem

    def terminated(self, batch, batch_idx):
        raise tracking.Terminated()  # what dsn's SIGTERM handler raises

    monkeypatch.setattr(PretrainSystem, "training_step", terminated)
    spec = sweep.load_spec("sweeps/tiny.yaml")
    spec.space.pop("net.large_pool")
    with pytest.raises(tracking.Terminated):
        sweep.run_sweep(spec, n_trials=2, study_name="t", tracking_home=str(tracking_home), verbose=False,
                        overrides={"data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "c"),
                                   "data.n_folds": 3, "data.progress": False, "net.small_kernel": 50})
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # not left RUNNING; the study stopped
    assert study.trials[0].user_attrs["error"] == "terminated (SIGTERM)"
    parents, trials = _trial_runs(tracking_home, "t")
    assert [r.info.status for r in parents] == ["KILLED"] and [r.info.status for r in trials] == ["KILLED"]
    assert trials[0].data.tags["dsn.trial_state"] == "FAILED"


def test_two_workers_share_one_study(synth_dir, tracking_home, tmp_path):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "dsn", *_argv(synth_dir, tracking_home, tmp_path, "--n_trials", "3", "--study", "w", "--workers", "2")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    parents, trials = _trial_runs(tracking_home, "w")
    assert len(parents) == 1 and sorted(int(r.data.tags["dsn.trial"]) for r in trials) == [0, 1, 2]


# ----------------------------------------------------------------------------- reliability
def _no_trial(monkeypatch):
    """Make any trial that starts fail the test loudly (the checks under test come before the first one)."""
    import dsn.workflows.run as run_module  # where the sweep runner finds run_fit

    def started(*a, **k):
        raise AssertionError("a trial started")

    monkeypatch.setattr(run_module, "run_fit", started)


def _spec_file(tmp_path, **changes) -> Path:
    """sweeps/tiny.yaml without its invalid points (every trial trains), with ``changes``, as a file."""
    raw = yaml.safe_load((ROOT / "sweeps/tiny.yaml").read_text())
    raw["space"].pop("net.large_pool")
    raw.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _overrides(synth_dir, tmp_path, **extra):
    return {"data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "c"), "data.n_folds": 3,
            "data.progress": False, "net.small_kernel": 50, **extra}


def test_multi_device_trials_are_refused_before_any_trial(synth_dir, tracking_home, tmp_path, monkeypatch):
    _no_trial(monkeypatch)
    spec = sweep.load_spec(_spec_file(tmp_path))
    for extra, shown in (({"pretrain.trainer.devices": 2}, "devices=2 x num_nodes=1 gives 2 devices"),
                         ({"pretrain.trainer.devices": 1, "pretrain.trainer.num_nodes": 2}, "num_nodes=2 gives 2")):
        over = _overrides(synth_dir, tmp_path, **{"pretrain.trainer.accelerator": "cpu", **extra})
        with pytest.raises(ConfigError, match=shown) as e:
            sweep.run_sweep(spec, n_trials=1, study_name="d", tracking_home=str(tracking_home), verbose=False, overrides=over)
        assert "--pretrain.trainer.devices 1" in str(e.value) and "\n" not in str(e.value)
    assert not (tracking_home / "optuna.db").exists()  # no study, no run
    assert mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home)).get_experiment_by_name("dsn-sweeps") is None


def _err_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    return lines[0].split(": error: ", 1)[1]


def test_data_that_cannot_load_stops_the_sweep_with_the_fit_message(synth_dir, tracking_home, tmp_path, monkeypatch, capsys):
    from dsn.cli import main

    (tmp_path / "empty").mkdir()
    cases = {"missing": ["--data.data_dir", str(tmp_path / "none")], "empty": ["--data.data_dir", str(tmp_path / "empty")],
             "channel": ["--data.data_dir", str(synth_dir), "--data.channels", "[EEG Nowhere]"]}
    common = ["--data.cache_dir", str(tmp_path / "cache"), "--tracking.home", str(tracking_home)]
    fit_lines = {}
    for name, flags in cases.items():
        assert main(["fit", "--config", "conf/demo.yaml", "--config", "conf/debug.yaml", *flags, *common]) == 1
        fit_lines[name] = _err_line(capsys)
    _no_trial(monkeypatch)
    for name, flags in cases.items():
        assert main(["sweep", "sweeps/tiny.yaml", "--study", name, *flags, *common]) == 1, name
        assert _err_line(capsys) == fit_lines[name], name
    assert not (tracking_home / "optuna.db").exists()
    exp = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home)).get_experiment_by_name("dsn-sweeps")
    assert exp is None  # no study run, no trial run


def test_metric_typo_is_one_line_with_the_closest_name(tmp_path, monkeypatch, synth_dir, tracking_home):
    _no_trial(monkeypatch)
    spec = sweep.load_spec(_spec_file(tmp_path, metric="val/f1_macor"))
    with pytest.raises(ConfigError, match=r"metric='val/f1_macor' is not logged by the systems; did you mean val/f1_macro\?"):
        sweep.run_sweep(spec, n_trials=1, study_name="m", tracking_home=str(tracking_home), verbose=False,
                        overrides=_overrides(synth_dir, tmp_path))
    spec.metric = "val/f1_n1"
    with pytest.raises(ConfigError, match="did you mean val/f1_N1"):
        sweep.check_metric(spec)
    spec.metric = "test/kappa"
    with pytest.raises(ConfigError, match="validation subjects only"):
        sweep.check_metric(spec)
    for name in sweep.metric_names():
        spec.metric = name
        sweep.check_metric(spec)


def test_pruning_callback_warns_once_when_its_metric_is_missing():
    class Trial:
        reports: list = []

        def report(self, value, step):
            self.reports.append((step, value))

    class Trainer:
        sanity_checking = False
        current_epoch = 0
        callback_metrics = {"val/acc": 0.5, "train/loss": 1.0}

    import logging

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the CLI's logging set-up may stop dsn.* records reaching pytest's caplog
    logger = logging.getLogger("dsn.workflows.sweep.runner")
    logger.addHandler(handler)
    try:
        cb = sweep.pruning_callback(Trial(), "val/f1_macor", offset=0)
        cb.on_validation_end(Trainer(), None)
        cb.on_validation_end(Trainer(), None)
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records]
    assert len(warnings) == 1 and "val/f1_macor" in warnings[0] and "val/acc" in warnings[0]
    assert Trial.reports == []


def test_nan_objective_is_failed_in_optuna_and_in_mlflow(synth_dir, tracking_home, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import dsn.workflows.run as run_module  # where the sweep runner finds run_fit

    def nan_fit(cfg, parent_run_id=None, tags=None, run_name=None, kind="fit", **kw):
        uri = tracking.tracking_uri(None, cfg.tracking.home)
        exp = tracking.experiment_id(uri, cfg.tracking.experiment, cfg.tracking.home)
        rid = tracking.start_run(uri, exp, run_name, parent=parent_run_id, tags={"dsn.kind": kind, **tags})
        tracking.set_terminated(uri, rid)
        return SimpleNamespace(run_id=rid, final=SimpleNamespace(metrics={"val/f1_macro": float("nan"), "val/acc": 0.5},
                                                                 model_uri=None))

    monkeypatch.setattr(run_module, "run_fit", nan_fit)
    spec = sweep.load_spec(_spec_file(tmp_path))
    res = sweep.run_sweep(spec, n_trials=1, study_name="n", tracking_home=str(tracking_home), verbose=False,
                          overrides=_overrides(synth_dir, tmp_path))
    assert [r["state"] for r in res.trials] == ["FAIL"] and "is NaN" in res.trials[0]["note"]
    _, trials = _trial_runs(tracking_home, "n")
    assert len(trials) == 1
    run = trials[0]
    assert run.data.tags["dsn.trial_state"] == "FAILED" and "is NaN" in run.data.tags["dsn.error"]
    assert run.info.status == "FAILED" and "objective" not in run.data.metrics


def test_compare_link_opens_the_trials_side_by_side(tracking_home, monkeypatch, capsys):
    from dsn.cli import main

    url = tracking.compare_url(["a1", "b2"], ["7", "7"], "http://127.0.0.1:5123")
    assert url == "http://127.0.0.1:5123/#/compare-runs?runs=%5B%22a1%22%2C%22b2%22%5D&experiments=%5B%227%22%5D"
    uri = tracking.tracking_uri(None, tracking_home)
    exp = tracking.experiment_id(uri, "dsn-sweeps", tracking_home)
    parent = tracking.start_run(uri, exp, "sweep-s", tags={"dsn.kind": "sweep", "dsn.study": "s"})
    ids = {}
    for n, state in ((0, "COMPLETE"), (1, "PRUNED"), (2, "COMPLETE")):
        ids[n] = tracking.start_run(uri, exp, f"trial-{n}", parent=parent, tags={
            "dsn.kind": "trial", "dsn.study": "s", "dsn.trial": str(n), "dsn.trial_state": state})
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["ui", "--study", "s", "--tracking.home", str(tracking_home), "--port", "5123"]) == 0
    out = capsys.readouterr().out
    assert tracking.compare_url([ids[0], ids[2]], [exp], "http://127.0.0.1:5123/") in out and calls
    assert main(["ui", "--study", "nope", "--tracking.home", str(tracking_home)]) == 1
    assert "--study nope: no sweep of that name" in capsys.readouterr().err


def _wait_for(predicate, timeout: float, proc=None, what: str = "") -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _study_states(home, name, storage: str | None = None) -> list[str]:
    storage = storage or f"sqlite:///{Path(home).resolve() / 'optuna.db'}"
    try:
        return [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    except Exception:  # not created yet
        return []


def _running_trial_runs(home, name) -> int:
    try:
        _, trials = _trial_runs(home, name)
    except Exception:
        return 0
    return sum(r.info.status == "RUNNING" for r in trials)


def _long_trials_cmd(spec, synth_dir, home, tmp_path, *extra) -> list[str]:
    return [sys.executable, "-m", "dsn", "sweep", str(spec), *DATA_SET, "--data.data_dir", str(synth_dir),
            "--data.cache_dir", str(tmp_path / "cache"), "--tracking.home", str(home),
            "--pretrain.trainer.max_epochs", "100000", *extra]  # trials that run until they are stopped


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_worker_killed_mid_trial_is_failed_and_retried(backend, synth_dir, tracking_home, tmp_path, request):
    import signal

    storage = request.getfixturevalue("postgres") if backend == "postgresql" else None
    spec = _spec_file(tmp_path, pruner={"name": "none"})
    cmd = _long_trials_cmd(spec, synth_dir, tracking_home, tmp_path, "--study", "k", "--n_trials", "1",
                           "--heartbeat_interval", "1", "--grace_period", "2", *(["--storage", storage] if storage else []))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _running_trial_runs(tracking_home, "k") == 1, 300, proc, "the trial's fit started")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert _study_states(tracking_home, "k", storage) == ["RUNNING"]  # what a dead process leaves behind
    import time

    time.sleep(3)  # past the grace period
    res = sweep.run_sweep(sweep.load_spec(spec), n_trials=1, study_name="k", tracking_home=str(tracking_home),
                          storage=storage, verbose=False, overrides=_overrides(synth_dir, tmp_path),
                          heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="k", storage=storage or f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    dead, retry = study.trials
    assert dead.state.name == "FAIL" and retry.state.name == "COMPLETE" and res.best_trial == 1
    assert retry.params == dead.params and retry.system_attrs.get("failed_trial") == 0
    _, trials = _trial_runs(tracking_home, "k")
    by_trial = {r.data.tags["dsn.trial"]: r for r in trials}
    assert by_trial["0"].info.status == "KILLED" and by_trial["0"].data.tags["dsn.trial_state"] == "FAILED"
    assert by_trial["1"].info.status == "FINISHED" and by_trial["1"].data.tags["dsn.retry_of"] == "0"
    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = c.get_experiment_by_name("dsn-sweeps").experiment_id
    assert not c.search_runs([exp], filter_string="attributes.status = 'RUNNING'")  # nothing left RUNNING


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_a_sweep_with_workers_stops_every_trial_within_seconds(synth_dir, tracking_home, tmp_path):
    import signal
    import time

    spec = _spec_file(tmp_path, pruner={"name": "none"})
    cmd = _long_trials_cmd(spec, synth_dir, tracking_home, tmp_path, "--study", "t2", "--n_trials", "2", "--workers", "2")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _running_trial_runs(tracking_home, "t2") == 2, 400, proc, "both trials' fits started")
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # a real signal to the parent only, as a scheduler sends it
        out, _ = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, out[-2000:]
    assert stopped_in < 60, stopped_in
    assert _study_states(tracking_home, "t2") == ["FAIL", "FAIL"]  # the worker's trial too
    parents, trials = _trial_runs(tracking_home, "t2")
    assert [r.info.status for r in parents] == ["KILLED"]
    assert sorted(r.info.status for r in trials) == ["KILLED", "KILLED"]
    assert all(r.data.tags["dsn.trial_state"] == "FAILED" for r in trials)
    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = c.get_experiment_by_name("dsn-sweeps").experiment_id
    assert not c.search_runs([exp], filter_string="attributes.status = 'RUNNING'")

"""sweeps/architectures.yaml: a sweep whose first parameter is the architecture (a config overlay per trial)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from dsn import config, tracking
from dsn.errors import ConfigError
from dsn.workflows import sweep
from dsn.workflows.sweep.spec import SweepSpec, _check_entries

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_architecture_is_the_first_parameter_and_every_choice_is_an_overlay():
    spec = sweep.load_spec("architectures")
    first, choices = next(iter(spec.space)), spec.space["config"]["choices"]
    assert first == "config" and None in choices
    assert {Path(c).stem for c in choices if c} == {"tinysleepnet", "deepsleepnet-transformer", "chambon2018",
                                                     "attnsleep", "usleep"}
    base = config.load_config(spec.base, spec.set)
    cfg = config.set_keys(base, {"config": "conf/models/attnsleep.yaml", "pretrain.system.lr": 2e-3})
    assert cfg.net.class_path == "AttnSleep" and cfg.stages == ["pretrain"] and cfg.pretrain.system.lr == 2e-3
    assert cfg.net.bn_momentum == 0.001  # demo's DeepFeatureNet key dropped with its class
    assert config.set_keys(base, {"config": None}).net.class_path == "DeepFeatureNet"
    bad = SweepSpec(name="x", path="x.yaml", base=["conf/demo.yaml"],
                               space={"config": {"type": "float", "low": 0, "high": 1}})
    with pytest.raises(ConfigError, match="space.config: a categorical choice of config files"):
        _check_entries(bad)


def test_command_overrides_and_set_win_over_the_sampled_overlay():
    """A ``--key`` given to ``dsn sweep`` (or a key of the spec's ``set``) is kept in every trial, also where the
    trial's overlay sets that key; the sampled values win over both."""
    from dsn.workflows.sweep.runner import pinned_values, trial_values

    spec = sweep.load_spec("architectures")
    overlay = yaml.safe_load((ROOT / "conf/models/tinysleepnet.yaml").read_text())
    assert overlay["finetune"]["batch_size"] != 7  # the overlay sets the key the command pins
    pinned = pinned_values(spec, {"finetune.batch_size": 7, "finetune.system.lr_new": 5e-4}, experiment="e")
    base = config.load_config(spec.base, pinned)
    params = {"config": "conf/models/tinysleepnet.yaml", "finetune.system.lr_new": 2e-3}
    cfg = config.set_keys(base, trial_values(spec, params, pinned))
    assert cfg.net.class_path == overlay["net"]["class_path"]
    assert cfg.finetune.batch_size == 7 and cfg.tracking.experiment == "e"  # pinned, over the overlay
    assert cfg.finetune.system.lr_new == 2e-3  # sampled, over the pinned value
    without = config.set_keys(base, {"config": "conf/models/tinysleepnet.yaml"})
    assert without.finetune.batch_size == overlay["finetune"]["batch_size"]  # what trials did before


@pytest.mark.slow  # about 60 s: two debug-size trials
def test_architecture_sweep_runs_two_trials(synth_dir, tracking_home, tmp_path):
    """Two trials of sweeps/architectures.yaml (its choices narrowed to two light networks, debug size): each trial
    trains the network of its overlay, recorded in MLflow, and the best trial's export names its overlay."""
    spec = sweep.load_spec("sweeps/architectures.yaml")
    spec.base = [*spec.base, "conf/debug.yaml"]
    spec.space["config"]["choices"] = ["conf/models/chambon2018.yaml", "conf/models/tinysleepnet.yaml"]
    spec.sampler = {"name": "random", "seed": 1}
    overrides = {"data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "c"), "data.n_folds": 3,
                 "data.progress": False, "data.num_workers": 0}
    res = sweep.run_sweep(spec, n_trials=2, study_name="arch", tracking_home=str(tracking_home), verbose=False,
                          overrides=overrides)
    study = optuna.load_study(study_name="arch", storage=f"sqlite:///{tracking_home.resolve() / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2, [(t.state, t.user_attrs) for t in study.trials]
    client = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = client.get_experiment_by_name("dsn-sweeps")
    runs = [r for r in client.search_runs([exp.experiment_id], filter_string="tags.`dsn.study` = 'arch'")
            if r.data.tags.get("dsn.kind") == "trial"]
    assert len(runs) == 2, [r.data.tags for r in client.search_runs([exp.experiment_id])]
    for run in runs:
        trial = study.trials[int(run.data.tags["dsn.trial"])]
        overlay = yaml.safe_load((ROOT / trial.params["config"]).read_text())
        assert run.data.params["net.class_path"] == overlay["net"]["class_path"]
    best = sweep.export_best(study, spec, tmp_path / "best.yaml")
    text = best.read_text()
    assert f"--config {study.best_trial.params['config']}" in text and "config:" not in text.split("\n", 4)[-1]
    assert res is not None

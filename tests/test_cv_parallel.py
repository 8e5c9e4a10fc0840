"""`dsn cv --fold K`, `--collect` and `--parallel K`: folds spread over processes pool to a sequential cv's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import test_cv
from test_cv import _project_root  # noqa: F401 - the autouse fixture: run from the project root

from dsn import cli, tracking
from dsn.errors import ConfigError, CvError
from dsn.workflows import cv
from dsn.workflows.cv import procs as cv_procs
from dsn.workflows.cv import store as cv_store
from dsn.workflows.results import Prediction, save_predictions

ROOT = Path(__file__).resolve().parents[1]


def _argv(synth_dir, home, tmp_path, *extra):
    return [*test_cv._argv(synth_dir, home, tmp_path), *extra]  # (its --folds 3 first: a later --folds wins)


def _runs(home: Path, kind: str) -> list:
    c = mlflow.MlflowClient(tracking.tracking_uri(None, home))
    exp = c.get_experiment_by_name("dsn-debug")
    return [] if exp is None else c.search_runs([exp.experiment_id], f"tags.`dsn.kind` = '{kind}'")


def _store(synth_dir, home, tmp_path, folds=3):
    from dsn import config

    fit_cfg, _ = cv.fit_config(_argv(synth_dir, home, tmp_path))
    base = config.set_keys(fit_cfg, {"data.n_folds": folds, "tracking.register": None})
    return fit_cfg, base, cv_store.Store.open(base, folds, True)


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("extra, match", [
    (["--fold", "3"], r"--fold 3: must be in 0..2"),
    (["--fold", "0", "--collect", "true"], r"--fold and --collect cannot be combined"),
    (["--fold", "0", "--parallel", "2"], r"--fold and --parallel cannot be combined"),
    (["--parallel", "0"], r"--parallel 0: must be at least 1"),
    (["--parallel", "2", "--threads_per_fold", "0"], r"--threads_per_fold 0"),
    (["--fold", "1", "--resume_cv", "false"], r"--fold works on the cv run of this config"),
    (["--fold", "1", "--register_fold", "1", "--tracking.log_model", "true"], r"--register_fold with --fold"),
])  # fmt: skip
def test_fold_collect_and_parallel_options_are_checked_before_any_run(synth_dir, tracking_home, tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        cv.main(_argv(synth_dir, tracking_home, tmp_path, "--folds", "3", *extra))
    assert _runs(tracking_home, "cv") == [] and _runs(tracking_home, "fold") == []


def test_collect_without_a_cv_run_says_so(synth_dir, tracking_home, tmp_path, capsys):
    with pytest.raises(CvError, match=r"no cv run of this config"):
        cv.main(_argv(synth_dir, tracking_home, tmp_path, "--folds", "3", "--collect", "true"))
    rc = cli.main(["cv", *_argv(synth_dir, tracking_home, tmp_path, "--folds", "3", "--collect", "true")])
    err = capsys.readouterr().err
    assert rc == 1 and "dsn cv: error: no cv run of this config (--folds 3)" in err
    assert _runs(tracking_home, "cv") == []


# ----------------------------------------------------------------------------- the cv run, found once
def test_cv_runs_created_at_once_on_a_remote_store_keep_the_oldest(synth_dir, tracking_home, tmp_path):
    cfg, base, store = _store(synth_dir, tracking_home, tmp_path)
    first = cv_store.create_cv_run(cfg, base, store, 3)
    time.sleep(0.01)
    second = cv_store.create_cv_run(cfg, base, store, 3)
    assert cv_store.dedupe_cv_runs(store, second) == first
    assert cv_store.dedupe_cv_runs(store, first) == first
    assert [r.info.run_id for r in store.cv_runs()] == [first]
    retired = tracking.get_run(store.uri, second)
    assert retired.info.status == "KILLED" and retired.data.tags["dsn.cv_key"] == f"duplicate-of-{first}"
    assert tracking.get_run(store.uri, first).info.status == "RUNNING"


_RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dsn import config
    from dsn.workflows import cv
    from dsn.workflows.cv import store as cv_store
    argv, go = sys.argv[2:], Path(sys.argv[1])
    cfg, _ = cv.fit_config(argv)
    base = config.set_keys(cfg, {"data.n_folds": 3, "tracking.register": None})
    while not go.exists():
        time.sleep(0.01)
    store = cv_store.Store.open(base, 3, True)
    run_id, created = cv_store.fold_cv_run(cfg, base, store, 3, lambda *a: None)
    print("RUN", run_id, created)
""")


@pytest.mark.slow
def test_fold_processes_starting_at_once_on_a_new_store_share_one_cv_run(synth_dir, tmp_path):
    home = tmp_path / "new-store"  # no database yet: the processes also race to create the SQLite store
    go = tmp_path / "go"
    argv = _argv(synth_dir, home, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(go), *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(3)]
    time.sleep(8)  # let all three import and parse, then start them at the same moment
    go.write_text("go")
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = [line.split()[1:] for o in outs for line in o[0].splitlines() if line.startswith("RUN ")]
    assert len(got) == 3 and len({g[0] for g in got}) == 1  # one cv run for all of them
    assert sorted(g[1] for g in got) == ["False", "False", "True"]  # created by exactly one
    assert len(_runs(home, "cv")) == 1


# ----------------------------------------------------------------------------- pooling the finished folds
def _fake_finished_fold(store, parent, k, stages, rng, elsewhere=False):
    """A finished fold run with its stage runs and predictions (``elsewhere``: trained on another machine
    sharing the tracking server: its predictions only in the stage runs' artifacts)."""
    import shutil

    run = tracking.start_run(store.uri, store.exp_id, f"fold-{k}", parent=parent, tags={"dsn.kind": "fold", "dsn.fold": str(k)})
    for s in stages:
        stage_run = tracking.start_run(store.uri, store.exp_id, s, parent=run, tags={"dsn.stage": s})
        y = rng.integers(0, 5, 50)
        p = np.where(rng.random(50) < 0.7, y, rng.integers(0, 5, 50))
        d = store.home / "checkpoints" / run / s
        d.mkdir(parents=True)
        for split in ("test", "val"):
            save_predictions(d / f"predictions_{split}.npz", [Prediction(f"r{k}", f"s{k}", y, np.eye(5, dtype=np.float32)[p])])
            tracking.log_file(store.uri, stage_run, d / f"predictions_{split}.npz", "predictions")
        tracking.set_terminated(store.uri, stage_run, "FINISHED")
    tracking.set_terminated(store.uri, run, "FINISHED")
    if elsewhere:
        shutil.rmtree(store.home / "checkpoints" / run)
    return run


def test_collect_pools_the_finished_folds_and_names_the_missing_ones(synth_dir, tracking_home, tmp_path, capsys):
    cfg, base, store = _store(synth_dir, tracking_home, tmp_path)
    parent = cv_store.create_cv_run(cfg, base, store, 3)
    tracking.set_terminated(store.uri, parent, "KILLED")
    rng = np.random.default_rng(0)
    _fake_finished_fold(store, parent, 0, base.stages, rng)
    unfinished = tracking.start_run(store.uri, store.exp_id, "fold-2", parent=parent, tags={"dsn.kind": "fold", "dsn.fold": "2"})
    tracking.set_terminated(store.uri, unfinished, "KILLED")
    argv = _argv(synth_dir, tracking_home, tmp_path, "--folds", "3", "--collect", "true", "--out", str(tmp_path / "o"))

    rc = cli.main(["cv", *argv])
    out, err = capsys.readouterr()
    assert rc == 1 and "folds missing (not finished): 1, 2 of 3" in err
    assert "Cross-validation, 1 folds" in out
    partial = json.loads((tmp_path / "o" / "cv_summary.json").read_text())
    assert partial["missing_folds"] == [1, 2] and partial["n_folds"] == 1
    assert "cv_summary.json" not in {a.path for a in mlflow.MlflowClient(store.uri).list_artifacts(parent)}
    assert tracking.get_run(store.uri, parent).info.status == "KILLED"  # a partial pool leaves the cv run as it was

    _fake_finished_fold(store, parent, 1, base.stages, rng)
    remote = _fake_finished_fold(store, parent, 2, base.stages, rng, elsewhere=True)
    summary = cv.main(argv)
    assert summary["missing_folds"] == [] and summary["n_folds"] == 3
    assert (store.home / "checkpoints" / remote / base.stages[-1] / "predictions_test.npz").is_file()  # fetched
    assert summary["folds"][2]["test_subjects"] == ["s2"]
    assert tracking.get_run(store.uri, parent).info.status == "FINISHED"
    assert "cv_summary.json" in {a.path for a in mlflow.MlflowClient(store.uri).list_artifacts(parent)}
    assert cli.main(["cv", *argv]) == 0


def test_fold_lock_makes_a_second_process_wait(tmp_path):
    path = tmp_path / "locks" / "x.lock"
    with cv_procs.file_lock(path) as held:
        assert held
        probe = "import sys; from dsn.workflows.cv.procs import file_lock\nwith file_lock(sys.argv[1], blocking=False) as h: print(h)"
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, cwd=ROOT)
        assert out.stdout.strip() == "False", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "True"


def test_fold_processes_get_their_threads_and_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert cv_procs.visible_gpus() == ["2", "5"]
    env = cv_procs.fold_env(3, "5")
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "5"
    assert cv_procs.fold_env(1, None)["CUDA_VISIBLE_DEVICES"] == "2,5"  # shared: every fold sees every GPU
    cmd = cv_procs.fold_command(["--config", "a.yaml", "--parallel", "4", "--out", "x", "--resume_cv", "false"], 2, "abc")
    assert cmd[1:4] == ["-m", "dsn", "cv"] and cmd[-4:] == ["--fold", "2", "--cv_run_id", "abc"]
    ns = cv.build_parser().parse_args([a for a in cmd[4:] if a not in ("--config", "a.yaml")])  # later flags win
    assert (ns.parallel, ns.out, ns.resume_cv, ns.fold, ns.cv_run_id) == (1, None, True, 2, "abc")


def test_a_failed_fold_process_is_reported_with_its_log_and_the_others_go_on(tmp_path):
    ok = [sys.executable, "-c", "print('fine')"]
    bad = [sys.executable, "-c", "import sys; print('dsn cv: error: broken fold', file=sys.stderr); sys.exit(1)"]
    done = cv_procs.run_fold_processes({0: bad, 1: ok, 2: ok}, 2, tmp_path / "logs", threads=1, n_folds=3)
    by_fold = {p.fold: p for p in done}
    assert sorted(by_fold) == [0, 1, 2] and [by_fold[k].ok for k in range(3)] == [False, True, True]
    assert by_fold[0].error_line() == "dsn cv: error: broken fold"
    assert (tmp_path / "logs" / "fold-1.log").read_text().strip() == "fine"


def test_sigterm_stops_the_fold_processes(tmp_path):
    import signal
    import threading

    sleeper = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
    threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    t0 = time.monotonic()
    with tracking.sigterm_raises(), pytest.raises(tracking.Terminated):
        cv_procs.run_fold_processes({0: sleeper, 1: sleeper, 2: sleeper}, 2, tmp_path / "logs", threads=1)
    assert time.monotonic() - t0 < 30  # the running ones were stopped, not waited for
    logs = sorted((tmp_path / "logs").glob("fold-*.log"))
    assert [f.name for f in logs] == ["fold-0.log", "fold-1.log"]  # the third never started
    for f in logs:
        with pytest.raises(ProcessLookupError):
            os.kill(int(f.read_text().split()[0]), 0)


# ----------------------------------------------------------------------------- the same figures, however spread
def _pooled(summary) -> str:
    keep = {stage: {k: fig[k] for k in ("pooled", "confusion", "n_epochs")} for stage, fig in summary["stages"].items()}
    keep["validation"] = {stage: {k: fig[k] for k in ("pooled", "confusion")} for stage, fig in summary["validation"].items()}
    return json.dumps(keep, sort_keys=True)


@pytest.mark.slow
def test_parallel_and_single_fold_processes_pool_to_the_sequential_figures(synth_dir, _tracking_template, tmp_path, monkeypatch):
    import shutil

    import torch

    homes = {}
    for name in ("seq", "folds", "par"):
        homes[name] = tmp_path / name
        homes[name].mkdir()
        shutil.copy(_tracking_template, homes[name] / "mlflow.db")
    args = lambda name, *extra: _argv(synth_dir, homes[name], tmp_path, "--folds", "2", *extra)  # noqa: E731

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fold processes (--threads_per_fold 1): the same arithmetic
    try:
        seq = cv.main(args("seq", "--out", str(tmp_path / "out-seq")))
    finally:
        torch.set_num_threads(threads)

    # two --fold processes started at once (one of them creates the cv run), fold 1 first, then --collect
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "dsn", "cv", *args("folds", "--fold", str(k))], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (1, 0)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    assert any("folds not finished yet" in o or "every fold has finished" in o for o in outs)
    assert len(_runs(homes["folds"], "cv")) == 1
    collected = cv.main(args("folds", "--collect", "true", "--out", str(tmp_path / "out-folds")))

    par = cv.main(args("par", "--parallel", "2", "--threads_per_fold", "1", "--out", str(tmp_path / "out-par")))

    for s in (collected, par):
        assert s["missing_folds"] == [] and s["n_folds"] == 2
        assert _pooled(s) == _pooled(seq)
    for name in ("folds", "par"):
        on_disk = json.loads((tmp_path / f"out-{name}" / "cv_summary.json").read_text())
        assert _pooled(on_disk) == _pooled(json.loads((tmp_path / "out-seq" / "cv_summary.json").read_text()))
    for name, home in homes.items():
        cv_runs, folds = _runs(home, "cv"), _runs(home, "fold")
        assert len(cv_runs) == 1 and cv_runs[0].info.status == "FINISHED", name
        assert sorted(r.data.tags["dsn.fold"] for r in folds) == ["0", "1"], name
        assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == cv_runs[0].info.run_id for r in folds)
    logs = sorted(p.name for p in (homes["par"] / "cv-logs" / par["cv_run_id"]).glob("*.log"))
    assert logs == ["fold-0.log", "fold-1.log"]
    arts = {a.path for a in mlflow.MlflowClient(tracking.tracking_uri(None, homes["par"])).list_artifacts(par["cv_run_id"], "fold-logs")}
    assert arts == {"fold-logs/fold-0.log", "fold-logs/fold-1.log"}


def test_slurm_array_script_trains_its_task_s_fold_and_collects():
    script = ROOT / "conf" / "slurm" / "cv-array.sh"
    env = {**os.environ, "DSN": "echo", "DSN_CV_ARGS": "--folds 4 --out results/x"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    confs = ["conf/demo.yaml", "conf/debug.yaml"]
    task = subprocess.run(["bash", str(script), *confs], env={**env, "SLURM_ARRAY_TASK_ID": "3"}, capture_output=True,
                          text=True, cwd=ROOT)
    words = task.stdout.split()
    assert task.returncode == 0 and words[:5] == ["cv", "--config", confs[0], "--config", confs[1]]
    ns = cv.build_parser().parse_args(words[1:])  # every option it passes is a dsn cv option
    assert (ns.fold, ns.folds, ns.out, ns.collect) == (3, 4, "results/x", False)
    collect = subprocess.run(["bash", str(script), *confs], env={**env, "DSN_CV_COLLECT": "1"}, capture_output=True,
                             text=True, cwd=ROOT)
    ns = cv.build_parser().parse_args(collect.stdout.split()[1:])
    assert collect.returncode == 0 and ns.collect is True and ns.fold is None
    bare = subprocess.run(["bash", str(script), *confs], env=env, capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode != 0 and "sbatch --array" in bare.stderr

"""Scale-out: the GPU overlay, rank detection, a real MLflow tracking server, and sweep storage on a real PostgreSQL.

The tracking-server and PostgreSQL tests start their servers on 127.0.0.1 themselves (slow-marked; `.ci/run`
runs them). The DDP end-to-end fit is in tests/test_ddp.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import lightning  # noqa: F401  (the project always imports lightning first)
import mlflow
import pytest

from dsn import config
from dsn.workflows.fit import is_global_zero

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.n_folds", "3", "--data.progress", "false", "--net.small_kernel", "50",
    "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32",
    "--finetune.batch_size", "2", "--finetune.seq_len", "5", "--finetune.trainer.limit_val_batches", "1.0",
    "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false",
]  # fmt: skip  (tests/test_workflow.py's TINY, as command-line flags)


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- conf/gpu.yaml
def test_gpu_overlay_resolves_on_cpu(capsys):
    cfg = config.load_config(["conf/demo.yaml", "conf/gpu.yaml"])
    for stage in (cfg.pretrain, cfg.finetune):
        assert stage.trainer.accelerator == "gpu" and stage.trainer.devices == 1
        assert stage.trainer.precision == "bf16-mixed"
    assert cfg.data.num_workers > 0 and cfg.data.pin_memory is True
    assert cfg.pretrain.trainer.max_epochs == 8  # the rest of the demo config is untouched
    from dsn.cli import main

    try:
        code = main(["fit", "--config", "conf/demo.yaml", "--config", "conf/gpu.yaml", "--print_config"])
    except SystemExit as e:  # jsonargparse exits after printing
        code = e.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert "precision: bf16-mixed" in out and "pin_memory: true" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_overlay_mixed_precision_trains_both_stages(synth_dir, tracking_home, tmp_path):
    """The overlay's precision on the CPU (bf16 autocast): the LSTM, the losses and the metrics behave."""
    import numpy as np

    from dsn.workflows.fit import run_fit

    cfg = config.load_config(["conf/demo.yaml", "conf/debug.yaml", "conf/gpu.yaml"], {
        "data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "cache"), "tracking.home": str(tracking_home),
        "data.n_folds": 3, "data.progress": False, "net.small_kernel": 50, "finetune.net.hidden_size": 16,
        "finetune.net.shortcut_size": 32, "finetune.batch_size": 2, "finetune.seq_len": 5,
        "data.num_workers": 0, "data.pin_memory": False,
        "pretrain.trainer.accelerator": "cpu", "finetune.trainer.accelerator": "cpu",
        "pretrain.trainer.enable_progress_bar": False, "finetune.trainer.enable_progress_bar": False,
    })  # fmt: skip
    assert cfg.finetune.trainer.precision == "bf16-mixed"
    res = run_fit(cfg, verbose=False)
    c = mlflow.MlflowClient(res.tracking_uri)
    for st in res.stages:
        losses = [m.value for m in c.get_metric_history(st.run_id, "train/loss")]
        assert losses and all(np.isfinite(losses))
        cm = st.confusion["val"]
        assert cm.sum() == sum(int((p.y_true >= 0).sum()) for p in st.predictions["val"])
        assert 0.0 <= st.metrics["val/f1_macro"] <= 1.0 and np.isfinite(st.metrics["val/kappa"])
        assert c.get_run(st.run_id).data.params[f"{st.name}.trainer.precision"] == "bf16-mixed"


# ----------------------------------------------------------------------------- rank detection
@pytest.mark.parametrize(("env", "zero"), [
    ({}, True),
    ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),  # rank 0 after Lightning started the others
    ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, False),  # a process Lightning's launcher started
    ({"NODE_RANK": "1"}, False),  # the first process of the second node
    ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "3", "LOCAL_RANK": "1"}, False),  # torchrun
    ({"SLURM_PROCID": "2"}, False), ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # SLURM; launcher inside a job
])  # fmt: skip
def test_is_global_zero_reads_the_launchers_environment(monkeypatch, env, zero):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_global_zero() is zero


# ----------------------------------------------------------------------------- MLflow tracking server
def _http_json(base: str, path: str, params: dict | None = None, body: dict | None = None) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _http_bytes(base: str, path: str, params: dict) -> bytes:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        return r.read()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts); stopped at the end."""
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finaliser
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(artifacts),
         "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not start on port {port}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, artifacts
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the server and its uvicorn worker (its own session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fit_against_a_real_tracking_server(mlflow_server, synth_dir, tmp_path, monkeypatch, capsys):
    from dsn.cli import main

    base, artifacts = mlflow_server
    common = ["--config", "conf/demo.yaml", "--config", "conf/debug.yaml", *TINY, "--data.data_dir", str(synth_dir),
              "--data.cache_dir", str(tmp_path / "cache"), "--tracking.home", str(tmp_path / "home")]
    assert main(["fit", *common, "--tracking.uri", base, "--tracking.log_model", "true",
                 "--tracking.register", "deepsleepnet"]) in (0, None)
    assert "Registered model 'deepsleepnet' version 1" in capsys.readouterr().out

    # over HTTP: one run tree with metrics, artifacts, figures and the model
    exp = _http_json(base, "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": "dsn-debug"})["experiment"]
    runs = _http_json(base, "/api/2.0/mlflow/runs/search", body={"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    fits = [rid for rid, t in tags.items() if t.get("dsn.kind") == "fit"]
    stages = {t["dsn.stage"]: rid for rid, t in tags.items() if "dsn.stage" in t}
    assert len(fits) == 1 and set(stages) == {"pretrain", "finetune"} and len(runs) == 3
    assert all(tags[rid]["mlflow.parentRunId"] == fits[0] for rid in stages.values())
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    fit_metrics = {m["key"] for r in runs if r["info"]["run_id"] == fits[0] for m in r["data"]["metrics"]}
    assert {"val/f1_macro", "test/kappa", "pretrain/val/f1_macro"} <= fit_metrics

    def listing(run_id: str, path: str = "") -> set[str]:
        files = _http_json(base, "/api/2.0/mlflow/artifacts/list", {"run_id": run_id, "path": path}).get("files", [])
        return {f["path"] for f in files}

    assert {"config.yaml", "data_summary.json", "summary.json"} <= listing(fits[0])
    ft = stages["finetune"]
    assert {"val/confusion_matrix.json", "val/confusion_matrix.png", "val/confusion_matrix_normalized.png"} <= listing(ft, "val")
    assert any(p.startswith("test/hypnogram_") and p.endswith(".png") for p in listing(ft, "test"))
    assert "checkpoints/selected.ckpt" in listing(ft, "checkpoints")
    png = _http_bytes(base, "/get-artifact", {"path": "val/confusion_matrix.png", "run_uuid": ft})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(_http_bytes(base, "/get-artifact", {"path": "summary.json", "run_uuid": fits[0]}))
    assert set(summary) == {"pretrain", "finetune"}
    # the artifacts went through the server into its artifact store, not into the client's folders
    assert list(artifacts.rglob("confusion_matrix.png")) and not (tmp_path / "home" / "artifacts").exists()

    # the registry: version 1 of deepsleepnet points at the fine-tuning run's model, and it loads over HTTP
    versions = _http_json(base, "/api/2.0/mlflow/model-versions/search", {"filter": "name='deepsleepnet'"})["model_versions"]
    assert [v["version"] for v in versions] == ["1"]
    assert {t["key"]: t["value"] for t in versions[0].get("tags", [])}["run_id"] == fits[0]
    from dsn.workflows.registry import load_scorer

    scorer = load_scorer("models:/deepsleepnet/1", base)
    assert scorer.kind == "sequence"

    # MLFLOW_TRACKING_URI works as well as --tracking.uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    assert main(["fit", *common, "--stages", "[pretrain]", "--tracking.run_name", "from-env"]) in (0, None)
    runs = _http_json(base, "/api/2.0/mlflow/runs/search", body={"experiment_ids": [exp["experiment_id"]],
                                                                "filter": "tags.`mlflow.runName` = 'from-env'"})["runs"]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"


# ----------------------------------------------------------------------------- PostgreSQL sweep storage
# (the `postgres` fixture is in tests/conftest.py: the kill test of tests/test_sweep.py uses it too)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_sweep_workers_share_a_study_on_postgresql(postgres, synth_dir, tracking_home, tmp_path):
    import optuna

    from dsn import tracking

    cmd = [sys.executable, "-m", "dsn", "sweep", "sweeps/tiny.yaml", "--set", "data.n_folds=3", "--set", "data.progress=false",
           "--set", "pretrain.trainer.enable_progress_bar=false", "--set", "net.small_kernel=50",
           "--set", f"data.data_dir={synth_dir}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
           "--tracking.home", str(tracking_home), "--storage", postgres, "--workers", "2", "--n-trials", "3", "--study", "pg"]
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, capture_output=True,
                         text=True, timeout=540)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert sorted(t.number for t in study.trials) == [0, 1, 2]  # neither duplicated nor lost
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = c.get_experiment_by_name("dsn-sweeps")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`dsn.study` = 'pg'")
    parents = [r for r in runs if r.data.tags.get("dsn.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("dsn.kind") == "trial"]
    assert len(parents) == 1 and parents[0].data.tags["optuna.storage"] == postgres
    assert sorted(int(r.data.tags["dsn.trial"]) for r in trials) == [0, 1, 2]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)

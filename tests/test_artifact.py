"""The model artifact (JSON spec + weights): compatibility rule, frozen artifact, no unpickling, pyfunc, upgrade."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsn.artifact import SPEC_FILE, read_artifact, read_spec, write_artifact
from dsn.errors import LegacyModelError, ModelError
from dsn.models import DeepFeatureNet, DeepSleepNet
from dsn.models.scoring import SPEC_FORMAT, SleepScorer
from dsn.models.spec import build_scorer

DATA = Path(__file__).parent / "data"
FROZEN = DATA / "artifact-v1.0"  # written once by write_frozen() below, then committed: never rewrite it
PRE = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 30.0, "unscored": "drop",
       "normalize": "zscore"}


def tiny_scorer(seed: int = 0, n_offsets: int = 1, **extra) -> SleepScorer:
    """A small sequence scorer (random weights, batch-norm statistics moved off their defaults)."""
    torch.manual_seed(seed)
    net_cfg = {"n_filters_first": 8, "n_filters": 8}
    ft_cfg = {"hidden_size": 8, "shortcut_size": 16}
    net = DeepSleepNet(DeepFeatureNet(**net_cfg), **ft_cfg)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return SleepScorer(net, PRE, {"net": net_cfg, "finetune_net": ft_cfg}, seq_len=5, n_offsets=n_offsets,
                       extra=extra).eval()


def night(n: int = 12, seed: int = 0) -> np.ndarray:
    """``(n, 1, 3000)`` float32 epochs in µV."""
    return (np.random.default_rng(seed).standard_normal((n, 1, 3000)) * 30.0).astype(np.float32)


def write_frozen(path: Path = FROZEN) -> None:
    """Write the frozen artifact and, next to it, a fixed input and the probabilities it scores to (run once)."""
    from dsn.workflows.predict import scaled_proba

    scorer = tiny_scorer(n_offsets=2)
    write_artifact(scorer, path)
    x = night()
    np.savez_compressed(path.parent / (path.name + ".expected.npz"), x=x, proba=scorer.predict_proba(x),
                        scaled=scaled_proba(scorer, x))


def frozen_expected() -> dict[str, np.ndarray]:
    with np.load(FROZEN.parent / (FROZEN.name + ".expected.npz")) as f:
        return dict(f)


@pytest.fixture
def refuse_unsafe_load(monkeypatch):
    """``torch.load`` that refuses anything but ``weights_only=True`` (asserts nothing is unpickled)."""
    real = torch.load
    calls = []

    def guarded(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load called with weights_only={kwargs.get('weights_only')!r}")
        calls.append(args[0] if args else kwargs.get("f"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    return calls


# ----------------------------------------------------------------------------- the artifact and its spec
def test_artifact_round_trip_keeps_spec_extra_keys_and_probabilities(tmp_path):
    scorer = tiny_scorer(n_offsets=3, calibration={"temperature": 1.5})
    folder = write_artifact(scorer, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == [SPEC_FILE, "weights.pt"]
    spec = json.loads((folder / SPEC_FILE).read_text())
    assert spec["format_version"] == SPEC_FORMAT and spec["dsn_version"]
    back = read_artifact(folder)
    assert back.extra == {"calibration": {"temperature": 1.5}} and back.n_offsets == 3
    assert back.spec()["calibration"] == {"temperature": 1.5}
    x = night(17)
    np.testing.assert_array_equal(back.predict_proba(x), scorer.predict_proba(x))


def test_an_older_spec_loads_with_defaults_for_the_keys_it_lacks():
    scorer = tiny_scorer()
    old = {"kind": "sequence", "config": scorer.config,  # as written before versioning, normalisation, offsets
           "preprocessing": {"channel": "EEG Pz-Oz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 30.0}}
    back = build_scorer(old, scorer.state_dict())
    assert back.preprocessing["normalize"] == "none"
    assert back.preprocessing["channels"] == ["EEG Pz-Oz"]
    assert (back.seq_len, back.carry_state, back.n_offsets) == (25, True, 1)
    assert back.class_names == ["W", "N1", "N2", "N3", "REM"]
    assert back.spec()["format_version"] == SPEC_FORMAT


def test_a_newer_major_version_is_refused_in_one_line_naming_both_versions(tmp_path):
    folder = write_artifact(tiny_scorer(), tmp_path / "m")
    spec = json.loads((folder / SPEC_FILE).read_text())
    (folder / SPEC_FILE).write_text(json.dumps({**spec, "format_version": "2.0"}))
    with pytest.raises(ModelError) as e:
        read_artifact(folder)
    msg = str(e.value)
    assert "2.0" in msg and SPEC_FORMAT in msg and "\n" not in msg
    # a newer minor version adds keys: it loads, and keeps them
    (folder / SPEC_FILE).write_text(json.dumps({**spec, "format_version": "1.9", "new_key": [1, 2]}))
    assert read_artifact(folder).spec()["new_key"] == [1, 2]
    assert read_spec(folder)["format_version"] == "1.9"


def test_a_damaged_artifact_is_one_line_naming_the_file(tmp_path):
    folder = write_artifact(tiny_scorer(), tmp_path / "m")
    (folder / "weights.pt").write_bytes(b"not a weights file")
    with pytest.raises(ModelError, match=r"weights\.pt"):
        read_artifact(folder)
    (folder / SPEC_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=r"not valid JSON"):
        read_artifact(folder)


def test_the_frozen_artifact_keeps_loading_and_scoring_to_the_same_probabilities(refuse_unsafe_load):
    from dsn.workflows.predict import scaled_proba
    from dsn.workflows.registry import load_scorer

    assert sum(p.stat().st_size for p in FROZEN.iterdir()) < 300_000
    expected = frozen_expected()
    scorer = load_scorer(str(FROZEN))
    assert json.loads((FROZEN / SPEC_FILE).read_text())["format_version"] == "1.0"
    np.testing.assert_allclose(scorer.predict_proba(expected["x"]), expected["proba"], atol=1e-6)
    np.testing.assert_allclose(scaled_proba(scorer, expected["x"]), expected["scaled"], atol=1e-6)
    assert refuse_unsafe_load  # the weights went through torch.load(weights_only=True)


def test_a_checkpoint_with_a_scorer_spec_loads_without_unpickling(tmp_path, refuse_unsafe_load):
    from dsn.workflows.registry import load_scorer

    scorer = tiny_scorer()
    ckpt = tmp_path / "selected.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in scorer.net.state_dict().items()}, "epoch": 3,
                "dsn_scorer": scorer.spec()}, ckpt)
    x = night()
    np.testing.assert_array_equal(load_scorer(str(ckpt)).predict_proba(x), scorer.predict_proba(x))
    pickled = tmp_path / "scorer.pt"
    torch.save(scorer, pickled)  # a whole pickled object, as older dsn versions allowed
    with pytest.raises(LegacyModelError, match=r"no longer loads.*write_artifact.*dsn registry upgrade REF"):
        load_scorer(str(pickled))


# ----------------------------------------------------------------------------- MLflow: current, pyfunc, legacy
def _uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def _log(uri: str, home: Path, scorer: SleepScorer, x: np.ndarray, tags: dict | None = None) -> str:
    """Log ``scorer`` the way ``dsn fit`` does, register it and make it the champion; returns the version."""
    from dsn import tracking

    exp = tracking.experiment_id(uri, "artifact-test", home)
    run = tracking.start_run(uri, exp, "finetune")
    model_uri = tracking.log_model(uri, run, scorer, x[None, :5].copy(), metadata=scorer.spec())
    tracking.set_terminated(uri, run)
    version = tracking.register_model(uri, model_uri, "deepsleepnet", tags=tags)
    tracking.set_alias(uri, "deepsleepnet", version, "champion")
    return version


def _log_pickled(uri: str, home: Path, scorer: SleepScorer, drop: tuple[str, ...], tags: dict) -> str:
    """Log ``scorer`` exactly as dsn did before the artifact format (a pickled mlflow.pytorch model), without
    the attributes in ``drop`` (a model logged before they existed); register it as the champion."""
    import warnings

    import mlflow

    from dsn import tracking

    old = copy.deepcopy(scorer)
    for name in drop:
        del old.__dict__[name]
    exp = tracking.experiment_id(uri, "artifact-test", home)
    run = tracking.start_run(uri, exp, "finetune")
    with tracking._global_uri(uri), warnings.catch_warnings(), mlflow.start_run(run_id=run):
        warnings.simplefilter("ignore")
        info = mlflow.pytorch.log_model(old, name="model", pip_requirements=tracking.pip_requirements(),
                                        serialization_format="pickle", input_example=night(5)[None])
    version = tracking.register_model(uri, info.model_uri, "deepsleepnet", tags=tags)
    tracking.set_alias(uri, "deepsleepnet", version, "champion")
    return version


def test_pyfunc_model_scores_epochs_as_dsn_predict_does(tracking_home, refuse_unsafe_load):
    import mlflow

    from dsn import tracking
    from dsn.workflows.predict import scaled_proba
    from dsn.workflows.registry import load_scorer

    uri = _uri(tracking_home)
    scorer = tiny_scorer(n_offsets=2)
    x = night(14, seed=3)
    _log(uri, tracking_home, scorer, x)
    with tracking._global_uri(uri):
        model = mlflow.pyfunc.load_model("models:/deepsleepnet@champion")
    sig = model.metadata.signature
    assert sig.inputs.inputs[0].shape == (-1, 1, 3000) and sig.inputs.inputs[0].type == np.dtype("float32")
    assert [c.name for c in sig.outputs.inputs] == ["stage", "W", "N1", "N2", "N3", "REM", "trust_verdict", "trust_reasons"]
    assert model.input_example is not None and np.asarray(model.input_example).shape[1:] == (1, 3000)
    out = model.predict(x)
    expected = scaled_proba(scorer, x)
    np.testing.assert_allclose(out[scorer.class_names].to_numpy(), expected, atol=1e-6)
    assert list(out["stage"]) == [scorer.class_names[i] for i in expected.argmax(-1)]
    # the night's verdict, one value for the request (7 minutes: too little sleep for most rules)
    assert out["trust_verdict"].nunique() == 1 and out["trust_verdict"].iloc[0] in ("trusted", "check", "do not use")
    # dsn's own loading of the same reference reads the same files
    np.testing.assert_allclose(load_scorer("models:/deepsleepnet@champion", uri).predict_proba(x),
                               scorer.predict_proba(x), atol=1e-6)


@pytest.mark.parametrize("drop", [(), ("n_offsets", "extra")], ids=["as-logged-today", "before-n_offsets"])
def test_a_pickled_model_is_refused_with_the_upgrade_command_then_upgraded(tracking_home, drop, capsys):
    from dsn import tracking
    from dsn.cli import main as cli
    from dsn.workflows.registry import load_scorer

    uri = _uri(tracking_home)
    scorer = tiny_scorer(seed=1)
    x = night(13, seed=2)
    tags = {"dataset": "synth", "channel": "EEG Fpz-Cz", "val/f1_macro": "0.5"}
    v1 = _log_pickled(uri, tracking_home, scorer, drop, tags)
    home = ["--tracking.home", str(tracking_home)]
    with pytest.raises(LegacyModelError, match=r"`dsn registry upgrade models:/deepsleepnet@champion`"):
        load_scorer("models:/deepsleepnet@champion", uri)
    assert cli(["registry", "show", "models:/deepsleepnet@champion", *home]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("dsn registry: error: model models:/deepsleepnet@champion")
    assert "dsn registry upgrade models:/deepsleepnet@champion" in errors[0]

    assert cli(["registry", "upgrade", "models:/deepsleepnet@champion", *home]) == 0
    assert "aliases champion moved" in capsys.readouterr().out
    new = tracking.model_version(uri, "deepsleepnet", alias="champion")
    assert int(new.version) == int(v1) + 1
    assert {k: new.tags[k] for k in tags} == tags and new.tags["dsn.upgraded_from"] == v1
    upgraded = load_scorer("models:/deepsleepnet@champion", uri)
    assert upgraded.n_offsets == 1
    np.testing.assert_allclose(upgraded.predict_proba(x), scorer.predict_proba(x), atol=1e-6)
    assert cli(["registry", "upgrade", f"models:/deepsleepnet/{new.version}", *home]) == 1  # nothing to do
    assert "already in the current format" in capsys.readouterr().err


def test_current_frozen_and_upgraded_models_score_a_night_alike(tracking_home, monkeypatch):
    """The frozen artifact, the same model logged by today's code and a pickled copy of it after
    `dsn registry upgrade` give the same probabilities, all loaded with torch.load(weights_only=True)."""
    from dsn.workflows import registry

    uri = _uri(tracking_home)
    expected = frozen_expected()
    frozen = read_artifact(FROZEN)
    _log(uri, tracking_home, frozen, expected["x"])
    _log_pickled(uri, tracking_home, frozen, ("extra",), {"stage": "finetune"})
    registry.upgrade(uri, "models:/deepsleepnet/2")
    real = torch.load

    def guarded(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    refs = [str(FROZEN), "models:/deepsleepnet/1", "models:/deepsleepnet/3"]
    scorers = [registry.load_scorer(r, uri) for r in refs]
    for ref, s in zip(refs, scorers):
        np.testing.assert_allclose(s.predict_proba(expected["x"]), expected["proba"], atol=1e-6, err_msg=ref)


# ----------------------------------------------------------------------------- serving (slow)
@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request(tracking_home, tmp_path):
    """`mlflow models serve -m models:/deepsleepnet@champion --env-manager local` on 127.0.0.1."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from dsn.workflows.predict import scaled_proba

    uri = _uri(tracking_home)
    scorer = tiny_scorer(n_offsets=2)
    x = night(9, seed=4)
    _log(uri, tracking_home, scorer, x)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # MLflow starts `uvicorn` by name: the environment's scripts must be on PATH (as in an activated venv)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/deepsleepnet@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "server did not start in 180 s"
            time.sleep(1)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                     data=json.dumps({"inputs": x.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            rows = json.loads(r.read())["predictions"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    expected = scaled_proba(scorer, x)
    assert [row["stage"] for row in rows] == [scorer.class_names[i] for i in expected.argmax(-1)]
    got = np.array([[row[c] for c in scorer.class_names] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)

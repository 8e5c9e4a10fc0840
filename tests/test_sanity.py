"""Impossible signals (dsn.data.sanity) and where they are refused: training, the pyfunc / served model; the
familiarity verdict names the feature behind its score."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_artifact import _log, _uri, night, tiny_scorer
from test_familiarity import SFREQ, _night

from dsn import familiarity
from dsn.data.sanity import FLAT_SHARE, SATURATED_SHARE, check_signals, describe_problems


def _eeg(n_epochs: int = 40, seed: int = 0) -> np.ndarray:
    return _night(seed, n_epochs)  # (n_epochs, 1, 3000) µV, EEG-like


def test_plausible_nights_pass(synth_dir):
    from dsn.data.edf import read_channels

    assert check_signals(_eeg()) == []
    for psg in sorted(Path(synth_dir).glob("*-PSG.edf")):  # seeded synthetic nights, some touching their range
        sig = read_channels(psg, ("EEG Fpz-Cz", "EOG horizontal"), 100.0)
        x = sig.data[:, : sig.data.shape[1] // 3000 * 3000].reshape(2, -1, 3000).transpose(1, 0, 2)
        assert check_signals(x, ["EEG Fpz-Cz", "EOG horizontal"]) == [], psg
    assert check_signals(np.zeros((0, 1, 3000))) == []


def test_impossible_channels_are_named_with_their_share():
    x = np.concatenate([_eeg(), _eeg(seed=1), _eeg(seed=2), _eeg(seed=3)], axis=1)  # 4 channels
    x[:, 0] = 0.0  # all zero
    x[:30, 1] = 7.5  # constant in 75% of the epochs
    x[5, 2, 100] = np.nan
    x[:, 3] = np.clip(x[:, 3], -3.0, 3.0)  # stuck at the rails
    names = ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG", "EMG"]
    problems = check_signals(x, names)
    assert [(p.channel, p.kind) for p in problems] == [("EEG Fpz-Cz", "flat"), ("EEG Pz-Oz", "flat"),
                                                        ("EOG", "nonfinite"), ("EMG", "saturated")]
    assert problems[0].share == 1.0 and problems[1].share == pytest.approx(0.75)
    assert problems[2].share == pytest.approx(1 / x[:, 2].size) and problems[3].share >= SATURATED_SHARE
    line = describe_problems(problems, "n-PSG.edf")
    assert line.startswith("n-PSG.edf (EEG Fpz-Cz): the signal is flat (standard deviation under 0.1 µV) in 100% of")
    assert "n-PSG.edf (EOG): the signal is not a number (NaN or Inf)" in line and "\n" not in line
    y = _eeg()
    y[: int(len(y) * FLAT_SHARE) - 1] = 0.0  # flat, but in fewer than half its epochs: a plausible bad stretch
    assert check_signals(y) == []
    assert [p.kind for p in check_signals(np.full((3, 1, 3000), np.inf))] == ["nonfinite"]


def test_training_refuses_a_flat_night_and_names_it(synth_copy, tmp_path, monkeypatch):
    """normalize: none would train on it silently (zscore/robust already stop at it): refused, named."""
    import dsn.data.datamodule as dmod
    from dsn.data.errors import DataError

    real = dmod.load_recording
    victim = sorted(p.name for p in synth_copy.glob("*-PSG.edf"))[1]

    def flat(f, *a, **k):
        rec = real(f, *a, **k)
        if Path(f.psg).name == victim:  # flattened after its cache entry was judged: an entry without the record
            rec.x = np.zeros_like(np.asarray(rec.x))
            rec.meta = {k: v for k, v in rec.meta.items() if k != "signal_problems"}
        return rec

    monkeypatch.setattr(dmod, "load_recording", flat)
    dm = dmod.SleepEDFDataModule(data_dir=str(synth_copy), cache_dir=str(tmp_path / "c"), normalize="none",
                                 n_folds=3, progress=False)
    with pytest.raises(DataError) as e:
        dm.setup()
    msg = str(e.value)
    assert f"{victim} (EEG Fpz-Cz): the signal is flat" in msg and "move it out of" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- familiarity verdict
@pytest.fixture(scope="module")
def description():
    train = [familiarity.night_features(_night(s), SFREQ) for s in range(6)]
    val = [familiarity.night_features(_night(s), SFREQ, mean_confidence=0.8 + 0.01 * s) for s in (10, 11)]
    return familiarity.describe(train, val, ["EEG Fpz-Cz"])


def test_verdict_names_the_feature_behind_the_score(description):
    short = _night(30, n_epochs=20) * 0.3  # a short night at a third of the amplitude
    out = familiarity.check(familiarity.night_features(short, SFREQ, 0.8), description)
    assert not out["familiar"] and out["largest"]["feature"] == "log_amp"
    line = familiarity.verdict(out)
    assert "largest: amplitude z = -" in line and "on EEG Fpz-Cz" in line and line.endswith("unlike the training data")
    ordinary = familiarity.check(familiarity.night_features(_night(20), SFREQ, 0.8), description)
    assert familiarity.verdict(ordinary).endswith("like the training nights") and "largest: " in familiarity.verdict(ordinary)


def test_score_past_the_threshold_always_comes_with_a_named_warning(description):
    """A feature past the threshold that no rule words (a far larger skewness of the same sign) is still named."""
    feats = familiarity.night_features(_night(20), SFREQ, 0.8)
    ref = description["stats"]["skew"]
    feats["skew"] = [ref["median"][0] + np.sign(ref["median"][0]) * 3 * description["threshold"] * ref["scale"][0]]
    out = familiarity.check(feats, description)
    assert out["score"] > out["threshold"] and not out["familiar"]
    assert out["warnings"] == [f"unusual skewness on EEG Fpz-Cz: z = {out['largest']['z']:+.1f} against the training nights"]


def test_a_flat_channel_is_not_called_clipped(description):
    out = familiarity.check(familiarity.night_features(np.full((40, 1, 3000), 3.0, np.float32), SFREQ, 0.8), description)
    assert any("flat channel" in w for w in out["warnings"])
    assert not any("clipped" in w for w in out["warnings"]), out["warnings"]


# ----------------------------------------------------------------------------- the pyfunc model
@pytest.fixture
def pyfunc_model(tracking_home):
    import mlflow

    from dsn import tracking

    uri = _uri(tracking_home)
    _log(uri, tracking_home, tiny_scorer(), night(6, seed=1))
    with tracking._global_uri(uri):
        return mlflow.pyfunc.load_model("models:/deepsleepnet@champion"), uri


@pytest.mark.parametrize("bad", ["nan", "inf", "flat", "shape"])
def test_pyfunc_refuses_impossible_input_as_invalid_parameter(pyfunc_model, bad):
    from mlflow.exceptions import MlflowException

    model, _ = pyfunc_model
    x = night(6, seed=2)
    assert len(model.predict(x)) == 6
    if bad == "nan":
        x[2, 0, 10:20] = np.nan
    elif bad == "inf":
        x[0, 0, 0] = np.inf
    elif bad == "flat":
        x[:] = 0.0
    else:
        x = x[:, :, :1000]
    with pytest.raises(MlflowException) as e:
        model.predict(x)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and e.value.get_http_status_code() == 400
    assert ("NaN or Inf" if bad in ("nan", "inf") else "flat" if bad == "flat" else "3000") in e.value.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: str) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body.encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_served_model_answers_nan_with_400(pyfunc_model, tracking_home):
    _, uri = pyfunc_model
    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(root), "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/deepsleepnet@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        x = night(3, seed=4).astype(float)
        good = json.dumps({"inputs": x.tolist()})
        deadline = time.monotonic() + 150
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _post(port, good)
                break
            except OSError:
                time.sleep(1.0)
        assert status == 200, "the model server did not answer"
        x[1, 0, 5] = np.nan
        status, text = _post(port, json.dumps({"inputs": x.tolist()}))  # Python's json writes NaN, as many clients
        assert status == 400 and "NaN or Inf" in text, text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_a_cache_entry_records_its_signal_problems_so_a_warm_setup_reads_no_sample(synth_copy, tmp_path):
    """The training check is judged once, when the cache entry is written; a warm set-up takes it from meta.json
    (an entry without it, from an older dsn, is checked from its samples)."""
    import json

    from dsn.data.datasets import find_recordings
    from dsn.data.recording import Preprocessing, load_recording
    from dsn.data.sanity import recorded_problems

    f = find_recordings(synth_copy)[0]
    prep = Preprocessing()
    rec = load_recording(f, prep, tmp_path / "cache")
    assert rec.meta["signal_problems"] == []
    meta_file = next((tmp_path / "cache").rglob("meta.json"))
    meta = json.loads(meta_file.read_text())
    assert meta["signal_problems"] == []
    flat = np.zeros_like(np.asarray(rec.x))
    recorded = {"signal_problems": [{"channel": "EEG Fpz-Cz", "kind": "flat", "share": 1.0}]}
    assert [p.kind for p in recorded_problems(recorded, rec.x)] == ["flat"]  # taken from meta, not the samples
    assert recorded_problems({}, rec.x) == [] and [p.kind for p in recorded_problems({}, flat, ["EEG Fpz-Cz"])] == ["flat"]

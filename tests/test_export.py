"""``dsn export``: ONNX (onnxruntime) and TorchScript (torch.jit.load) files score a night as ``dsn predict`` does."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from test_artifact import FROZEN, tiny_scorer

#: Tolerance of the comparisons with ``dsn predict``: its CSV has 6 decimals (rounding 5e-7), and float32
#: kernels of another runtime differ by ~1e-7 per probability.
ATOL = 2e-6


def _stream(run, scorer, x: np.ndarray, n_offsets: int | None = None) -> np.ndarray:
    """A night through an exported sequence model, chunk by chunk with the carried (h, c), averaged over the
    scorer's chunk offsets (what a caller of the exported file does)."""
    from dsn.workflows.export import zero_state

    n_off = n_offsets or scorer.n_offsets
    total = 0.0
    for k in range(n_off):
        h, c = zero_state(scorer)
        out = []
        for i, j in scorer.chunk_bounds(len(x), round(k * scorer.seq_len / n_off)):
            p, h, c = run(x[i:j], h, c)
            out.append(p)
        total = total + np.concatenate(out)
    return total / n_off


def _predict_like(run, scorer, x: np.ndarray) -> np.ndarray:
    """dsn predict's two passes (:func:`dsn.workflows.predict.scaled_proba`) driven by an exported model."""
    from dsn.data.normalize import normalize, sleep_window

    method = scorer.preprocessing["normalize"]
    first = _stream(run, scorer, normalize(x, method, scorer.sfreq), n_offsets=1)  # one streaming, as predict
    window = sleep_window(first.argmax(-1), scorer.preprocessing["trim_minutes"], scorer.preprocessing["epoch_sec"])
    proba = first.copy()  # outside the sleep period: the first pass's (wake)
    proba[window] = _stream(run, scorer, normalize(x[window], method, scorer.sfreq))
    return proba


def _runners(tmp_path, ref: str):
    import onnxruntime as ort

    from dsn.cli import main as cli

    assert cli(["export", ref, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert cli(["export", ref, "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    ts = torch.jit.load(str(tmp_path / "m.pt"))

    def onnx_run(x, h, c):
        return session.run(None, {"epochs": x, "h": h, "c": c})

    def ts_run(x, h, c):
        with torch.no_grad():
            return [t.numpy() for t in ts(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x, h, c)))]

    return session, onnx_run, ts_run


def test_exported_files_score_a_night_as_dsn_predict(synth_dir, tmp_path, capsys):
    from dsn.cli import main as cli
    from dsn.workflows.registry import load_scorer

    scorer = load_scorer(str(FROZEN))  # zscore normalisation, 2 chunk offsets, official BiLSTM
    psg = sorted(synth_dir.glob("*-PSG.edf"))[0]
    assert cli(["predict", str(psg), "--model", str(FROZEN), "--out", str(tmp_path / "pred")]) == 0
    with open(next((tmp_path / "pred").glob("*_hypnogram.csv"))) as f:
        rows = list(csv.DictReader(f))
    predicted = np.array([[float(r[f"p_{c}"]) for c in scorer.class_names] for r in rows])
    session, onnx_run, ts_run = _runners(tmp_path, str(FROZEN))
    meta = json.loads(session.get_modelmeta().custom_metadata_map["dsn_model"])
    assert meta["preprocessing"]["normalize"] == "zscore" and meta["seq_len"] == scorer.seq_len
    assert [i.name for i in session.get_inputs()] == ["epochs", "h", "c"]
    from dsn.data.psg import read_epochs

    x = read_epochs(psg, "EEG Fpz-Cz", 100.0, 30.0).x
    assert len(x) == len(predicted) > 2 * scorer.seq_len
    for run in (onnx_run, ts_run):
        np.testing.assert_allclose(_predict_like(run, scorer, x), predicted, atol=ATOL)


@pytest.mark.parametrize("mode", ["pytorch", "epoch"])
def test_other_networks_export_with_the_same_probabilities(tmp_path, mode):
    import onnxruntime as ort

    from dsn.artifact import write_artifact
    from dsn.models import FeatureClassifierNet
    from dsn.models.scoring import SleepScorer
    from dsn.workflows.export import export

    base = tiny_scorer()
    if mode == "epoch":
        scorer = SleepScorer(FeatureClassifierNet(base.feature_net), base.preprocessing, {"net": base.config["net"]}).eval()
    else:
        torch.manual_seed(0)
        cfg = {**base.config["finetune_net"], "bidirectional_mode": "pytorch", "n_layers": 2}
        from dsn.models import DeepFeatureNet, DeepSleepNet

        scorer = SleepScorer(DeepSleepNet(DeepFeatureNet(**base.config["net"]), **cfg), base.preprocessing,
                             {"net": base.config["net"], "finetune_net": cfg}, seq_len=4).eval()
    write_artifact(scorer, tmp_path / "m")
    x = (np.random.default_rng(5).standard_normal((11, 1, 3000))).astype(np.float32)
    expected = scorer.predict_proba(x)
    session = ort.InferenceSession(str(export(scorer, "onnx", tmp_path / "m.onnx")))
    ts = torch.jit.load(str(export(scorer, "torchscript", tmp_path / "m.pt")))
    if mode == "epoch":
        np.testing.assert_allclose(session.run(None, {"epochs": x})[0], expected, atol=ATOL)
        np.testing.assert_allclose(ts(torch.from_numpy(x)).detach().numpy(), expected, atol=ATOL)
    else:
        def ts_run(a, h, c):
            with torch.no_grad():
                return [t.numpy() for t in ts(*(torch.from_numpy(np.ascontiguousarray(v)) for v in (a, h, c)))]

        np.testing.assert_allclose(_stream(lambda a, h, c: session.run(None, {"epochs": a, "h": h, "c": c}), scorer, x),
                                   expected, atol=ATOL)
        np.testing.assert_allclose(_stream(ts_run, scorer, x), expected, atol=ATOL)


def test_export_refuses_an_unknown_format_before_writing(tmp_path, capsys):
    from dsn.cli import main as cli

    with pytest.raises(SystemExit) as e:
        cli(["export", str(FROZEN), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert e.value.code == 2 and "tflite" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

"""Registry + `dsn predict`: a fitted model is registered, promoted, and scores a night with no hypnogram."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dsn.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def fitted(synth_dir, _tracking_template, tmp_path_factory):
    """One tiny two-stage fit that logs and registers its model (shared by this module's tests)."""
    from dsn import config
    from dsn.workflows.fit import run_fit

    tmp = tmp_path_factory.mktemp("predict")
    home = tmp / "mlruns"
    home.mkdir()
    shutil.copy(_tracking_template, home / "mlflow.db")
    cfg = config.load_config(["conf/demo.yaml", "conf/debug.yaml"], {
        "data.data_dir": str(synth_dir), "data.cache_dir": str(tmp / "cache"), "data.n_folds": 3, "data.progress": False,
        "net.small_kernel": 50, "finetune.net.hidden_size": 16, "finetune.net.shortcut_size": 32,
        "finetune.batch_size": 2, "finetune.seq_len": 5, "pretrain.trainer.enable_progress_bar": False,
        "finetune.trainer.enable_progress_bar": False, "tracking.home": str(home), "tracking.log_model": True,
        "tracking.register": "deepsleepnet"})  # fmt: skip
    res = run_fit(cfg, verbose=False)
    return res, home, tmp


def test_fit_registers_promote_and_predict(fitted, synth_dir, tmp_path, capsys):
    from dsn.data.datasets import expert_labels
    from dsn.hypnogram import read_csv

    res, home, _ = fitted
    assert res.registered == ("deepsleepnet", "1")
    assert cli(["registry", "promote", "deepsleepnet", "1", "--alias", "champion", "--tracking.home", str(home)]) == 0
    assert cli(["registry", "list", "--tracking.home", str(home)]) == 0
    listing = capsys.readouterr().out
    assert "deepsleepnet" in listing and "champion" in listing and "finetune" in listing
    # a night whose hypnogram is not beside it
    night = tmp_path / "night"
    night.mkdir()
    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    shutil.copy(psg, night / psg.name)
    hyp = next(Path(synth_dir).glob(psg.name[:7] + "*-Hypnogram.edf"))
    out = tmp_path / "out"
    rc = cli(["predict", str(night / psg.name), "--model", "models:/deepsleepnet@champion", "--out", str(out),
              "--hypnogram", str(hyp), "--tracking.home", str(home)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    name = psg.name[: -len("-PSG.edf")]
    table = read_csv(out / f"{name}_hypnogram.csv")
    summary = json.loads((out / f"{name}_summary.json").read_text())
    n = summary["n_epochs"]
    assert len(table.stages) == n and table.proba.shape == (n, 5)
    np.testing.assert_allclose(table.proba.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(table.proba.argmax(1), table.stages)
    np.testing.assert_array_equal(expert_labels(out / f"{name}_hypnogram.edf", night / psg.name, n), table.stages)  # EDF+ reads back
    assert (out / f"{name}_hypnogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = summary["statistics"]
    assert stats["TIB"] == pytest.approx(n * 0.5)
    assert summary["agreement"]["n_epochs"] > 0 and "kappa" in summary["agreement"]
    assert "TST" in printed and "kappa" in printed
    # same probabilities from the registry reference, the run reference and the checkpoint path
    from dsn.data.psg import read_epochs
    from dsn.workflows.registry import load_scorer

    x = read_epochs(night / psg.name).x
    ckpt = home / "checkpoints" / res.run_id / "finetune" / "selected.ckpt"
    refs = ["models:/deepsleepnet@champion", "models:/deepsleepnet/1", f"runs:/{res.stage('finetune').run_id}/model", str(ckpt)]
    probas = [load_scorer(r, f"sqlite:///{home.resolve()}/mlflow.db").predict_proba(x) for r in refs]
    for p in probas[1:]:
        np.testing.assert_allclose(p, probas[0], atol=1e-6)
    np.testing.assert_allclose(probas[0], table.proba, atol=2e-6)


def test_streaming_equals_chunks_fed_one_by_one(fitted):
    import torch

    res, _, _ = fitted
    scorer = res.stage("finetune").scorer.eval()
    x = np.random.default_rng(0).standard_normal((23, 1, 3000)).astype(np.float32)
    proba = scorer.raw_proba(x, batch_size=7)  # the network's own softmax (predict_proba is calibrated)
    state, outs = None, []
    with torch.no_grad():
        for i in range(0, 23, scorer.seq_len):
            logits, state = scorer.net(torch.from_numpy(x[None, i : i + scorer.seq_len]), state, return_state=True)
            outs.append(torch.softmax(logits[0], -1))
    np.testing.assert_allclose(proba, torch.cat(outs).numpy(), atol=1e-5)


def test_predict_errors_are_one_line(fitted, synth_dir, tmp_path, capsys):
    res, home, _ = fitted
    ckpt = str(home / "checkpoints" / res.run_id / "finetune" / "selected.ckpt")
    psg = str(sorted(Path(synth_dir).glob("*-PSG.edf"))[0])
    cases = [
        (["predict", psg, "--model", ckpt, "--out", str(tmp_path), "--channel", "EEG C3"], ["EEG C3", "EEG Fpz-Cz", "--channel"]),
        (["predict", str(tmp_path / "x.edf"), "--model", ckpt, "--out", str(tmp_path)], ["x.edf"]),
        (["predict", psg, "--model", "models:/nosuchmodel@champion", "--out", str(tmp_path), "--tracking.home", str(home)],
         ["models:/nosuchmodel@champion", "dsn registry list"]),
        (["predict", psg, "--model", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)], ["none.ckpt", "not found"]),
    ]
    (tmp_path / "x.edf").write_text("this is not an EDF file\n" * 20)
    for argv, words in cases:
        assert cli(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("dsn predict: error:") and "\n" not in err, err
        assert all(w in err for w in words), (words, err)


def test_registry_show(fitted, capsys):
    res, home, _ = fitted
    assert cli(["registry", "show", "models:/deepsleepnet/1", "--tracking.home", str(home)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == "1" and info["scorer"]["kind"] == "sequence"
    assert info["scorer"]["preprocessing"]["channels"] == ["EEG Fpz-Cz"] and info["scorer"]["class_names"][1] == "N1"
    assert info["scorer"]["preprocessing"]["source_sfreq"] == [100.0] and info["scorer"]["preprocessing"]["channel_aliases"] == {}
    assert info["tags"]["channel"] == "EEG Fpz-Cz" and "git_commit" in info["tags"] or "dataset" in info["tags"]


def test_predict_confidence_columns_flags_and_annotations(fitted, synth_dir, tmp_path, capsys):
    import mne

    from dsn.hypnogram import read_csv

    res, home, _ = fitted
    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    name = psg.name[: -len("-PSG.edf")]
    ckpt = str(home / "checkpoints" / res.run_id / "finetune" / "selected.ckpt")
    first = tmp_path / "first"
    assert cli(["predict", str(psg), "--model", ckpt, "--out", str(first)]) == 0
    # a threshold at the night's median confidence flags about half the epochs, whatever the tiny model does
    threshold = float(np.median(read_csv(first / f"{name}_hypnogram.csv").proba.max(1)))
    out = tmp_path / "out"
    assert cli(["predict", str(psg), "--model", ckpt, "--out", str(out), "--low_confidence", str(threshold)]) == 0
    printed = capsys.readouterr().out
    table = read_csv(out / f"{name}_hypnogram.csv")
    np.testing.assert_allclose(table.confidence, table.proba.max(1), atol=1e-6)
    p = np.clip(table.proba, 1e-12, 1)
    np.testing.assert_allclose(table.entropy, -(p * np.log(p)).sum(1) / np.log(5), atol=1e-4)
    np.testing.assert_array_equal(table.low_confidence, table.confidence < threshold)
    flagged = table.low_confidence
    assert 0 < flagged.sum() < len(flagged)
    summary = json.loads((out / f"{name}_summary.json").read_text())
    c = summary["confidence"]
    assert c["threshold"] == pytest.approx(threshold) and c["low_confidence_epochs"] == int(flagged.sum())
    assert c["low_confidence_minutes"] == pytest.approx(flagged.sum() * 0.5)
    assert sum(c["low_confidence_stages_min"].values()) == pytest.approx(c["low_confidence_minutes"])
    assert c["low_confidence_stages_min"]["W"] == pytest.approx(0.5 * ((table.stages == 0) & flagged).sum())
    assert f"{c['low_confidence_minutes']:.1f} min" in printed
    # the flagged epochs, as EDF+ annotations of their own file
    ann = mne.read_annotations(out / f"{name}_low_confidence.edf")
    assert set(ann.description) == {"Low confidence"}
    covered = np.zeros(len(flagged), dtype=bool)
    for onset, duration in zip(ann.onset, ann.duration):
        covered[int(round(onset / 30)) : int(round((onset + duration) / 30))] = True
    np.testing.assert_array_equal(covered, flagged)


def test_predict_warns_on_an_altered_night_and_not_on_an_ordinary_one(fitted, synth_dir, tmp_path, capsys):
    """The fit stores a description of its training nights; `dsn predict` compares a new night with it: a test
    subject's night as recorded passes without a warning, the same night at 5x the amplitude (a second site's
    recorder gain, `dsn synth --site_gain 5`) prints a warning line naming the amplitude."""
    from dsn.data.synth import SiteShift, write_recording

    res, home, _ = fitted
    ckpt = str(home / "checkpoints" / res.run_id / "finetune" / "selected.ckpt")
    from dsn.data.edf import read_channels
    from dsn.familiarity import CLIP_LIMIT, night_features

    def clipped(name: str) -> float:  # share of samples at the channel's extreme value (a saturated recorder)
        x = read_channels(Path(synth_dir) / f"{name}-PSG.edf", ("EEG Fpz-Cz",), 100.0).data
        return night_features(x[: x.shape[1] // 3000 * 3000].reshape(1, -1, 3000).transpose(1, 0, 2), 100.0)["clip"][0]

    # an ordinary night: a test subject's, not saturated (some synthetic nights hit the EDF's physical range)
    name = next((n for n in res.data_summary["recordings"]["test"] if clipped(n) <= CLIP_LIMIT), None)
    if name is None:
        pytest.skip("every test night of this synthetic set is saturated")
    psg = Path(synth_dir) / f"{name}-PSG.edf"
    assert cli(["predict", str(psg), "--model", ckpt, "--out", str(tmp_path / "ordinary")]) == 0
    printed = "".join(capsys.readouterr())
    summary = json.loads((tmp_path / "ordinary" / f"{name}_summary.json").read_text())
    assert "warning:" not in printed, summary["familiarity"]
    assert summary["familiarity"]["familiar"] is True
    subject, night = int(name[3:5]), int(name[5])
    loud, _ = write_recording(tmp_path / "site", subject, night, hours=1.5, seed=0, site=SiteShift(gain=5.0))
    assert cli(["predict", str(loud), "--model", ckpt, "--out", str(tmp_path / "loud")]) == 0
    printed = "".join(capsys.readouterr())
    assert "warning:" in printed and "amplitude" in printed, printed
    summary = json.loads((tmp_path / "loud" / f"{name}_summary.json").read_text())
    assert summary["familiarity"]["familiar"] is False and summary["familiarity"]["score"] > summary["familiarity"]["threshold"]


def test_predict_gives_each_night_a_verdict_and_strict_exits_on_do_not_use(fitted, synth_dir, tmp_path, capsys):
    """The summary carries the night's verdict (plausibility rules, familiarity); ``--norms`` overrides the
    ranges; ``--strict`` makes 'do not use' a non-zero exit while the outputs are still written."""
    _, home, tmp = fitted
    ckpt = next(Path(tmp).rglob("finetune/selected.ckpt"))
    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    name = psg.name[: -len("-PSG.edf")]
    out = tmp_path / "plain"
    assert cli(["predict", str(psg), "--model", str(ckpt), "--out", str(out)]) == 0
    trust = json.loads((out / f"{name}_summary.json").read_text())["trust"]
    assert trust["verdict"] in ("trusted", "check", "do not use")
    assert {f["name"] for f in trust["findings"]} >= {"total_sleep_time", "rem_share"}
    printed = capsys.readouterr()
    assert f"verdict: {trust['verdict']}" in printed.out + printed.err
    # ranges no night can meet: every night is 'do not use', named by its rule
    norms = tmp_path / "norms.yaml"
    norms.write_text("rules:\n  total_sleep_time:\n    check: [100000, null]\n    do_not_use: [10000, null]\n"
                     "    min_recording_min: 0\n")
    strict = tmp_path / "strict"
    rc = cli(["predict", str(psg), "--model", str(ckpt), "--out", str(strict), "--norms", str(norms), "--strict"])
    err = capsys.readouterr().err
    assert rc == 3 and name in err
    trust = json.loads((strict / f"{name}_summary.json").read_text())["trust"]
    assert trust["verdict"] == "do not use" and "total_sleep_time" in trust["rules"]
    # a bad override file: one line before any night is scored
    norms.write_text("rules:\n  rem_shares:\n    check: [0, 1]\n")
    assert cli(["predict", str(psg), "--model", str(ckpt), "--out", str(tmp_path / "bad"), "--norms", str(norms)]) != 0
    assert "rem_shares" in capsys.readouterr().err and not (tmp_path / "bad").exists()

"""The network is configuration (issue 31): `net.class_path` / `finetune.net.class_path` through `dsn fit`,
the model artifact and `dsn predict`; the config errors; DeepSleepNet's configs unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dsn import config
from dsn.cli import main as cli
from dsn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
#: Debug-size overrides of every fit here (sizes as tests/test_workflow.py's).
SMALL = {
    "data.n_folds": 3, "data.progress": False, "data.num_workers": 0, "finetune.batch_size": 2, "finetune.seq_len": 5,
    "finetune.trainer.limit_val_batches": 1.0, "pretrain.trainer.enable_progress_bar": False,
    "finetune.trainer.enable_progress_bar": False, "pretrain.trainer.accelerator": "cpu",
    "finetune.trainer.accelerator": "cpu", "tracking.log_model": True,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(TESTS))  # the user's package: tests/fake_nets


def _state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("conf", ["conf/demo.yaml", "conf/paper.yaml", "conf/recommended.yaml", "conf/recommended-eog.yaml"])
def test_deepsleepnet_configs_build_the_same_networks(conf):
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.models.networks import encoder_config, sequence_config
    from dsn.workflows import build

    cfg = config.load_config([conf])
    assert cfg.net.class_path == "DeepFeatureNet" and cfg.finetune.net.class_path == "bilstm"
    flat = {k: v for k, v in config.to_dict(cfg.net).items() if k not in ("class_path", "init_args")}
    ft_flat = {k: v for k, v in config.to_dict(cfg.finetune.net).items() if k not in ("class_path", "init_args")}
    torch.manual_seed(0)
    before = DeepSleepNet(DeepFeatureNet(**flat), **ft_flat)  # what build.py built before class paths
    torch.manual_seed(0)
    fnet = build.feature_net(cfg)
    from dsn.models.networks import build_sequence_net

    after = build_sequence_net(config.to_dict(cfg.finetune.net), fnet)
    assert type(after) is DeepSleepNet and type(fnet) is DeepFeatureNet
    assert _state_shapes(after) == _state_shapes(before)
    for k, v in before.state_dict().items():  # same initialisation for the same seed
        assert torch.equal(v, after.state_dict()[k]), k
    # the artifact spec keeps the flat form (artifacts read by older dsn versions as before)
    assert encoder_config(config.to_dict(cfg.net), fnet) == flat
    assert sequence_config(config.to_dict(cfg.finetune.net)) == ft_flat


@pytest.mark.parametrize("overrides, expected", [
    ({"net.class_path": "TinySleepNetEncoder", "net.init_args": {"sfreq": 50}}, ["net.init_args.sfreq", "data.sfreq"]),
    ({"net.init_args": {"n_chans": 2}}, ["net.init_args.n_chans", "data.channels"]),
    ({"finetune.net.class_path": "lstm", "finetune.net.init_args": {"n_features": 8}}, ["finetune.net.init_args.n_features"]),
    ({"net.class_path": "TinySleepNetEncoder", "net.small_kernel": 50}, ["net.small_kernel", "DeepFeatureNet", "TinySleepNetEncoder"]),
    ({"finetune.net.class_path": "transformer", "finetune.net.bn_momentum": 0.1}, ["finetune.net.bn_momentum", "transformer"]),
    ({"net.class_path": "nopkg_xyz.Net"}, ["nopkg_xyz.Net", "pip install nopkg_xyz"]),
    ({"net.class_path": "fake_nets.NoSuchNet"}, ["fake_nets", "NoSuchNet"]),
    ({"finetune.net.class_path": "gru"}, ["finetune.net.class_path", "bilstm, lstm, transformer, none"]),
    ({"net.class_path": "fake_nets.TinyStager", "net.bn_momentum": 0.1}, ["net.bn_momentum", "fake_nets.TinyStager"]),
    ({"net.class_path": "AttnSleep", "data.channels": ["EEG Fpz-Cz", "EOG horizontal"]},
     ["AttnSleep takes one channel", "--data.channels '[EEG Fpz-Cz]'"]),
    ({"finetune.net.class_path": "USleep"}, ["whole-sequence", "net.class_path: RawEpochs"]),
    ({"net.class_path": "USleep"}, ["whole-sequence", "finetune.net.class_path"]),
    ({"net.class_path": "fake_nets.TinyStager", "net.bn_momentum": 0.001}, ["pretrain.system.l2_layers", "none"]),
    ({"net.class_path": "fake_nets.TinyStager", "net.bn_momentum": 0.001, "net.init_args": {"n_filter": 4}}, ["n_filter"]),
])  # fmt: skip
def test_network_config_errors_are_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        config.load_config(["conf/demo.yaml"], overrides)
    msg = str(err.value)
    assert "\n" not in msg and all(e in msg for e in expected), msg


def test_short_names_and_recipes_parse():
    from dsn.models import EncoderSequenceNet, ExternalEncoder, TinySleepNetEncoder, TransformerSequenceNet
    from dsn.models.networks import build_encoder, build_sequence_net

    for path in ("TinySleepNetEncoder", "dsn.models.TinySleepNetEncoder", "dsn.models.tinysleepnet.TinySleepNetEncoder"):
        assert type(build_encoder({"class_path": path})) is TinySleepNetEncoder
    tiny = config.load_config(["conf/paper.yaml", "conf/models/tinysleepnet.yaml"])
    assert tiny.stages == ["finetune"] and tiny.finetune.system.l2_layers == "all"
    fnet = build_encoder(config.to_dict(tiny.net))
    assert type(fnet) is TinySleepNetEncoder and fnet.n_features == 2048
    net = build_sequence_net(config.to_dict(tiny.finetune.net), fnet)
    assert sum(p.numel() for p in net.parameters()) == 1_516_421  # docs/networks.md's TinySleepNet at 100 Hz
    tr = config.load_config(["conf/paper.yaml", "conf/models/deepsleepnet-transformer.yaml"])
    net = build_sequence_net(config.to_dict(tr.finetune.net), build_encoder(config.to_dict(tr.net)))
    assert isinstance(net, EncoderSequenceNet) and isinstance(net.sequence_net, TransformerSequenceNet)
    # conf/models/chambon2018.yaml's keys fit braindecode's constructor, with two channels
    ch = config.parse(["--config", "conf/paper.yaml", "--config", "conf/models/chambon2018.yaml",
                       "--data.channels", "[EEG Fpz-Cz, EOG horizontal]"])
    enc = build_encoder(config.to_dict(ch.net))
    assert isinstance(enc, ExternalEncoder) and enc.returns == "features" and enc.n_chans == 2
    assert enc.class_path == "braindecode.models.sleep_stager_chambon_2018.SleepStagerChambon2018"


def _fit(synth_dir, tmp_path, tracking_home, configs, name, **extra):
    from dsn.workflows.fit import run_fit

    cfg = config.load_config([*configs, "conf/debug.yaml"], {
        **SMALL, "data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "cache"),
        "tracking.home": str(tracking_home), "tracking.register": name, **extra})  # fmt: skip
    return run_fit(cfg, verbose=False)


def _predict(synth_dir, tmp_path, home, ref: str, capsys) -> np.ndarray:
    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    night = tmp_path / "night"
    night.mkdir(exist_ok=True)
    shutil.copy(psg, night / psg.name)
    out = tmp_path / "out"
    rc = cli(["predict", str(night / psg.name), "--model", ref, "--out", str(out), "--tracking.home", str(home)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    from dsn.hypnogram import read_csv

    name = psg.name[: -len("-PSG.edf")]
    table = read_csv(out / f"{name}_hypnogram.csv")
    n = json.loads((out / f"{name}_summary.json").read_text())["n_epochs"]
    assert table.proba.shape == (n, 5) and n > 0
    np.testing.assert_allclose(table.proba.sum(1), 1.0, atol=1e-4)
    return table.proba


def _logged_figures(home, run_id):
    """The stage run's metrics, after checking it logged per-class F1 and a confusion matrix of the test split."""
    import mlflow

    from dsn import tracking

    client = mlflow.MlflowClient(tracking.tracking_uri(None, home))
    metrics = client.get_run(run_id).data.metrics
    assert all(f"selected/test/f1_{c}" in metrics for c in ("W", "N1", "N2", "N3", "REM")), sorted(metrics)
    files = [f.path for f in client.list_artifacts(run_id, "test")]
    assert "test/confusion_matrix.json" in files, files
    return metrics


def test_tinysleepnet_one_stage_fit_logs_registers_predicts_and_exports(synth_dir, tracking_home, tmp_path, capsys):
    from dsn.models import EncoderSequenceNet, LstmSequenceNet, TinySleepNetEncoder
    from dsn.workflows.export import export
    from dsn.workflows.registry import load_scorer

    res = _fit(synth_dir, tmp_path, tracking_home, ["conf/paper.yaml", "conf/models/tinysleepnet.yaml"], "tiny",
               **{"finetune.net.init_args": {"hidden_size": 16}})
    assert res.registered == ("tiny", "1") and [s.name for s in res.stages] == ["finetune"]
    scorer = res.stage("finetune").scorer
    assert isinstance(scorer.net, EncoderSequenceNet) and isinstance(scorer.net.sequence_net, LstmSequenceNet)
    assert isinstance(scorer.feature_net, TinySleepNetEncoder)
    metrics = _logged_figures(tracking_home, res.stage("finetune").run_id)
    assert 0.0 <= metrics["selected/test/f1_macro"] <= 1.0
    uri = f"sqlite:///{tracking_home.resolve()}/mlflow.db"
    loaded = load_scorer("models:/tiny/1", uri)
    spec = loaded.spec()
    assert spec["config"]["net"]["class_path"] == "dsn.models.TinySleepNetEncoder"
    # a dotted init_args override replaces the recipe's init_args, as jsonargparse does
    assert spec["config"]["finetune_net"] == {"class_path": "lstm", "init_args": {"hidden_size": 16}, "n_outputs": 5}
    proba = _predict(synth_dir, tmp_path, tracking_home, "models:/tiny/1", capsys)
    x = torch.randn(12, 1, 3000)
    # the LSTM reads the night in one pass: the same as its chunks with the state carried
    raw = loaded.raw_proba(x.numpy())
    state, rows = None, []
    with torch.no_grad():
        for i in range(0, 12, loaded.seq_len):
            logits, state = loaded.net(x[None, i : i + loaded.seq_len], state, return_state=True)
            rows.append(torch.softmax(logits[0], -1))
    np.testing.assert_allclose(raw, torch.cat(rows).numpy(), atol=1e-5)
    onnx = pytest.importorskip("onnxruntime")
    path = export(loaded, "onnx", tmp_path / "tiny.onnx")
    sess = onnx.InferenceSession(str(path))
    h = np.zeros((1, 1, 16), np.float32)
    out = sess.run(None, {"epochs": x[:5].numpy(), "h": h, "c": h})[0]
    np.testing.assert_allclose(out, raw[:5], atol=1e-4)
    assert proba.shape[1] == 5
    import mlflow

    from dsn import tracking
    from dsn.data.psg import read_epochs

    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    epochs = read_epochs(psg).x[:30].astype(np.float32)
    with tracking._global_uri(uri):  # loading and predicting: MLflow's default store (./mlflow.db) is never touched
        model = mlflow.pyfunc.load_model("models:/tiny/1")
        assert np.asarray(model.predict(epochs)).shape[0] == 30
    out = tmp_path / "evaluate"  # dsn evaluate over the data set's recordings
    rc = cli(["evaluate", "--model", "models:/tiny/1", "--data.data_dir", str(synth_dir), "--data.cache_dir",
              str(tmp_path / "c"), "--out", str(out), "--tracking.home", str(tracking_home)])
    assert rc == 0, capsys.readouterr()
    assert json.loads((out / "evaluate_summary.json").read_text())["pooled"]["n_epochs"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["transformer", "none", "user_module"])
def test_other_networks_fit_and_predict(case, synth_dir, tracking_home, tmp_path, capsys):
    from dsn.models import EncoderSequenceNet, ExternalEncoder, FeatureClassifierNet, NoSequence, TransformerSequenceNet

    if case == "transformer":
        res = _fit(synth_dir, tmp_path, tracking_home, ["conf/paper.yaml", "conf/models/deepsleepnet-transformer.yaml"], case,
                   **{"net.small_kernel": 50, "finetune.net.init_args": {"d_model": 16, "n_heads": 2, "n_layers": 1}})
        assert isinstance(res.stage("finetune").scorer.net.sequence_net, TransformerSequenceNet)
    elif case == "none":
        res = _fit(synth_dir, tmp_path, tracking_home, ["conf/demo.yaml"], case,
                   **{"net.small_kernel": 50, "finetune.net.class_path": "none", "finetune.net.bn_momentum": 0.001})
        assert isinstance(res.stage("finetune").scorer.net.sequence_net, NoSequence)
    else:  # a user's nn.Module by class path, a one-stage fit of the encoder and dsn's head
        res = _fit(synth_dir, tmp_path, tracking_home, ["conf/paper.yaml", "conf/models/deepsleepnet-transformer.yaml"], case, stages=["pretrain"], **{
            "net.class_path": "fake_nets.TinyStager", "net.init_args": {"n_filters": 4},
            "pretrain.system.l2_layers": "all"})
        net = res.stage("pretrain").scorer.net
        assert isinstance(net, FeatureClassifierNet) and isinstance(net.feature_net, ExternalEncoder)
    stage = res.stages[-1]
    assert isinstance(stage.scorer.net, (EncoderSequenceNet, FeatureClassifierNet))
    assert res.registered == (case, "1")
    assert "selected/test/kappa" in _logged_figures(tracking_home, stage.run_id)
    proba = _predict(synth_dir, tmp_path, tracking_home, f"models:/{case}/1", capsys)
    assert np.isfinite(proba).all()


#: braindecode's networks through their overlays at debug size (USleep made small for a CPU test).
BRAINDECODE_CASES = {
    "chambon2018": {},
    "attnsleep": {},
    "usleep": {"finetune.net.init_args": {"depth": 4, "complexity_factor": 0.5}},
}


@pytest.mark.slow  # 42 s (chambon2018), 78 s (attnsleep), 92 s (usleep) on the loaded 2-core machine
@pytest.mark.parametrize("case", list(BRAINDECODE_CASES))
def test_braindecode_networks_fit_log_register_and_predict(case, synth_dir, tracking_home, tmp_path, capsys):
    """Chambon2018, AttnSleep (one channel) and USleep (a whole-sequence network, one stage on the fine-tuning
    stage's sequences) through `dsn fit` -> MLflow (per-class F1, confusion matrix) -> registry -> `dsn predict`."""
    from dsn.models import EncoderSequenceNet, ExternalEncoder, FeatureClassifierNet, RawEpochs, WholeSequenceNet

    res = _fit(synth_dir, tmp_path, tracking_home, ["conf/demo.yaml", f"conf/models/{case}.yaml"], case,
               **BRAINDECODE_CASES[case])
    stage = res.stages[-1]
    assert res.registered == (case, "1") and len(res.stages) == 1
    net = stage.scorer.net
    if case == "usleep":
        assert stage.name == "finetune" and isinstance(net, EncoderSequenceNet)
        assert isinstance(net.feature_net, RawEpochs) and isinstance(net.sequence_net, WholeSequenceNet)
        assert stage.scorer.spec()["config"]["finetune_net"]["package_version"] == "1.8.1"
    else:
        assert stage.name == "pretrain" and isinstance(net, FeatureClassifierNet)
        assert isinstance(net.feature_net, ExternalEncoder) and net.feature_net.returns == "features"
        assert stage.scorer.spec()["config"]["net"]["package"] == "braindecode"
    metrics = _logged_figures(tracking_home, stage.run_id)
    assert 0.0 <= metrics["selected/test/f1_macro"] <= 1.0
    proba = _predict(synth_dir, tmp_path, tracking_home, f"models:/{case}/1", capsys)
    assert np.isfinite(proba).all()


def test_scoring_each_sequence_model_matches_its_chunks():
    """Transformer: chunks of seq_len (offsets averaged); none: each epoch alone; both equal the network fed so."""
    from dsn.models import DeepFeatureNet, EncoderSequenceNet, NoSequence, TransformerSequenceNet
    from dsn.models.scoring import SleepScorer

    torch.manual_seed(0)
    fnet = DeepFeatureNet(small_kernel=50)
    prep = {"channels": ["EEG Fpz-Cz"], "sfreq": 100.0, "epoch_sec": 30.0}
    x = torch.randn(11, 1, 3000)
    tr = SleepScorer(EncoderSequenceNet(fnet, TransformerSequenceNet(fnet.n_features, d_model=16, n_heads=2)), prep,
                     {}, seq_len=4, n_offsets=2).eval()
    with torch.no_grad():
        by_chunk = [torch.cat([torch.softmax(tr.net(x[None, i:j])[0], -1) for i, j in tr.chunk_bounds(11, o)])
                    for o in (0, 2)]
    np.testing.assert_allclose(tr.raw_proba(x.numpy()), ((by_chunk[0] + by_chunk[1]) / 2).numpy(), atol=1e-5)
    none = SleepScorer(EncoderSequenceNet(fnet, NoSequence(fnet.n_features)), prep, {}, seq_len=4).eval()
    with torch.no_grad():
        single = torch.cat([torch.softmax(none.net(x[None, i : i + 1])[0], -1) for i in range(11)])
    np.testing.assert_allclose(none.raw_proba(x.numpy()), single.numpy(), atol=1e-5)


def test_missing_package_of_a_saved_model_is_one_line(tmp_path):
    from dsn.artifact import read_artifact, write_artifact
    from dsn.errors import ModelError
    from dsn.models import FeatureClassifierNet
    from dsn.models.networks import build_encoder, encoder_config
    from dsn.models.scoring import SleepScorer

    net_cfg = {"class_path": "fake_nets.TinyStager", "init_args": {"n_filters": 4}, "n_chans": 1, "sfreq": 100.0}
    enc = build_encoder(net_cfg)
    spec_net = encoder_config(net_cfg, enc)
    assert spec_net["class_path"] == "fake_nets.TinyStager" and "package_version" in spec_net
    scorer = SleepScorer(FeatureClassifierNet(enc, 5), {"channels": ["EEG Fpz-Cz"], "sfreq": 100.0}, {"net": spec_net})
    folder = write_artifact(scorer, tmp_path / "model")
    back = read_artifact(folder)
    x = np.random.default_rng(0).standard_normal((3, 1, 3000)).astype(np.float32)
    np.testing.assert_allclose(back.raw_proba(x), scorer.eval().raw_proba(x), atol=1e-6)
    spec = json.loads((folder / "dsn_model.json").read_text())
    spec["config"]["net"].update(class_path="gonepkg.nets.TinyStager", package="gonepkg", package_version="1.2.3")
    (folder / "dsn_model.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError) as err:
        read_artifact(folder)
    assert "pip install gonepkg==1.2.3" in str(err.value) and "\n" not in str(err.value)


def test_onnx_export_of_stateless_sequence_models_and_its_refusal(tmp_path, monkeypatch):
    """transformer and none export as `epochs -> proba` of one chunk; a network that does not export is one line."""
    ort = pytest.importorskip("onnxruntime")
    from dsn.errors import ModelError
    from dsn.models import EncoderSequenceNet, NoSequence, TinySleepNetEncoder, TransformerSequenceNet
    from dsn.models.scoring import SleepScorer
    from dsn.workflows.export import export

    torch.manual_seed(0)
    fnet = TinySleepNetEncoder()
    prep = {"channels": ["EEG Fpz-Cz"], "sfreq": 100.0, "epoch_sec": 30.0}
    x = torch.randn(4, 1, 3000).numpy()
    for seq in (TransformerSequenceNet(fnet.n_features, d_model=16, n_heads=2), NoSequence(fnet.n_features)):
        scorer = SleepScorer(EncoderSequenceNet(fnet, seq), prep, {}, seq_len=4).eval()
        path = export(scorer, "onnx", tmp_path / f"{type(seq).__name__}.onnx")
        out = ort.InferenceSession(str(path)).run(None, {"epochs": x})[0]
        np.testing.assert_allclose(out, scorer.raw_proba(x), atol=1e-5)

    def fail(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::odd_op' is not supported\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ModelError) as err:
        export(scorer, "onnx", tmp_path / "no.onnx")
    assert "aten::odd_op" in str(err.value) and "\n" not in str(err.value) and not (tmp_path / "no.onnx").exists()


@pytest.mark.slow  # braindecode's import and the ONNX export of a U-Net: 15-60 s
def test_usleep_exports_to_onnx_and_torchscript_refuses_in_one_line(tmp_path):
    """A whole-sequence network (braindecode's USleep) exports as ``epochs -> proba`` of one chunk and matches
    dsn's scoring; TorchScript cannot trace it (braindecode's channel info), which is one line naming USleep."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("braindecode")
    from dsn.errors import ModelError
    from dsn.models import EncoderSequenceNet
    from dsn.models.scoring import SleepScorer
    from dsn.models.wholeseq import RawEpochs, WholeSequenceNet
    from dsn.workflows.export import export

    torch.manual_seed(0)
    seq = WholeSequenceNet("USleep", 1, 3000, 100.0, 5, depth=4, complexity_factor=0.5)
    prep = {"channels": ["EEG Fpz-Cz"], "sfreq": 100.0, "epoch_sec": 30.0}
    scorer = SleepScorer(EncoderSequenceNet(RawEpochs(1, 3000, 100.0), seq), prep, {}, seq_len=4).eval()
    path = export(scorer, "onnx", tmp_path / "usleep.onnx")
    x = torch.randn(4, 1, 3000).numpy()
    out = ort.InferenceSession(str(path)).run(None, {"epochs": x})[0]
    np.testing.assert_allclose(out, scorer.raw_proba(x), atol=1e-5)
    with pytest.raises(ModelError) as err:
        export(scorer, "torchscript", tmp_path / "usleep.pt")
    assert "USleep" in str(err.value) and "\n" not in str(err.value) and not (tmp_path / "usleep.pt").exists()


def test_init_model_of_another_network_must_match_its_class_and_init_args():
    """`--init` compares class_path and init_args (drop_prob, bn_momentum may differ), one line naming the key."""
    from dsn.models.networks import build_encoder, build_sequence_net, encoder_config, sequence_config
    from dsn.models.scoring import SleepScorer
    from dsn.workflows import build

    cfg = config.load_config(["conf/paper.yaml", "conf/models/tinysleepnet.yaml"])
    d = config.to_dict(cfg)
    enc = build_encoder(d["net"])
    model = SleepScorer(build_sequence_net(d["finetune"]["net"], enc),
                        {"channels": list(cfg.data.channels), "sfreq": 100.0, "normalize": "none"},
                        {"net": encoder_config(d["net"], enc), "finetune_net": sequence_config(d["finetune"]["net"])})
    build.check_init(model, cfg, "m")
    build.check_init(model, config.set_keys(cfg, {"net.init_args": {"drop_prob": 0.3}}), "m")
    for over, key in (({"net.init_args": {"first_stride": 25}}, "net.init_args.first_stride"),
                      ({"finetune.net.init_args": {"hidden_size": 64}}, "finetune.net.init_args.hidden_size"),
                      ({"finetune.net.class_path": "transformer", "finetune.net.init_args": {}}, "finetune.net.class_path"),
                      ({"net.class_path": "DeepFeatureNet", "net.init_args": {}}, "net.class_path")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
            build.check_init(model, config.set_keys(cfg, over), "m")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("base", ["conf/demo.yaml", "conf/paper.yaml"])
def test_every_model_overlay_composes_with_a_base_recipe(base):
    """conf/models/*.yaml stack on demo (+ debug) and paper: a new class_path drops the base's DeepFeatureNet /
    DeepSleepNet keys (demo's bn_momentum), as jsonargparse's subclass mode; each builds its networks (parse checks)."""
    from dsn.resources import list_models

    names = list_models()
    assert set(names) == {"tinysleepnet", "chambon2018", "attnsleep", "usleep", "deepsleepnet-transformer"}
    for name in names:
        extra = ["--config", "conf/debug.yaml"] if base.endswith("demo.yaml") else []
        cfg = config.parse(["--config", base, "--config", f"conf/models/{name}.yaml", *extra])
        overlay = yaml.safe_load((ROOT / "conf" / "models" / f"{name}.yaml").read_text())
        assert cfg.net.class_path == overlay.get("net", {}).get("class_path", "DeepFeatureNet"), name
        assert cfg.finetune.net.class_path == overlay["finetune"]["net"]["class_path"], name
        if cfg.net.class_path != "DeepFeatureNet":
            assert cfg.net.bn_momentum == 0.001, name  # demo's 0.1 dropped with its class
        if cfg.finetune.net.class_path != "bilstm":
            assert cfg.finetune.net.bn_momentum == 0.001 and cfg.finetune.net.hidden_size == 512, name
        assert cfg.stages == overlay.get("stages", ["pretrain", "finetune"]), name
    # the same class again keeps the base's keys; a later source sets a dropped key again
    cfg = config.parse(["--config", base, "--config", "conf/models/deepsleepnet-transformer.yaml"])
    assert cfg.net.bn_momentum == (0.1 if base.endswith("demo.yaml") else 0.001)
    cfg = config.parse(["--config", base, "--config", "conf/models/tinysleepnet.yaml", "--net.init_args",
                        "{first_stride: 25}"])
    assert cfg.net.init_args == {"first_stride": 25}


def test_stale_keys_follow_the_order_of_the_sources():
    """dsn/overlays.py: which keys a class change drops, from stacked files and arguments in order."""
    from dsn import overlays

    demo = {"net": {"bn_momentum": 0.1}, "finetune": {"net": {"bn_momentum": 0.1}}}
    tiny = {"net": {"class_path": "TinySleepNetEncoder", "init_args": {"drop_prob": 0.5}}}
    assert overlays.stale_keys([demo, tiny]) == {"net": {"bn_momentum"}, "finetune.net": set()}
    assert overlays.stale_keys([demo, tiny, {"net.bn_momentum": 0.2}])["net"] == set()  # set again after the change
    assert overlays.stale_keys([tiny, {"net.class_path": "dsn.models.TinySleepNetEncoder"}])["net"] == set()  # same
    back = overlays.stale_keys([demo, tiny, {"net.class_path": "DeepFeatureNet"}])
    assert back["net"] == {"bn_momentum", "init_args"}
    argv = ["--print_config", "--config", "conf/demo.yaml", "--net.class_path=TinySleepNetEncoder"]
    assert overlays.stale_keys(overlays._argv_sources(argv))["net"] == {"bn_momentum"}

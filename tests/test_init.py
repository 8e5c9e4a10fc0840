"""`dsn fit --init REF`: both stages start from a model's weights; its architecture is checked first."""

from __future__ import annotations

import mlflow
import pytest
import torch
from test_fit import _args

from dsn import config, tracking
from dsn.errors import ConfigError
from dsn.workflows.fit import main as fit_main

NO_TRAINING = ["--pretrain.trainer.max_epochs", "0", "--finetune.trainer.max_epochs", "0", "--seed_everything", "1"]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    """One tiny fit (fine-tuning only, from random weights; its model logged): its result and tracking home."""
    import shutil

    import mlflow as _mlflow

    home = tmp_path_factory.mktemp("init-home")
    _mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()
    tmp = tmp_path_factory.mktemp("init-tmp")
    res = fit_main(_args(synth_dir, home, tmp, "--stages", "[finetune]", "--tracking.log_model", "true"))
    yield res, home, tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict, keys=None) -> bool:
    keys = list(a) if keys is None else keys
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_init_from_a_logged_model_gives_its_weights_at_step_0(trained, synth_dir):
    from dsn.workflows.registry import load_scorer

    res, home, tmp = trained
    ref = res.stage("finetune").model_uri
    assert ref.startswith(("runs:/", "models:/"))
    init = _state(load_scorer(ref, res.tracking_uri).net)
    # no training (and another seed): each stage's selected model is what it started from
    adapted = fit_main(_args(synth_dir, home, tmp, *NO_TRAINING, "--tracking.log_model", "false", "--init", ref))
    ft, pre = _state(adapted.stage("finetune").scorer.net), _state(adapted.stage("pretrain").scorer.net)
    assert set(ft) == set(init) and _same(ft, init)  # the whole sequence net
    fkeys = [k for k in init if k.startswith("feature_net.")]
    assert fkeys and _same(pre, init, fkeys)  # pretraining's feature net (its softmax head is new)
    assert adapted.stage("finetune").metrics["test/f1_macro"] == pytest.approx(res.stage("finetune").metrics["test/f1_macro"])
    run = mlflow.MlflowClient(adapted.tracking_uri).get_run(adapted.parent_run_id)
    assert run.data.tags["dsn.init"] == ref and run.data.params["init"] == ref


def test_init_fine_tuning_only_trains_from_the_model(trained, synth_dir):
    """Fine-tuning alone (the adaptation recipe) starts from the init model and then changes it."""
    from dsn.workflows.registry import load_scorer

    res, home, tmp = trained
    ckpt = res.stage("finetune").selected_checkpoint  # a selected.ckpt works as well as a model reference
    init = _state(load_scorer(ckpt).net)
    out = fit_main(_args(synth_dir, home, tmp, "--stages", "[finetune]", "--tracking.log_model", "false",
                         "--selection", "last", "--init", ckpt))
    ft = _state(out.stage("finetune").scorer.net)
    assert set(ft) == set(init) and not _same(ft, init)
    # fine-tuning moved the new parts (lr_new) much more than the CNN (lr_pretrained) away from the init model
    moved = {k: (ft[k].float() - init[k].float()).abs().max().item() for k in ft if ft[k].is_floating_point()}
    cnn = max(v for k, v in moved.items() if k.startswith("feature_net.") and k.endswith("conv.weight"))
    head = max(v for k, v in moved.items() if not k.startswith("feature_net.") and k.endswith("weight"))
    assert head > cnn


@pytest.mark.parametrize("extra, key, theirs", [
    (["--net.small_kernel", "40"], "net.small_kernel", "50"),
    (["--finetune.net.hidden_size", "8", "--finetune.net.shortcut_size", "16"], "finetune.net.hidden_size", "16"),
    (["--data.channels", "[EEG Fpz-Cz, EEG Pz-Oz]"], "data.channels", "['EEG Fpz-Cz']"),
    (["--data.sfreq", "50"], "data.sfreq", "100"),
])  # fmt: skip
def test_init_architecture_mismatch_is_one_line_before_any_run(trained, synth_dir, tmp_path, extra, key, theirs):
    from dsn.cli import main as cli_main

    res, home, _ = trained
    ckpt = res.stage("finetune").selected_checkpoint
    fresh = tmp_path / "home"
    with pytest.raises(ConfigError) as e:
        fit_main(_args(synth_dir, fresh, tmp_path, *extra, "--init", ckpt))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"init={ckpt}: {key} is ") and theirs in msg and "--init" in msg
    assert not (tmp_path / "cache").exists()  # refused before any data was read
    c = mlflow.MlflowClient(tracking.tracking_uri(None, fresh))
    assert all(not c.search_runs([x.experiment_id]) for x in c.search_experiments())
    assert cli_main(["fit", *_args(synth_dir, fresh, tmp_path, *extra, "--init", ckpt)]) == 1


def test_init_check_compares_what_the_networks_are_built_with(trained):
    """A key left to its default (kernel sizes follow sfreq) matches a model built with the same value given."""
    from dsn.workflows import build
    from dsn.workflows.registry import load_scorer

    res, _, _ = trained
    scorer = load_scorer(res.stage("finetune").selected_checkpoint)  # built with --net.small_kernel 50 at 100 Hz
    tiny = {"finetune.net.hidden_size": 16, "finetune.net.shortcut_size": 32, "finetune.seq_len": 5}
    build.check_init(scorer, config.load_config(["conf/demo.yaml"], tiny), "m")  # null -> 50: same
    small = config.load_config(["conf/demo.yaml"], {**tiny, "net.small_kernel": 25})
    with pytest.raises(ConfigError, match=r"^init=m: net.small_kernel is 25 but the model was built with 50; give "
                                          r"--net.small_kernel 50 \(the model's value\)"):
        build.check_init(scorer, small, "m")
    other = config.load_config(["conf/demo.yaml"], {**tiny, "net.drop_prob": 0.1, "net.bn_momentum": 0.5})
    build.check_init(scorer, other, "m")  # training settings may differ


def test_init_bad_reference_and_two_sources_are_config_errors(trained, synth_dir, tmp_path):
    res, _, _ = trained
    with pytest.raises(ConfigError, match=r"^init: .*missing\.ckpt: model file not found"):
        fit_main(_args(synth_dir, tmp_path / "home", tmp_path, "--init", str(tmp_path / "missing.ckpt")))
    ckpt = res.stage("finetune").selected_checkpoint
    with pytest.raises(ConfigError, match="both name starting weights"):
        fit_main(_args(synth_dir, tmp_path / "home", tmp_path, "--init", ckpt, "--stages", "[finetune]",
                       "--finetune.system.pretrained", ckpt))


def test_init_is_part_of_the_resume_and_cv_identity(trained, synth_dir, tmp_path):
    from dsn.workflows.cv.store import cv_key as _cv_key

    assert not any(p == "init" for p in config.NON_WEIGHT_KEYS)
    base = config.load_config(["conf/demo.yaml"])
    other = config.set_key(base, "init", "models:/deepsleepnet@champion")
    assert config.identity_items(other)["init"] == "models:/deepsleepnet@champion"
    assert "init" in config.identity_items(base) and _cv_key(base, 4) != _cv_key(other, 4)
    # a resumed fit with another init is refused, naming the key
    res, home, tmp = trained
    ckpt = res.stage("finetune").selected_checkpoint
    with pytest.raises(ConfigError, match=r"--resume .*init: None -> "):
        fit_main(_args(synth_dir, home, tmp, "--init", ckpt, "--resume", res.parent_run_id))


# ----------------------------------------------------------------------------- a synthetic new site (dsn synth --site)
def _read(psg) -> dict:
    from edfio import read_edf

    return {s.label: s.data for s in read_edf(psg).signals}


def test_site_shift_changes_only_the_recorder(tmp_path):
    """Site B records the same nights (same seed) through another amplifier and montage."""
    import numpy as np

    from dsn.data.synth import SiteShift, write_recording

    a = _read(write_recording(tmp_path / "a", 0, 1, hours=0.1, seed=3)[0])
    g = _read(write_recording(tmp_path / "g", 0, 1, hours=0.1, seed=3, site=SiteShift(gain=0.5))[0])
    for name in ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"):
        np.testing.assert_allclose(g[name], 0.5 * a[name], atol=0.05)  # uV, up to EDF quantisation
    np.testing.assert_array_equal(g["Resp oro-nasal"], a["Resp oro-nasal"])
    m = _read(write_recording(tmp_path / "m", 0, 1, hours=0.1, seed=3, site=SiteShift(channel="EEG C4-A1", mix=0.5))[0])
    assert "EEG Fpz-Cz" not in m and "EEG Pz-Oz" in m
    np.testing.assert_allclose(m["EEG C4-A1"], 0.5 * (a["EEG Fpz-Cz"] + a["EEG Pz-Oz"]), atol=0.05)
    n = _read(write_recording(tmp_path / "n", 0, 1, hours=0.1, seed=3, site=SiteShift(noise=3.0, mains=5.0))[0])
    extra = n["EEG Pz-Oz"] - a["EEG Pz-Oz"]
    spec = np.abs(np.fft.rfft(extra)) / len(extra) * 2
    freqs = np.fft.rfftfreq(len(extra), 1 / 100.0)
    peak = freqs[np.argmax(spec)]
    assert abs(peak - 40.0) < 0.1  # 60-Hz mains aliased at 100 Hz, as an unfiltered recorder would
    assert spec.max() == pytest.approx(5.0, rel=0.05)
    assert np.sqrt(np.var(extra) - 5.0**2 / 2) == pytest.approx(3.0, rel=0.1)  # the white noise's RMS
    with pytest.raises(ValueError, match="gain must be positive"):
        SiteShift(gain=0)


def test_synth_site_cli_and_a_model_reads_it_through_an_alias(tmp_path, capsys):
    from dsn.cli import main as cli_main
    from dsn.data.channels import BUILTIN_ALIASES, find_label, merge_aliases

    assert cli_main(["synth", str(tmp_path / "b"), "--subjects", "1", "--hours", "0.05", "--site", "B",
                     "--site_noise", "1"]) == 0
    out = capsys.readouterr().out
    assert "as site B (gain 0.6, noise 1 uV, 60-Hz mains 5 uV, EEG C4-A1 = 0.5 x Fpz-Cz + 0.5 x Pz-Oz)" in out
    labels = list(_read(next((tmp_path / "b").glob("*PSG.edf"))))
    assert "EEG C4-A1" in labels and "EEG Fpz-Cz" not in labels
    assert find_label("EEG Fpz-Cz", labels, merge_aliases(BUILTIN_ALIASES, {"EEG Fpz-Cz": ["EEG C4-A1"]})) == "EEG C4-A1"
    assert cli_main(["synth", str(tmp_path / "c"), "--site", "B", "--layout", "nsrr"]) == 1
    assert cli_main(["synth", str(tmp_path / "c"), "--site_mix", "2"]) == 1
    err = capsys.readouterr().err
    assert "sleep-edf layout only" in err and "site mix must be in [0, 1], got 2.0" in err
    assert not (tmp_path / "c").exists()

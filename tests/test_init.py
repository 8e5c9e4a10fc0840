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


def test_init_bad_reference_and_two_sources_are_config_errors(trained, synth_dir, tmp_path):
    res, _, _ = trained
    with pytest.raises(ConfigError, match=r"^init: .*missing\.ckpt: model file not found"):
        fit_main(_args(synth_dir, tmp_path / "home", tmp_path, "--init", str(tmp_path / "missing.ckpt")))
    ckpt = res.stage("finetune").selected_checkpoint
    with pytest.raises(ConfigError, match="both name starting weights"):
        fit_main(_args(synth_dir, tmp_path / "home", tmp_path, "--init", ckpt, "--stages", "[finetune]",
                       "--finetune.system.pretrained", ckpt))


def test_init_is_part_of_the_resume_and_cv_identity(trained, synth_dir, tmp_path):
    from dsn.workflows.cv import _cv_key

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

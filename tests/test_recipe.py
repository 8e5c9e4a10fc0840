"""conf/recommended.yaml: an overlay on the faithful paper config that switches on what its comment claims."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dsn import config

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "conf" / "paper.yaml")
RECOMMENDED = str(ROOT / "conf" / "recommended.yaml")


@pytest.fixture(scope="module")
def paper():
    return config.load_config([PAPER])


@pytest.fixture(scope="module")
def recipe():
    return config.load_config([PAPER, RECOMMENDED])


def test_overlay_only_names_known_keys():
    raw = yaml.safe_load(Path(RECOMMENDED).read_text())

    def dotted(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from dotted(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    keys = list(dotted(raw))
    assert keys
    for key in keys:
        config.check_key(key)


def test_recipe_switches_on_what_it_claims(recipe):
    d, pre, ft = recipe.data, recipe.pretrain, recipe.finetune
    # batch-norm momentum for short runs, in both nets
    assert recipe.net.bn_momentum == 0.1
    assert ft.net.bn_momentum == 0.1
    # warm-up + cosine with a higher peak learning rate, both stages (ratio of the two fine-tuning rates kept)
    assert (pre.system.lr_schedule, pre.system.warmup_epochs, pre.system.lr) == ("cosine", 1, 2.0e-3)
    assert (ft.system.lr_schedule, ft.system.warmup_epochs) == ("cosine", 1)
    assert ft.system.lr_new / ft.system.lr_pretrained == pytest.approx(100.0)
    # EMA of the weights in both stages
    assert pre.ema_decay == 0.99 and ft.ema_decay == 0.95
    # signal-shift augmentation
    assert d.max_shift == 0.1 and d.skip_first == 4
    # N1 weighted x1.5 in fine-tuning; pretraining keeps the paper's class-balanced oversampling
    assert list(ft.system.class_weights) == [1.0, 1.5, 1.0, 1.0, 1.0]
    assert pre.system.class_weights is None and d.oversample is True
    # per-recording amplitude normalisation, chunk-offset averaging when a night is scored
    assert d.normalize == "zscore" and ft.n_offsets == 5
    # short schedule for a 2-core laptop: 8 + 16 epochs, 1 validation subject per fold
    assert pre.trainer.max_epochs == 8 and ft.trainer.max_epochs == 16
    assert d.n_val_subjects == 1


def test_recipe_keeps_the_paper_method(paper, recipe):
    # what the overlay leaves alone is the paper's: architecture, sequences, streaming with carried state,
    # clipping, batch sizes, L2 on the first conv, best-on-validation selection
    for key in (
        "finetune.net.hidden_size",
        "finetune.net.n_layers",
        "finetune.net.shortcut_size",
        "finetune.net.bidirectional_mode",
        "finetune.seq_len",
        "finetune.batch_size",
        "pretrain.batch_size",
        "finetune.system.carry_state",
        "finetune.system.grad_clip_norm",
        "data.sequence_sampling",
        "pretrain.system.weight_decay",
        "pretrain.system.l2_layers",
        "data.channels",
        "data.sfreq",
        "selection",
        "net.drop_prob",
    ):
        assert recipe[key] == paper[key], key


def test_paper_config_untouched_by_the_overlay(paper):
    # the reference stays faithful: the switches are off there
    assert paper.net.bn_momentum == 0.001
    assert paper.pretrain.system.lr == 1.0e-4 and paper.pretrain.system.lr_schedule == "constant"
    assert (paper.finetune.system.lr_pretrained, paper.finetune.system.lr_new) == (1.0e-6, 1.0e-4)
    assert paper.pretrain.ema_decay is None and paper.finetune.ema_decay is None
    assert paper.data.max_shift == 0.0 and paper.data.skip_first == 0
    assert paper.finetune.system.class_weights is None
    assert paper.data.normalize == "none" and paper.finetune.n_offsets == 1
    assert (paper.pretrain.trainer.max_epochs, paper.finetune.trainer.max_epochs) == (100, 200)


@pytest.mark.slow
def test_recipe_trains_both_stages_end_to_end(synth_dir, tracking_home, tmp_path, monkeypatch):
    """The whole recipe (EMA, cosine + warm-up, shift augmentation, N1-weighted loss) through `dsn fit`, shrunk."""
    from dsn.workflows.fit import main as fit_main

    monkeypatch.chdir(ROOT)
    res = fit_main(
        [
            "--config",
            PAPER,
            "--config",
            RECOMMENDED,
            "--config",
            "conf/debug.yaml",
            "--data.data_dir",
            str(synth_dir),
            "--data.n_folds",
            "3",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--data.progress",
            "false",
            "--tracking.home",
            str(tracking_home),
            "--pretrain.trainer.max_epochs",
            "2",
            "--finetune.trainer.max_epochs",
            "2",
            "--finetune.net.hidden_size",
            "16",
            "--finetune.net.shortcut_size",
            "32",
            "--finetune.batch_size",
            "2",
            "--finetune.seq_len",
            "5",
            "--finetune.trainer.limit_val_batches",
            "1.0",
            "--pretrain.trainer.enable_progress_bar",
            "false",
            "--finetune.trainer.enable_progress_bar",
            "false",
        ]
    )
    assert [s.name for s in res.stages] == ["pretrain", "finetune"]
    for stage in res.stages:
        assert 0.0 <= stage.metrics["val/f1_macro"] <= 1.0
        assert 0.0 <= stage.metrics["test/f1_macro"] <= 1.0


def test_recommended_alone_equals_the_overlay_on_paper(recipe):
    """The hidden-data check runs `dsn cv --config conf/recommended.yaml`: alone it must mean the same."""
    alone = config.training_items(config.load_config([RECOMMENDED]))
    stacked = config.training_items(recipe)
    assert {k: (stacked.get(k), alone.get(k)) for k in set(alone) | set(stacked) if str(alone.get(k)) != str(stacked.get(k))} == {}

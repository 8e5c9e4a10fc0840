"""Tests of dsn.systems.metrics against scikit-learn (and torchmetrics) references."""

from __future__ import annotations

import math
import socket
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, precision_score, recall_score
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from dsn.data.labels import IGNORE_INDEX, STAGES
from dsn.systems.metrics import SleepStageMetrics, format_report, metrics_from_confusion

C = len(STAGES)
EXPECTED_NAMES = ["acc", "f1_macro", "kappa", "f1_W", "f1_N1", "f1_N2", "f1_N3", "f1_REM"]


def sklearn_reference(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """All metrics from scikit-learn on already-filtered 1-D labels."""
    labels = list(range(C))
    present = sorted(set(y.tolist()) | set(p.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_class = f1_score(y, p, labels=labels, average=None, zero_division=np.nan)
        ref = {
            "acc": accuracy_score(y, p),
            "f1_macro": f1_score(y, p, labels=present, average="macro"),
            "kappa": cohen_kappa_score(y, p, labels=labels),
        }
    ref.update({f"f1_{name}": per_class[i] for i, name in enumerate(STAGES)})
    return ref


def assert_metrics_close(got: dict, ref: dict, prefix: str = "") -> None:
    for name, expected in ref.items():
        value = float(got[prefix + name])
        if math.isnan(expected):
            assert math.isnan(value), (name, value)
        else:
            assert value == pytest.approx(expected, abs=1e-6), name


def make_case(seed: int, kind: str):
    """Random logits/indices + targets, with IGNORE_INDEX entries and optionally an absent class.

    Returns the preds/target tensors to feed and the filtered numpy reference labels.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (4, 25) if kind in ("logits3d", "indices2d", "absent") else (97,)
    target = torch.randint(0, C, shape, generator=g)
    logits = torch.randn(*shape, C, generator=g)
    # Make the model better than chance so kappa/F1 are not all ~0.
    logits += 2.0 * torch.nn.functional.one_hot(target, C).float() * (torch.rand(shape, generator=g) < 0.6)[..., None]
    if kind == "absent":  # N3 (index 3) in neither target nor preds
        target[target == 3] = 2
        logits[..., 3] = -1e4
    target[torch.rand(shape, generator=g) < 0.1] = IGNORE_INDEX
    preds = logits.argmax(-1) if kind in ("indices1d", "indices2d") else logits
    keep = target != IGNORE_INDEX
    y = target[keep].numpy()
    p = logits.argmax(-1)[keep].numpy()
    return preds, target, y, p


KINDS = ["logits2d", "logits3d", "indices1d", "indices2d", "absent"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_sklearn_accumulated(seed: int, kind: str) -> None:
    preds, target, y, p = make_case(seed, kind)
    m = SleepStageMetrics("val")
    # Several update() calls along the first dim must equal computing on the concatenation.
    for chunk_p, chunk_t in zip(torch.tensor_split(preds, 3), torch.tensor_split(target, 3), strict=True):
        m.update(chunk_p, chunk_t)
    out = m.compute()

    assert list(out) == [f"val/{n}" for n in EXPECTED_NAMES]
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in out.values())
    assert_metrics_close(out, sklearn_reference(y, p), prefix="val/")

    cm = m.confusion_matrix()
    assert cm.dtype == torch.int64 and cm.shape == (C, C)
    np.testing.assert_array_equal(cm.numpy(), confusion_matrix(y, p, labels=list(range(C))))

    # Single update on everything gives the same result.
    m_all = SleepStageMetrics("val")
    m_all.update(preds, target)
    torch.testing.assert_close(m_all.confusion_matrix(), cm)

    # The pure helper agrees with the module.
    helper = metrics_from_confusion(cm.numpy(), STAGES)
    assert list(helper) == EXPECTED_NAMES
    assert_metrics_close(out, helper, prefix="val/")


def test_absent_class_policy() -> None:
    _, _, y, p = make_case(0, "absent")
    assert 3 not in y and 3 not in p
    m = SleepStageMetrics("test")
    m.update(torch.from_numpy(p), torch.from_numpy(y))
    out = m.compute()
    assert math.isnan(float(out["test/f1_N3"]))
    present = [0, 1, 2, 4]
    # Macro-F1 averages over the classes present in target or preds only ...
    expected = f1_score(y, p, labels=present, average="macro")
    assert float(out["test/f1_macro"]) == pytest.approx(expected)
    # ... which is sklearn's zero_division=np.nan convention ...
    assert expected == pytest.approx(f1_score(y, p, labels=list(range(C)), average="macro", zero_division=np.nan))
    # ... and torchmetrics' macro (which also skips classes with tp + fp + fn == 0),
    tm_macro = MulticlassF1Score(C, average="macro")(torch.from_numpy(p), torch.from_numpy(y))
    assert float(out["test/f1_macro"]) == pytest.approx(float(tm_macro), abs=1e-6)
    # whereas its per-class F1 reports 0 where we report NaN ("not applicable").
    tm_per_class = MulticlassF1Score(C, average="none")(torch.from_numpy(p), torch.from_numpy(y))
    assert float(tm_per_class[3]) == 0.0


def test_class_missing_only_on_one_side_counts_as_zero() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 3])
    p = np.array([0, 0, 1, 2, 2, 2, 2])  # N3 in target never predicted -> F1 0; REM nowhere -> NaN
    out = metrics_from_confusion(confusion_matrix(y, p, labels=list(range(C))))
    assert out["f1_N3"] == 0.0
    assert math.isnan(out["f1_REM"])
    assert out["f1_macro"] == pytest.approx(f1_score(y, p, labels=[0, 1, 2, 3], average="macro"))
    y2, p2 = np.array([0, 1, 1]), np.array([0, 1, 4])  # REM predicted but never true -> 0
    assert metrics_from_confusion(confusion_matrix(y2, p2, labels=list(range(C))))["f1_REM"] == 0.0


def test_matches_torchmetrics_when_all_classes_present() -> None:
    preds, target, _, _ = make_case(5, "logits3d")
    m = SleepStageMetrics("train")
    m.update(preds, target)
    out = m.compute()
    p = preds.reshape(-1, C)
    t = target.reshape(-1)
    ref = {
        "acc": MulticlassAccuracy(C, average="micro", ignore_index=IGNORE_INDEX)(p, t),
        "f1_macro": MulticlassF1Score(C, average="macro", ignore_index=IGNORE_INDEX)(p, t),
        "kappa": MulticlassCohenKappa(C, ignore_index=IGNORE_INDEX)(p, t),
    }
    per_class = MulticlassF1Score(C, average="none", ignore_index=IGNORE_INDEX)(p, t)
    ref.update({f"f1_{n}": per_class[i] for i, n in enumerate(STAGES)})
    for name, expected in ref.items():
        assert float(out[f"train/{name}"]) == pytest.approx(float(expected), abs=1e-5), name


def test_reset_and_degenerate_cases() -> None:
    m = SleepStageMetrics("val")
    m.update(torch.tensor([2, 2, 2]), torch.tensor([2, 2, IGNORE_INDEX]))
    out = m.compute()
    assert float(out["val/acc"]) == 1.0
    assert float(out["val/f1_N2"]) == 1.0
    assert float(out["val/f1_macro"]) == 1.0
    assert math.isnan(float(out["val/kappa"]))  # chance agreement is 1: undefined, as in sklearn
    m.reset()
    # An all-ignored batch is accepted; nothing accumulated -> every metric NaN.
    m.update(torch.randn(2, 3, C), torch.full((2, 3), IGNORE_INDEX))
    assert int(m.confusion_matrix().sum()) == 0
    out = m.compute()
    assert all(math.isnan(float(v)) for v in out.values())


def test_custom_split_and_class_names() -> None:
    m = SleepStageMetrics("fold3/val", n_classes=3, class_names=("W", "NREM", "REM"))
    m.update(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 2]))
    assert list(m.compute()) == [f"fold3/val/{n}" for n in ("acc", "f1_macro", "kappa", "f1_W", "f1_NREM", "f1_REM")]
    with pytest.raises(ValueError):
        SleepStageMetrics("val", n_classes=4)


def test_input_validation() -> None:
    m = SleepStageMetrics("val")
    with pytest.raises(ValueError):
        m.update(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))  # wrong C
    with pytest.raises(ValueError):
        m.update(torch.randn(10), torch.zeros(10, dtype=torch.long))  # float indices
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 5, dtype=torch.long), torch.zeros(10, dtype=torch.long))
    with pytest.raises(RuntimeError):
        m.update(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 1]))  # out-of-range target


def test_is_module_and_moves_state() -> None:
    m = SleepStageMetrics("val")
    assert isinstance(m, torch.nn.Module)
    m = m.to(torch.float64)  # state stays integer counts
    m(torch.randn(6, C), torch.randint(0, C, (6,)))
    assert m.confusion_matrix().dtype == torch.int64
    assert int(m.confusion_matrix().sum()) == 6


def test_format_report() -> None:
    cm = np.array([[5, 1, 0, 0, 0], [1, 2, 0, 0, 0], [0, 1, 9, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 3]])
    plain = metrics_from_confusion(cm)
    prefixed = {f"val/{k}": torch.tensor(v) for k, v in plain.items()}
    for metrics in (plain, prefixed):
        text = format_report(metrics, "val")
        lines = text.splitlines()
        assert "[val]" in lines[0]
        for name in (*STAGES, "macro-F1", "accuracy", "kappa"):
            assert any(line.split()[0] == name for line in lines[1:] if line.strip("-")), name
        assert "n/a" in next(line for line in lines if line.startswith("N3"))
        assert f"{plain['f1_macro']:.3f}" in text


# --------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(
    rank: int, world_size: int, port: int, preds: torch.Tensor, target: torch.Tensor, expected_cm: torch.Tensor
) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        m = SleepStageMetrics("val")
        # Each rank sees a different shard (uneven sizes); compute() must give global values everywhere.
        shard_p, shard_t = torch.tensor_split(preds, world_size)[rank], torch.tensor_split(target, world_size)[rank]
        for cp, ct in zip(torch.tensor_split(shard_p, 2), torch.tensor_split(shard_t, 2), strict=True):
            m.update(cp, ct)
        torch.testing.assert_close(m.confusion_matrix(), expected_cm)
        got = m.compute()
        expected = metrics_from_confusion(expected_cm.numpy())
        for name, value in expected.items():
            assert float(got[f"val/{name}"]) == pytest.approx(value, abs=1e-6), name
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 interpreters (~4-10 s); run with `pytest -m slow`
def test_ddp_sync_gloo() -> None:
    mp = pytest.importorskip("torch.multiprocessing")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    preds, target, y, p = make_case(7, "logits2d")
    expected_cm = torch.from_numpy(confusion_matrix(y, p, labels=list(range(C))))
    mp.spawn(_ddp_worker, args=(2, _free_port(), preds, target, expected_cm), nprocs=2, join=True)


# --------------------------------------------------------------------------- dsn.evaluation (numpy only)


@pytest.mark.parametrize("seed", [0, 3])
def test_evaluation_confusion_matrix_matches_sklearn_with_ignore_index(seed: int) -> None:
    from dsn import evaluation

    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, C, 300))
    y[rng.random(300) < 0.15] = IGNORE_INDEX
    y[:3] = -2  # the other unscored code is left out too
    keep = y >= 0
    cm = evaluation.confusion_matrix(y, p, C)
    np.testing.assert_array_equal(cm, confusion_matrix(y[keep], p[keep], labels=list(range(C))))
    assert_metrics_close(evaluation.metrics_from_confusion(cm), sklearn_reference(y[keep], p[keep]))
    full = evaluation.metrics_from_confusion(cm, precision_recall=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec = precision_score(y[keep], p[keep], labels=list(range(C)), average=None, zero_division=np.nan)
        rec = recall_score(y[keep], p[keep], labels=list(range(C)), average=None, zero_division=np.nan)
    for i, name in enumerate(STAGES):
        assert full[f"precision_{name}"] == pytest.approx(prec[i], nan_ok=True)
        assert full[f"recall_{name}"] == pytest.approx(rec[i], nan_ok=True)
    # the torchmetrics state counts the same matrix from the same labels
    m = SleepStageMetrics("val")
    m.update(torch.from_numpy(p), torch.from_numpy(np.where(y < 0, IGNORE_INDEX, y)))
    np.testing.assert_array_equal(m.confusion_matrix().numpy(), cm)


def test_evaluation_confusion_of_and_agreement() -> None:
    from types import SimpleNamespace

    from dsn import evaluation

    night1 = SimpleNamespace(y_true=np.array([0, 1, 2, -1]), proba=np.eye(C)[[0, 2, 2, 4]])
    night2 = SimpleNamespace(y_true=np.array([4, 4]), y_pred=np.array([4, 3]))
    cm = evaluation.confusion_of([night1, night2], C)
    assert cm.sum() == 5 and cm[1, 2] == 1 and cm[4, 3] == 1 and cm[4, 4] == 1
    a = evaluation.agreement(np.array([0, 0, -1, 2]), np.array([0, 2, 2, 2]))
    assert (a["n_epochs"], a["n_ignored"]) == (3, 1)
    assert a["precision_N2"] == pytest.approx(0.5) and a["recall_W"] == pytest.approx(0.5)
    assert math.isnan(a["precision_N1"]) and math.isnan(a["f1_N1"])
    with pytest.raises(ValueError, match="out of range"):
        evaluation.confusion_matrix([0, 5], [0, 1], C)


def test_evaluation_and_hypnogram_import_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, dsn.evaluation, dsn.hypnogram; "
            "bad = [m for m in ('torch', 'torchmetrics', 'dsn.systems', 'dsn.data.synth') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sleep_stage_metrics_is_a_torchmetrics_confusion_matrix() -> None:
    m = SleepStageMetrics("val")
    assert isinstance(m, MulticlassConfusionMatrix) and m.validate_args is False and m.ignore_index == IGNORE_INDEX

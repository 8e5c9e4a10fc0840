"""Shared machinery of the training systems: metrics per split, kept predictions, the loss, Adam parameter
groups and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from dsn.data.labels import IGNORE_INDEX, N_CLASSES
from dsn.errors import ModelError
from dsn.systems.metrics import SleepStageMetrics

EVAL_SPLITS = ("val", "test")

#: Which conv layers get L2: DeepFeatureNet's small-branch first conv (the official code), both first convs
#: (the paper), every conv of the encoder (``all``: the official TinySleepNet code), or none.
L2Layers = Literal["small", "both", "all", "none"]


def l2_weights(feature_net: nn.Module, which: str, key: str = "l2_layers") -> list[nn.Parameter]:
    """The encoder weights that ``l2_layers: which`` decays: every conv kernel of ``feature_net`` for ``"all"``
    (:meth:`~dsn.models.TinySleepNetEncoder.conv_weights` where it has one), else its ``first_conv_weights(which)``.

    Raises
    ------
    ModelError
        One line naming ``key`` when the encoder has no first convs to decay (set ``none`` or ``all``).
    """
    if which == "all":
        own = getattr(feature_net, "conv_weights", None)
        if callable(own):
            return list(own())
        return [m.weight for m in feature_net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    own = getattr(feature_net, "first_conv_weights", None)
    if callable(own):
        try:
            return list(own(which))
        except ValueError as e:
            msg = str(e)
            raise type(e)(f"{key}{msg[len('l2_layers'):]}" if msg.startswith("l2_layers") else f"{key}={which!r}: {msg}") from None
    if which == "none":
        return []
    raise ModelError(f"{key}={which!r} names DeepFeatureNet's first convs, which {type(feature_net).__name__} does not "
                     "have; set l2_layers: none (or all: every conv)")

#: Learning-rate schedule after the warm-up: constant (the paper) or cosine decay to 0.
LRSchedule = Literal["constant", "cosine"]


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a number in the given range, else ``ValueError`` naming ``name``, the value
    and the allowed range."""
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    allowed = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name}={value!r}: must be a number in {allowed}")
    return float(value)


def check_adam(lrs: dict[str, float], betas: Sequence[float], eps: float, weight_decay: float) -> None:
    """Range checks of the Adam arguments shared by both systems."""
    for name, lr in lrs.items():
        check_number(name, lr, 0.0, low_open=True)
    if len(betas) != 2:
        raise ValueError(f"betas={betas!r}: must be two numbers in [0, 1)")
    for b in betas:
        check_number("betas", b, 0.0, 1.0, high_open=True)
    check_number("eps", eps, 0.0, low_open=True)
    check_number("weight_decay", weight_decay, 0.0)


class WarmupSchedule:
    """Learning-rate factor per optimizer step: linear warm-up, then constant or cosine decay to 0.

    ``factor(s) = (s + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then 1 (``"constant"``) or
    ``0.5 * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps)))`` (``"cosine"``, reaching 0 at
    ``total_steps``). A callable object (not a lambda), so :class:`torch.optim.lr_scheduler.LambdaLR` keeps its
    settings in checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int, schedule: LRSchedule = "constant"):
        self.warmup_steps, self.total_steps, self.schedule = int(warmup_steps), int(total_steps), schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class SleepSystem(L.LightningModule):
    """Base of :class:`PretrainSystem` and :class:`FinetuneSystem` (not used on its own).

    Keeps one :class:`SleepStageMetrics` per split, logs ``{split}/loss`` and the whole-split metrics
    at the end of every epoch, and keeps the last evaluation's targets and predictions
    (:attr:`eval_outputs`) and confusion matrix (:attr:`confusion`) for reports and figures.

    Parameters
    ----------
    n_outputs : int, default 5
        Number of classes.
    class_weights : list of float, optional
        Weighted cross-entropy: one positive weight per class, e.g. ``[1, 1.5, 1, 1, 1]`` (TinySleepNet's
        N1 weight). Each epoch's loss is multiplied by the weight of its true class and the batch loss is the
        sum divided by the number of scored epochs (TinySleepNet's normalisation, not PyTorch's division by
        the sum of the weights). ``None`` (the paper): plain cross-entropy.
    label_smoothing : float, default 0.0
        Label smoothing of the cross-entropy targets, in [0, 1) (0: the paper). With ``class_weights`` the
        smoothed loss of an epoch is weighted by its true class's weight.
    lr_schedule : {"constant", "cosine"}, default "constant"
        Learning rate after the warm-up: constant (the paper) or cosine decay to 0 at the end of training
        (``max_epochs``, or ``max_steps`` if that comes first). All parameter groups follow it.
    warmup_epochs : int, default 0
        Epochs of linear warm-up from ``lr / warmup_steps`` to ``lr`` (0: none). The schedule steps per
        optimizer step and takes the number of steps from the trainer.

    Notes
    -----
    Distributed (DDP): ``{split}/loss`` is logged with ``sync_dist=True`` (a mean over all processes' epochs);
    the metrics come from confusion matrices summed over the processes (exact). :attr:`eval_outputs` holds
    only this process's share of the evaluated epochs; :attr:`confusion` holds all of them.
    """

    def __init__(
        self,
        n_outputs: int = N_CLASSES,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        lr_schedule: LRSchedule = "constant",
        warmup_epochs: int = 0,
    ):
        super().__init__()
        if class_weights is not None:
            if len(class_weights) != n_outputs:
                raise ValueError(
                    f"class_weights={list(class_weights)!r}: must hold one weight per class ({n_outputs} numbers > 0)"
                )
            for w in class_weights:
                check_number("class_weights", w, 0.0, low_open=True)
        check_number("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: must be 'constant' or 'cosine'")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={warmup_epochs!r}: must be an integer >= 0")
        # a plain tensor, not a buffer: weight averaging must not touch it and checkpoints stay as they were
        self._class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self._label_smoothing = float(label_smoothing)
        self._lr_schedule = lr_schedule
        self._warmup_epochs = warmup_epochs
        self.metrics = nn.ModuleDict({f"{s}_metrics": SleepStageMetrics(s, n_classes=n_outputs) for s in ("train", *EVAL_SPLITS)})
        self.confusion: dict[str, np.ndarray] = {}
        self.eval_outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.last_metrics: dict[str, float] = {}
        self._eval_buffer: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self._eval_loss: dict[str, tuple[Tensor, Tensor]] = {}  # split -> (sum of loss x scored epochs, their count)
        self._nonfinite: Tensor | None = None  # training steps with a NaN/inf loss since the last check (on the device)

    # -- helpers for subclasses
    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean (optionally class-weighted, label-smoothed) cross-entropy over the scored epochs.

        Ignored epochs (``IGNORE_INDEX``) count for nothing; a batch without any scored epoch has loss 0
        (and zero gradients) instead of PyTorch's NaN.
        """
        logits = logits.reshape(-1, logits.shape[-1])
        y = y.reshape(-1)
        scored = y != IGNORE_INDEX
        if self._class_weights is None:  # PyTorch's own mean, bit for bit as before these options existed
            loss = nn.functional.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, label_smoothing=self._label_smoothing)
            return torch.where(scored.any(), loss, torch.zeros_like(loss))
        per_epoch = nn.functional.cross_entropy(
            logits, y, ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=self._label_smoothing
        )
        weights = self._class_weights.to(logits.device)[y.clamp(min=0)] * scored
        return (per_epoch * weights).sum() / scored.sum().clamp(min=1)

    def _step_end(self, split: str, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        # No host-device synchronisation here (a GPU step must not wait for the host): training weighs the
        # batch's loss by the batch size and counts non-finite losses on the device (:meth:`nonfinite_steps`);
        # evaluation weighs it by the number of scored epochs, summed on the device and logged at the epoch end;
        # the evaluation outputs stay on the device until then.
        preds = logits.argmax(-1)
        if split == "train":
            self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=max(y.numel(), 1), prog_bar=True,
                     sync_dist=True)
            bad = (~torch.isfinite(loss.detach())).sum()
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite + bad
        else:
            n = (y != IGNORE_INDEX).sum().clamp(min=1)
            total, count = self._eval_loss.get(split, (0.0, 0))
            self._eval_loss[split] = (total + loss.detach().float() * n, count + n)
        self.metrics[f"{split}_metrics"].update(preds, y)
        if split in EVAL_SPLITS:
            self._eval_buffer.setdefault(split, []).append((y.detach().reshape(-1), preds.detach().reshape(-1)))

    def nonfinite_steps(self, reset: bool = True) -> int:
        """Training steps whose loss was NaN or infinite since the last call (one host-device sync; call it at
        an epoch end, not every step)."""
        bad = 0 if self._nonfinite is None else int(self._nonfinite)
        if reset:
            self._nonfinite = None
        return bad

    def _epoch_end(self, split: str) -> None:
        if split in self._eval_loss:
            total, count = self._eval_loss.pop(split)
            if self._trainer is not None and self._trainer.world_size > 1:  # the weighted mean over all processes' epochs, as Lightning's own
                total = self.trainer.strategy.reduce(total, reduce_op="sum")
                count = self.trainer.strategy.reduce(count, reduce_op="sum")
            # identical on every process: "max" returns it exactly
            self.log(f"{split}/loss", total / count, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        m = self.metrics[f"{split}_metrics"]
        values = m.compute()  # already summed over DDP processes: every process holds the same values
        self.confusion[split] = m.confusion_matrix().cpu().numpy()
        m.reset()
        if split == "train":  # the oversampled training set: accuracy and macro-F1 only
            values = {k: v for k, v in values.items() if k in ("train/acc", "train/f1_macro")}
        self.last_metrics.update({k: float(v) for k, v in values.items()})
        macro = values.pop(f"{split}/f1_macro", None)
        # identical on every process: "max" over processes returns the value exactly (a mean might round)
        # and sync_dist=True keeps Lightning from warning about unsynchronised epoch-level values
        self.log_dict(values, sync_dist=True, reduce_fx="max")
        if macro is not None:  # the live validation macro-F1 in the progress bar
            self.log(f"{split}/f1_macro", macro, prog_bar=split != "train", sync_dist=True, reduce_fx="max")
        buf = self._eval_buffer.pop(split, [])
        if buf:
            self.eval_outputs[split] = (torch.cat([b[0] for b in buf]).cpu().numpy(), torch.cat([b[1] for b in buf]).cpu().numpy())

    def _shared_step(self, batch, split: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    @staticmethod
    def l2_groups(
        decayed: list[nn.Parameter], params: list[nn.Parameter], lr: float, weight_decay: float
    ) -> list[dict]:
        """Adam groups: ``decayed`` with coupled L2 ``weight_decay`` (the official ``wd * sum(w**2) / 2``
        loss term), the rest of ``params`` without."""
        ids = {id(p) for p in decayed}
        groups = [{"params": [p for p in params if id(p) in ids], "lr": lr, "weight_decay": weight_decay}]
        groups.append({"params": [p for p in params if id(p) not in ids], "lr": lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def adam(self, groups: list[dict], lr: float, betas: Sequence[float], eps: float) -> torch.optim.Adam:
        """The systems' Adam over ``groups``; its fused implementation (one kernel per step for all parameters)
        when the parameters are on a CUDA device, the default one elsewhere (CPU results unchanged)."""
        fused = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, **fused)

    def with_schedule(self, optimizer: torch.optim.Optimizer):
        """What ``configure_optimizers`` returns: ``optimizer`` alone (constant learning rate, no warm-up: the
        paper), or with a per-step :class:`WarmupSchedule` sized from the attached trainer.

        Raises
        ------
        ValueError
            If training has no finite length (``max_epochs=-1`` without ``max_steps``) or the warm-up is
            longer than training.
        """
        if self._lr_schedule == "constant" and self._warmup_epochs == 0:
            return optimizer
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                f"lr_schedule={self._lr_schedule!r}, warmup_epochs={self._warmup_epochs}: training needs a finite "
                "length (set the trainer's max_epochs or max_steps)"
            )
        per_epoch = trainer.num_training_batches
        if self._warmup_epochs and not (math.isfinite(per_epoch) and per_epoch > 0):
            raise ValueError(f"warmup_epochs={self._warmup_epochs}: the number of training batches per epoch is unknown")
        warmup = self._warmup_epochs * math.ceil(per_epoch / trainer.accumulate_grad_batches) if self._warmup_epochs else 0
        if warmup > total:
            raise ValueError(
                f"warmup_epochs={self._warmup_epochs}: longer than training ({int(total)} optimizer steps, "
                f"{warmup} of warm-up); must be at most max_epochs={trainer.max_epochs}"
            )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupSchedule(warmup, int(total), self._lr_schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

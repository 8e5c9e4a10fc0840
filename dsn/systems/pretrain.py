"""Representation pretraining: an epoch encoder (DeepSleepNet's two-branch CNN by default) with a softmax head on
class-balanced single epochs."""

from __future__ import annotations

from torch import Tensor, nn

from dsn.data.labels import N_CLASSES
from dsn.models import FeatureClassifierNet
from dsn.systems.base import L2Layers, LRSchedule, SleepSystem, check_adam, l2_weights


class PretrainSystem(SleepSystem):
    """Pretrain an epoch encoder (paper section II-B, "representation learning").

    Parameters
    ----------
    net : nn.Module
        The epoch encoder to train, ``(batch, n_chans, n_times) -> (batch, n_features)`` with ``n_features``
        (:class:`~dsn.models.DeepFeatureNet`, :class:`~dsn.models.TinySleepNetEncoder`, an
        :class:`~dsn.models.ExternalEncoder`); a linear head is put on its features. Its weights later
        initialise fine-tuning.
    n_outputs : int, default 5
        Number of classes.
    lr : float, default 1e-4
        Adam learning rate (paper: 1e-4).
    betas : tuple of float, default (0.9, 0.999)
        Adam betas, each in [0, 1).
    eps : float, default 1e-8
        Adam epsilon.
    weight_decay : float, default 1e-3
        L2 coefficient on the first conv layer(s) (coupled Adam ``weight_decay``, the official
        ``wd * sum(w**2) / 2`` loss term).
    l2_layers : {"small", "both", "all", "none"}, default "small"
        Which convs get L2: DeepFeatureNet's small branch's first conv (official code), both first convs (paper),
        every conv of the encoder (the official TinySleepNet code), none (:func:`~dsn.systems.base.l2_weights`).
    class_weights : list of float, optional
        Weighted cross-entropy, one weight > 0 per class (e.g. ``[1, 1.5, 1, 1, 1]``, TinySleepNet's N1);
        ``None`` (the paper): unweighted. See :class:`~dsn.systems.base.SleepSystem`.
    label_smoothing : float, default 0.0
        Label smoothing in [0, 1) (0: the paper).
    lr_schedule : {"constant", "cosine"}, default "constant"
        Learning rate after the warm-up: constant (the paper) or cosine decay to 0 at the end of training.
    warmup_epochs : int, default 0
        Epochs of linear learning-rate warm-up (0: none).

    Notes
    -----
    Batches are ``(x, y)`` with ``x`` (batch, n_chans, n_times) and ``y`` (batch,).
    """

    def __init__(
        self,
        net: nn.Module,
        n_outputs: int = N_CLASSES,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-3,
        l2_layers: L2Layers = "small",
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        lr_schedule: LRSchedule = "constant",
        warmup_epochs: int = 0,
    ):
        check_adam({"lr": lr}, betas, eps, weight_decay)
        super().__init__(n_outputs, class_weights, label_smoothing, lr_schedule, warmup_epochs)
        self.save_hyperparameters(ignore=["net"])
        self.model = FeatureClassifierNet(net, n_outputs)

    @property
    def feature_net(self) -> nn.Module:
        return self.model.feature_net

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _shared_step(self, batch, split: str) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = self._loss(logits, y)
        self._step_end(split, loss, logits, y)
        return loss

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        return self.model(batch[0]).argmax(-1)

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.l2_groups(
            l2_weights(self.feature_net, hp.l2_layers), list(self.parameters()), hp.lr, hp.weight_decay
        )
        return self.with_schedule(self.adam(groups, hp.lr, hp.betas, hp.eps))

"""Representation pretraining: the two-branch CNN with a softmax head on class-balanced single epochs."""

from __future__ import annotations

import torch
from torch import Tensor

from dsn.data.labels import N_CLASSES
from dsn.models import DeepFeatureNet, FeatureClassifierNet
from dsn.systems.base import L2Layers, SleepSystem


class PretrainSystem(SleepSystem):
    """Pretrain :class:`~dsn.models.DeepFeatureNet` (paper section II-B, "representation learning").

    Parameters
    ----------
    net : the feature net to train (its weights later initialise fine-tuning).
    n_outputs : number of classes.
    lr, betas, eps : Adam (paper: 1e-4, (0.9, 0.999), 1e-8).
    weight_decay : L2 coefficient on the first conv layer(s) (1e-3).
    l2_layers : which first convs get L2: ``"small"`` (official code, default), ``"both"`` (paper), ``"none"``.

    Batches are ``(x, y)`` with ``x`` (batch, n_chans, n_times) and ``y`` (batch,).
    """

    def __init__(
        self,
        net: DeepFeatureNet,
        n_outputs: int = N_CLASSES,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-3,
        l2_layers: L2Layers = "small",
    ):
        super().__init__(n_outputs)
        self.save_hyperparameters(ignore=["net"])
        self.model = FeatureClassifierNet(net, n_outputs)

    @property
    def feature_net(self) -> DeepFeatureNet:
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
            self.feature_net.first_conv_weights(hp.l2_layers), list(self.parameters()), hp.lr, hp.weight_decay
        )
        return torch.optim.Adam(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)

"""Sequence fine-tuning: an encoder + sequence model (DeepSleepNet's CNN + BiLSTM + shortcut by default) on
contiguous sequences, two learning rates."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from dsn.systems.base import L2Layers, LRSchedule, SleepSystem, check_adam, check_number, l2_weights


def load_pretrained(feature_net: nn.Module, source: str | Path | nn.Module) -> nn.Module:
    """Copy pretrained weights into ``feature_net`` (in place) and return it.

    ``source`` is a PretrainSystem/FinetuneSystem Lightning checkpoint (``.ckpt``), a saved
    ``state_dict`` of a feature net (``.pt``), or a module that has a ``feature_net`` (or is one), e.g. a
    model loaded from a registry reference with :func:`dsn.workflows.registry.load_scorer` (systems never
    talk to MLflow themselves).

    Raises
    ------
    ValueError
        If the file is missing or its weights do not fit the configured network (different kernel
        sizes, filters or sampling rate), naming the mismatching tensors.
    """
    if isinstance(source, nn.Module):
        module = getattr(source, "feature_net", source)
        state = module.state_dict()
        where = type(source).__name__
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(source)):  # a URI scheme (two or more characters; C:/ is a path)
        raise ValueError(
            f"{source}: a model reference, not a file. Resolve it first (dsn.workflows.registry.load_scorer) "
            "and pass the loaded model; `dsn fit` does this for finetune.system.pretrained."
        )
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path}: pretrained checkpoint not found. Run the pretrain stage first or fix the path.")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", ckpt)
        for prefix in ("model.feature_net.", "net.feature_net.", "feature_net."):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                state = sub
                break
        where = str(path)
    own = feature_net.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        details = ", ".join(
            f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape) if k in state else 'missing'}" for k in bad[:4]
        )
        raise ValueError(
            f"{where}: pretrained weights do not fit the feature net ({details}). Use the same `net` settings "
            "(sfreq, kernel sizes, strides, filters) as the pretraining run."
        )
    feature_net.load_state_dict({k: state[k] for k in own})
    return feature_net


class FinetuneSystem(SleepSystem):
    """Fine-tune a sequence network on sequences (paper section II-C, "sequence residual learning").

    Parameters
    ----------
    net : DeepSleepNet or EncoderSequenceNet
        The sequence net (:class:`~dsn.models.DeepSleepNet`, or an :class:`~dsn.models.EncoderSequenceNet` of any
        encoder and sequence model); its ``feature_net`` normally holds pretrained weights.
    pretrained : str, optional
        Where to load the feature net's pretrained weights from (see :func:`load_pretrained`);
        ``None`` keeps the weights ``net`` already has.
    lr_pretrained : float, default 1e-6
        Adam learning rate of the pretrained CNN (paper: 1e-6).
    lr_new : float, default 1e-4
        Learning rate of the new parts: shortcut, LSTMs, head (paper: 1e-4).
    betas : tuple of float, default (0.9, 0.999)
        Adam betas, each in [0, 1).
    eps : float, default 1e-8
        Adam epsilon.
    weight_decay : float, default 1e-3
        L2 on the CNN's first conv layer(s), as in pretraining.
    l2_layers : {"small", "both", "all", "none"}, default "small"
        Which encoder convs get L2, as in pretraining (:func:`~dsn.systems.base.l2_weights`).
    grad_clip_norm : float or None, default 10.0
        Gradients clipped to this global norm (paper: 10); ``None`` (or 0) disables.
    carry_state : bool, default True
        Carry the LSTM state between consecutive chunks of a recording (reset where a batch row starts a
        new stream); needs ``sequence_sampling: stream`` in the data module to mean anything.
    class_weights : list of float, optional
        Weighted cross-entropy, one weight > 0 per class (e.g. ``[1, 1.5, 1, 1, 1]``, TinySleepNet's N1);
        ``None`` (the paper): unweighted. See :class:`~dsn.systems.base.SleepSystem`.
    label_smoothing : float, default 0.0
        Label smoothing in [0, 1) (0: the paper).
    lr_schedule : {"constant", "cosine"}, default "constant"
        Learning rate after the warm-up: constant (the paper) or cosine decay to 0 at the end of training.
        Both learning rates (``lr_pretrained`` and ``lr_new``) follow it, keeping their ratio.
    warmup_epochs : int, default 0
        Epochs of linear learning-rate warm-up (0: none).

    Notes
    -----
    Batches are ``(x, y, first)`` with ``x`` (batch, seq_len, n_chans, n_times), ``y`` (batch, seq_len)
    and ``first`` (batch,) bool: the row starts a new stream (state reset).
    """

    def __init__(
        self,
        net: nn.Module,
        pretrained: str | None = None,
        lr_pretrained: float = 1e-6,
        lr_new: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-3,
        l2_layers: L2Layers = "small",
        grad_clip_norm: float | None = 10.0,
        carry_state: bool = True,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        lr_schedule: LRSchedule = "constant",
        warmup_epochs: int = 0,
    ):
        check_adam({"lr_pretrained": lr_pretrained, "lr_new": lr_new}, betas, eps, weight_decay)
        if grad_clip_norm is not None:
            check_number("grad_clip_norm", grad_clip_norm, 0.0)
        super().__init__(net.n_outputs, class_weights, label_smoothing, lr_schedule, warmup_epochs)
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        if pretrained is not None:
            load_pretrained(net.feature_net, pretrained)
        self._state: dict[str, tuple[Tensor, ...] | None] = {}

    @property
    def feature_net(self) -> nn.Module:
        return self.net.feature_net

    def forward(self, x: Tensor, state=None, return_state: bool = False):
        return self.net(x, state, return_state=return_state)

    def _shared_step(self, batch, split: str) -> Tensor:
        x, y, first = batch
        state = self._state.get(split)
        if not self.hparams.carry_state or state is None or state[0].shape[1] != x.shape[0]:
            state = None
        else:  # rows starting a new stream get a zero state (no `first.all()` test: it would sync a GPU)
            state = self.net.mask_state(state, ~first)
        logits, new_state = self.net(x, state, return_state=True)
        self._state[split] = self.net.detach_state(new_state)
        loss = self._loss(logits, y)
        self._step_end(split, loss, logits, y)
        return loss

    def _reset(self, split: str) -> None:
        self._state[split] = None

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def configure_optimizers(self):
        hp = self.hparams
        decayed = l2_weights(self.feature_net, hp.l2_layers)
        groups = self.l2_groups(decayed, self.net.pretrained_parameters(), hp.lr_pretrained, hp.weight_decay)
        groups += self.l2_groups([], self.net.new_parameters(), hp.lr_new, 0.0)
        return self.with_schedule(self.adam(groups, hp.lr_new, hp.betas, hp.eps))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip_norm
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

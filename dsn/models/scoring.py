"""``SleepScorer``: a trained network plus everything needed to score a night with it.

A plain :class:`torch.nn.Module` (no Lightning, no MLflow): what ``dsn fit`` logs as the MLflow model,
what the registry stores and what ``dsn predict`` loads. It carries the preprocessing the network was
trained with (channel, sampling rate, epoch length, trimming), the class names, and the networks'
configuration, so that a model reference alone is enough to score a recording.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dsn.data.labels import STAGES
from dsn.models.deepsleepnet import DeepFeatureNet, DeepSleepNet, FeatureClassifierNet

__all__ = ["SleepScorer", "build_scorer"]


class SleepScorer(nn.Module):
    """A trained DeepSleepNet network with its preprocessing and class names.

    Parameters
    ----------
    net : FeatureClassifierNet or DeepSleepNet
        The trained network: the CNN with its softmax head (``kind="epoch"``, the pretraining stage) or
        the sequence model (``kind="sequence"``, the fine-tuning stage).
    preprocessing : dict
        ``channel``, ``sfreq``, ``epoch_sec``, ``trim_minutes``, ``unscored`` of the training data.
    config : dict
        ``{"net": {...}, "finetune_net": {...}}``: the keyword arguments the networks were built with
        (:func:`build_scorer` rebuilds the same networks from it).
    class_names : list of str, default ``STAGES``
        Class index order of the outputs.
    seq_len : int, default 25
        Epochs per chunk when a night is streamed through the sequence model.
    carry_state : bool, default True
        Carry the LSTM state from one chunk to the next (the official test procedure); False resets it.

    Shapes: :meth:`forward` is the network's own (``(batch, n_chans, n_times)`` for ``"epoch"``,
    ``(batch, seq_len, n_chans, n_times)`` for ``"sequence"``; logits out). :meth:`predict_proba` takes
    a whole night ``(n_epochs, n_chans, n_times)`` and returns ``(n_epochs, n_classes)`` probabilities.
    """

    def __init__(
        self,
        net: nn.Module,
        preprocessing: dict[str, Any],
        config: dict[str, Any],
        class_names: list[str] | tuple[str, ...] = STAGES,
        seq_len: int = 25,
        carry_state: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(net, (FeatureClassifierNet, DeepSleepNet)):
            raise TypeError(f"net must be a FeatureClassifierNet or DeepSleepNet, got {type(net).__name__}")
        self.net = net
        self.kind: Literal["epoch", "sequence"] = "sequence" if isinstance(net, DeepSleepNet) else "epoch"
        self.preprocessing = dict(preprocessing)
        self.config = dict(config)
        self.class_names = list(class_names)
        self.seq_len = int(seq_len)
        self.carry_state = bool(carry_state)

    @property
    def feature_net(self) -> DeepFeatureNet:
        return self.net.feature_net

    @property
    def sfreq(self) -> float:
        return float(self.preprocessing["sfreq"])

    @property
    def n_times(self) -> int:
        return int(self.feature_net.n_times)

    def spec(self) -> dict[str, Any]:
        """Everything but the weights: enough for :func:`build_scorer` to rebuild this scorer."""
        return {
            "kind": self.kind, "preprocessing": self.preprocessing, "config": self.config,
            "class_names": self.class_names, "seq_len": self.seq_len, "carry_state": self.carry_state,
        }  # fmt: skip

    def forward(self, x: Tensor, *args, **kwargs):
        return self.net(x, *args, **kwargs)

    @torch.inference_mode()
    def predict_proba(self, x: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
        """Class probabilities of every epoch of a night.

        Parameters
        ----------
        x : ndarray or Tensor
            ``(n_epochs, n_chans, n_times)`` float32 epochs, in recording order.
        batch_size : int, default 256
            Epochs per CNN forward pass (memory only; the result does not depend on it).

        Returns
        -------
        ndarray
            ``(n_epochs, n_classes)`` float32 probabilities (rows sum to 1).

        Notes
        -----
        The sequence model runs its CNN over all epochs in batches, then streams the LSTM over the
        night in chunks of ``seq_len`` epochs, carrying its state from chunk to chunk when
        ``carry_state`` (the official code's test procedure), so the result is the same as feeding
        the chunks one after the other.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        n = x.shape[0]

        def batch(i: int) -> Tensor:  # copied per batch: x may be a read-only memory map
            b = x[i : i + batch_size]
            return (b if isinstance(b, Tensor) else torch.from_numpy(np.array(b, dtype=np.float32))).to(device)

        try:
            if n == 0:
                return np.zeros((0, len(self.class_names)), dtype=np.float32)
            if self.kind == "epoch":
                out = [self.net(batch(i)) for i in range(0, n, batch_size)]
                return torch.softmax(torch.cat(out), -1).float().cpu().numpy()
            net: DeepSleepNet = self.net
            feats = torch.cat([net.feature_net(batch(i)) for i in range(0, n, batch_size)])
            shortcut = net.shortcut(feats)
            if self.carry_state and net.bidirectional_mode == "official":
                seq = self._official_stream(net, feats)
            else:
                state = None
                seq_out = []
                for i in range(0, n, self.seq_len):
                    out, state = net.run_lstm(feats[None, i : i + self.seq_len], state if self.carry_state else None)
                    seq_out.append(out[0])
                seq = torch.cat(seq_out)
            logits = net.classifier(net.dropout(shortcut + seq))
            return torch.softmax(logits, -1).float().cpu().numpy()
        finally:
            self.train(was_training)

    def _official_stream(self, net: DeepSleepNet, feats: Tensor) -> Tensor:
        """The official bidirectional LSTM streamed over a night in ``seq_len`` chunks with carried state.

        The forward stack's state carried from chunk to chunk is the same as one pass over the whole
        night, so it runs as one call; only the backward stack, which reads each chunk reversed starting
        from the previous chunk's final state, runs chunk by chunk. ``(n_epochs, n_features)`` in,
        ``(n_epochs, 2 * hidden_size)`` out; equal to :meth:`DeepSleepNet.run_lstm` fed chunk by chunk.
        """
        h0, c0, hb, cb = net.init_state(1, device=feats.device, dtype=feats.dtype)
        out_f, _, _ = net._run_stack(net.fwd_layers, feats[None], h0, c0)
        outs = []
        for i in range(0, feats.shape[0], self.seq_len):
            out_b, hb, cb = net._run_stack(net.bwd_layers, feats[None, i : i + self.seq_len].flip(1), hb, cb)
            outs.append(out_b.flip(1))
        return torch.cat([out_f, torch.cat(outs, 1)], dim=2)[0]

    def predict(self, x: np.ndarray | Tensor) -> np.ndarray:
        """``(n_epochs,)`` int64 class indices (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(x).argmax(-1).astype(np.int64)


def build_scorer(spec: dict[str, Any], state_dict: dict[str, Tensor] | None = None) -> SleepScorer:
    """Rebuild a :class:`SleepScorer` from its :meth:`SleepScorer.spec` (and load ``state_dict``).

    ``state_dict`` may be the scorer's own (``net.`` keys) or a training system's (``model.`` keys for
    the pretraining system, ``net.`` for fine-tuning).
    """
    cfg = spec["config"]
    feature_net = DeepFeatureNet(**cfg["net"])
    n_outputs = len(spec.get("class_names") or STAGES)
    if spec["kind"] == "sequence":
        net: nn.Module = DeepSleepNet(feature_net, **{"n_outputs": n_outputs, **cfg.get("finetune_net", {})})
    else:
        net = FeatureClassifierNet(feature_net, n_outputs)
    scorer = SleepScorer(
        net, spec["preprocessing"], cfg, spec.get("class_names") or STAGES, spec.get("seq_len", 25), spec.get("carry_state", True)
    )
    if state_dict is not None:
        for prefix in ("net.", "model."):
            sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if sub:
                net.load_state_dict(sub)
                break
        else:
            net.load_state_dict(state_dict)
    return scorer.eval()

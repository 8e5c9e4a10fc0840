"""``SleepScorer``: a trained network plus everything needed to score a night with it.

A plain :class:`torch.nn.Module` (no Lightning, no MLflow): what ``dsn fit`` logs as the MLflow model,
what the registry stores and what ``dsn predict`` loads. It carries the preprocessing the network was
trained with (channel, sampling rate, epoch length, trimming), the class names, and the networks'
configuration, so that a model reference alone is enough to score a recording.

Its :meth:`SleepScorer.spec` (a JSON-able dict, versioned by :data:`SPEC_FORMAT`) plus its weights are
the whole model: :mod:`dsn.models.spec` rebuilds the networks from a spec (:func:`~dsn.models.spec.build_scorer`)
and applies the compatibility rule (:func:`~dsn.models.spec.upgrade_spec`: an older format version loads with
defaults for the keys it lacks, a newer major version is refused). :mod:`dsn.artifact` writes and reads the two files.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dsn.data.labels import STAGES
from dsn.evaluation import apply_temperature
from dsn.models.deepsleepnet import DeepSleepNet, FeatureClassifierNet
from dsn.models.sequence import EncoderSequenceNet

__all__ = ["SPEC_FORMAT", "NightFeatures", "SleepScorer"]

#: Version of the spec layout, ``MAJOR.MINOR``. A minor bump adds keys with defaults (older dsn versions
#: ignore them, :func:`~dsn.models.spec.upgrade_spec` fills them in for older specs); a major bump changes the meaning of
#: existing keys, and a dsn that knows an older major refuses such a spec.
#: 1.1: ``config.net`` and ``config.finetune_net`` may name another network (``class_path``, ``init_args``,
#: ``package``, ``package_version``; :mod:`dsn.models.networks`); absent: DeepSleepNet's, as in 1.0.
SPEC_FORMAT = "1.1"

#: The spec's own keys (everything else a spec carries, e.g. ``calibration``, is kept in ``extra``).
_SPEC_KEYS = ("format_version", "dsn_version", "kind", "preprocessing", "config", "class_names", "seq_len",
              "carry_state", "n_offsets")


@dataclass
class NightFeatures:
    """What :meth:`SleepScorer.night_features` computed for one night, reused by :meth:`SleepScorer.proba_from_features`.

    ``feats``: the CNN's ``(n_epochs, n_features)`` features (an ``"epoch"`` model: its logits);
    ``shortcut``: the sequence model's shortcut of them; ``fwd``: the official forward LSTM stack's output over
    the night (the same for every chunk offset), once computed; ``rows``: the softmax ``(n_epochs, n_classes)``
    of each chunk offset streamed so far.
    """

    feats: Tensor
    shortcut: Tensor | None = None
    fwd: Tensor | None = None
    rows: dict[int, Tensor] = field(default_factory=dict)

    @property
    def n_epochs(self) -> int:
        return int(self.feats.shape[0])


class SleepScorer(nn.Module):
    """A trained DeepSleepNet network with its preprocessing and class names.

    Parameters
    ----------
    net : FeatureClassifierNet, DeepSleepNet or EncoderSequenceNet
        The trained network: the epoch encoder with its softmax head (``kind="epoch"``, the pretraining stage)
        or the sequence network (``kind="sequence"``, the fine-tuning stage): DeepSleepNet, or any encoder with
        another sequence model (:class:`~dsn.models.EncoderSequenceNet`).
    preprocessing : dict
        ``channel``, ``sfreq``, ``epoch_sec``, ``trim_minutes``, ``unscored`` and ``normalize`` (absent in
        models saved before that option: ``"none"``) of the training data. :meth:`predict_proba` takes
        epochs already normalised; :func:`dsn.workflows.predict.score_recording` applies it.
    config : dict
        ``{"net": {...}, "finetune_net": {...}}``: the keyword arguments the networks were built with, or another
        network's ``class_path`` and ``init_args`` (:func:`~dsn.models.networks.encoder_config`;
        :func:`~dsn.models.spec.build_scorer` rebuilds the same networks from it).
    class_names : list of str, default ``STAGES``
        Class index order of the outputs.
    seq_len : int, default 25
        Epochs per chunk when a night is streamed through the sequence model.
    carry_state : bool, default True
        Carry the LSTM state from one chunk to the next (the official test procedure); False resets it.
    n_offsets : int, default 1
        Chunk-offset averaging of the sequence model: the night is streamed ``n_offsets`` times, the k-th
        time with its chunk boundaries moved by ``round(k * seq_len / n_offsets)`` epochs (a shorter first
        chunk), and the class probabilities are averaged. Inside a chunk the backward LSTM sees only the
        epochs up to the chunk's end, so an epoch near a boundary has almost no future context in one
        streaming; moving the boundaries gives every epoch several amounts of it. 1 (the official test
        procedure): one streaming with boundaries at multiples of ``seq_len``. No effect on ``"epoch"``
        models.
    extra : dict, optional
        Further JSON-able spec keys (e.g. ``calibration``, ``familiarity``) carried through :meth:`spec`
        unchanged, so a model keeps what a newer step added to its spec.

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
        n_offsets: int = 1,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, (FeatureClassifierNet, DeepSleepNet, EncoderSequenceNet)):
            raise TypeError(f"net must be a FeatureClassifierNet, DeepSleepNet or EncoderSequenceNet, got {type(net).__name__}")
        self.net = net
        seq = isinstance(net, (DeepSleepNet, EncoderSequenceNet))
        self.kind: Literal["epoch", "sequence"] = "sequence" if seq else "epoch"
        self.preprocessing = dict(preprocessing)
        self.config = dict(config)
        self.class_names = list(class_names)
        self.seq_len = int(seq_len)
        self.carry_state = bool(carry_state)
        if isinstance(n_offsets, bool) or not isinstance(n_offsets, int) or not 1 <= n_offsets <= max(1, self.seq_len):
            raise ValueError(f"n_offsets={n_offsets!r}: must be an integer in [1, seq_len={self.seq_len}]")
        self.n_offsets = int(n_offsets)
        self.extra = dict(extra or {})

    @property
    def feature_net(self) -> nn.Module:
        return self.net.feature_net

    @property
    def sfreq(self) -> float:
        return float(self.preprocessing["sfreq"])

    @property
    def n_times(self) -> int:
        return int(self.feature_net.n_times)

    @property
    def channels(self) -> list[str]:
        """The channels the model reads, in order (``preprocessing["channels"]``: labels, aliases or derivations
        ``NAME=PLUS-MINUS``); a model saved before several channels existed has one ``"channel"``."""
        chans = self.preprocessing.get("channels")
        return list(chans) if chans else [self.preprocessing.get("channel") or "EEG Fpz-Cz"]

    def spec(self) -> dict[str, Any]:
        """Everything but the weights: enough for :func:`~dsn.models.spec.build_scorer` to rebuild this scorer (JSON-able)."""
        from dsn import __version__

        return {
            **self.extra, "format_version": SPEC_FORMAT, "dsn_version": __version__, "kind": self.kind,
            "preprocessing": self.preprocessing, "config": self.config, "class_names": self.class_names,
            "seq_len": self.seq_len, "carry_state": self.carry_state, "n_offsets": self.n_offsets,
        }  # fmt: skip

    def forward(self, x: Tensor, *args, **kwargs):
        return self.net(x, *args, **kwargs)

    # --- trust (dsn.workflows.calibration): two spec keys kept in ``extra`` -----------------------------
    @property
    def calibration(self) -> dict[str, Any]:
        """``{"temperature": T}`` fitted on the validation subjects by ``dsn fit`` (spec key; empty: raw softmax)."""
        return self.extra.get("calibration") or {}

    @calibration.setter
    def calibration(self, value: dict[str, Any] | None) -> None:
        self.extra["calibration"] = dict(value or {})

    @property
    def familiarity(self) -> dict[str, Any]:
        """:func:`dsn.familiarity.describe` of the training nights (spec key; empty: no check)."""
        return self.extra.get("familiarity") or {}

    @familiarity.setter
    def familiarity(self, value: dict[str, Any] | None) -> None:
        self.extra["familiarity"] = dict(value or {})

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0: uncalibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    def predict_proba(
        self, x: np.ndarray | Tensor, batch_size: int | None = None, n_offsets: int | None = None,
        calibrated: bool = True,
    ) -> np.ndarray:
        """Class probabilities of every epoch of a night, calibrated by the scorer's temperature.

        :meth:`raw_proba` followed by :func:`dsn.evaluation.apply_temperature` with :attr:`temperature`
        (unless ``calibrated=False`` or the scorer has no calibration); same parameters and shapes.
        """
        proba = self.raw_proba(x, batch_size, n_offsets)
        if not calibrated or self.temperature == 1.0:
            return proba
        return apply_temperature(proba, self.temperature)

    @torch.inference_mode()
    def raw_proba(self, x: np.ndarray | Tensor, batch_size: int | None = None, n_offsets: int | None = None) -> np.ndarray:
        """Class probabilities of every epoch of a night (the network's softmax, uncalibrated).

        Parameters
        ----------
        x : ndarray or Tensor
            ``(n_epochs, n_chans, n_times)`` float32 epochs, in recording order.
        batch_size : int, optional
            Epochs per CNN forward pass (speed and memory only; the result does not depend on it). Default:
            :data:`CPU_BATCH` on a CPU (small batches stay in the cache: measured faster), 256 elsewhere.
        n_offsets : int, optional
            Chunk offsets to average for this call (default: the scorer's :attr:`n_offsets`).

        Returns
        -------
        ndarray
            ``(n_epochs, n_classes)`` float32 probabilities (rows sum to 1).

        Notes
        -----
        The sequence model runs its CNN over all epochs in batches, then streams the LSTM over the
        night in chunks of ``seq_len`` epochs, carrying its state from chunk to chunk when
        ``carry_state`` (the official code's test procedure), so the result is the same as feeding
        the chunks one after the other. With ``n_offsets > 1`` this is repeated with shifted chunk
        boundaries (the CNN and the shortcut run once) and the probabilities are averaged.
        :meth:`night_features` followed by :meth:`proba_from_features`.
        """
        return self.proba_from_features(self.night_features(x, batch_size), n_offsets)

    @torch.inference_mode()
    def night_features(self, x: np.ndarray | Tensor, batch_size: int | None = None) -> NightFeatures:
        """The CNN's part of :meth:`raw_proba`: ``(n_epochs, n_chans, n_times)`` epochs in, kept for
        :meth:`proba_from_features`, which can then score the night several times without the CNN."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        if batch_size is None:
            batch_size = CPU_BATCH if device.type == "cpu" else 256

        def batch(i: int) -> Tensor:  # copied per batch: x may be a read-only memory map
            b = x[i : i + batch_size]
            return (b if isinstance(b, Tensor) else torch.from_numpy(np.array(b, dtype=np.float32))).to(device)

        try:
            n = x.shape[0]
            if n == 0:
                return NightFeatures(torch.zeros(0, 0))
            with _flush_denormals(device):
                if self.kind == "epoch":
                    return NightFeatures(torch.cat([self.net(batch(i)) for i in range(0, n, batch_size)]))
                net = self.net
                feats = torch.cat([net.feature_net(batch(i)) for i in range(0, n, batch_size)])
                return NightFeatures(feats, net.shortcut(feats) if isinstance(net, DeepSleepNet) else None)
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def proba_from_features(self, nf: NightFeatures, n_offsets: int | None = None) -> np.ndarray:
        """:meth:`raw_proba` of the night whose :meth:`night_features` are ``nf`` (the CNN not run again).

        The softmax of every chunk offset and the forward LSTM's output are kept in ``nf``: a second call
        (e.g. all offsets after a first pass with one) computes only what the first did not.
        """
        was_training = self.training
        self.eval()
        try:
            n = nf.n_epochs
            if n == 0:
                return np.zeros((0, len(self.class_names)), dtype=np.float32)
            if self.kind == "epoch":
                return torch.softmax(nf.feats, -1).float().cpu().numpy()
            n_off = self.n_offsets if n_offsets is None else int(n_offsets)
            offsets = [round(k * self.seq_len / n_off) for k in range(n_off)]
            missing = [o for o in offsets if o not in nf.rows]
            if missing:
                with _flush_denormals(nf.feats.device):
                    if isinstance(self.net, DeepSleepNet):
                        self._stream_offsets(nf, missing)
                    else:
                        self._sequence_offsets(nf, missing)
            proba = sum(nf.rows[o] for o in offsets)
            return (proba / n_off).float().cpu().numpy()
        finally:
            self.train(was_training)

    def _stream_offsets(self, nf: NightFeatures, offsets: list[int]) -> None:
        """Stream the LSTM over the night once per chunk offset in ``offsets``; each offset's softmax into ``nf.rows``."""
        net: DeepSleepNet = self.net
        feats = nf.feats
        official = self.carry_state and net.bidirectional_mode == "official"
        if official and nf.fwd is None:
            h0, c0, _, _ = net.init_state(1, device=feats.device, dtype=feats.dtype)
            nf.fwd, _, _ = net._run_stack(net.fwd_layers, feats[None], h0, c0)  # the same for every chunking
        if official and len(offsets) > 1:  # one offset: the torch LSTM over the reading order is faster
            seq = _offset_rows(net, feats, offsets, self.seq_len, nf.fwd)  # (len(offsets), n, 2 * hidden)
            proba = torch.softmax(net.classifier(net.dropout(nf.shortcut + seq)), -1)
            nf.rows.update(zip(offsets, proba))
            return
        for o in offsets:
            bounds = self.chunk_bounds(nf.n_epochs, o)
            if official:
                seq, _ = self._official_stream(net, feats, bounds, nf.fwd)
            else:
                state = None
                seq_out = []
                for i, j in bounds:
                    out, state = net.run_lstm(feats[None, i:j], state if self.carry_state else None)
                    seq_out.append(out[0])
                seq = torch.cat(seq_out)
            nf.rows[o] = torch.softmax(net.classifier(net.dropout(nf.shortcut + seq)), -1)

    def _sequence_offsets(self, nf: NightFeatures, offsets: list[int]) -> None:
        """Another sequence model over the night (:class:`~dsn.models.EncoderSequenceNet`), once per chunk offset.

        A stateful model (``lstm``) with ``carry_state`` reads the night in one pass (the same as its chunks with
        the state carried, so every offset gives the same rows); a stateless one (``transformer``) reads it in
        chunks of ``seq_len`` epochs, each offset with its boundaries moved (:meth:`chunk_bounds`); ``none`` scores
        each epoch alone (one pass).
        """
        seq = self.net.sequence_net
        one_pass = type(seq).__name__ == "NoSequence" or (seq.stateful and self.carry_state)
        for o in offsets:
            if one_pass and nf.rows:
                nf.rows[o] = next(iter(nf.rows.values()))
                continue
            bounds = [(0, nf.n_epochs)] if one_pass else self.chunk_bounds(nf.n_epochs, o)
            logits = torch.cat([seq(nf.feats[None, i:j])[0] for i, j in bounds])
            nf.rows[o] = torch.softmax(logits, -1)

    def chunk_bounds(self, n: int, offset: int = 0) -> list[tuple[int, int]]:
        """``(start, stop)`` of the chunks a night of ``n`` epochs is streamed in: a first chunk of ``offset``
        epochs (none when 0), then ``seq_len`` epochs each (the last one shorter)."""
        cuts = [0, *range(offset % self.seq_len or self.seq_len, n, self.seq_len), n]
        return [(i, j) for i, j in zip(cuts[:-1], cuts[1:]) if j > i]

    def _official_stream(
        self, net: DeepSleepNet, feats: Tensor, bounds: list[tuple[int, int]], fwd: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The official bidirectional LSTM streamed over a night in the chunks ``bounds`` with carried state.

        The forward stack's state carried from chunk to chunk is the same as one pass over the whole
        night, so it runs as one call (or is reused: ``fwd``, the forward output of an earlier call). The
        backward stack reads each chunk reversed starting from the previous chunk's final state: one recurrence
        over the epochs in that reading order, so it too is one call, its outputs put back in recording order
        (a 22-h night: 0.13 s a layer against 0.18-0.32 s called chunk by chunk). ``(n_epochs, n_features)``
        in, ``(n_epochs, 2 * hidden_size)`` out (and the forward output); equal to
        :meth:`DeepSleepNet.run_lstm` fed chunk by chunk.
        """
        h0, c0, hb, cb = net.init_state(1, device=feats.device, dtype=feats.dtype)
        if fwd is None:
            fwd, _, _ = net._run_stack(net.fwd_layers, feats[None], h0, c0)
        # the backward stack's reading, chunk after chunk each from its last epoch down to its first with the state
        # carried, is one recurrence over the epochs in that order: one call, not one per chunk
        order = torch.cat([torch.arange(j - 1, i - 1, -1, device=feats.device) for i, j in bounds])
        out_b, _, _ = net._run_stack(net.bwd_layers, feats[order][None], hb, cb)
        bwd = torch.empty_like(out_b[0])
        bwd[order] = out_b[0]
        return torch.cat([fwd[0], bwd], dim=1), fwd

    def predict(self, x: np.ndarray | Tensor) -> np.ndarray:
        """``(n_epochs,)`` int64 class indices (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(x).argmax(-1).astype(np.int64)


#: Epochs per CNN batch on a CPU (:meth:`SleepScorer.night_features`): 64 ran the paper-size CNN over a 22-h night
#: in 0.67 s against 0.86 s for 256 and 1.03 s for 512 on a 2-core Xeon (benchmarks/bench_predict.py).
CPU_BATCH = 64


@contextlib.contextmanager
def _flush_denormals(device: torch.device):
    """Subnormal floats read as zero while scoring on a CPU (``torch.set_flush_denormal``), then the default again.

    A state or gate that decays towards zero passes through subnormal numbers, which a CPU computes tens of times
    slower than normal ones: a trained model's LSTM fed a signal outside its training range ran 3.7x slower
    (5.2 s against 1.4 s for 5 offsets over a 22-h night). Values below 1e-38 change no probability. Leaves the
    flag off (torch's default; torch cannot tell its current value).
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _ifog(lstm: nn.LSTM) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_ih, W_hh, b_ih + b_hh)`` of a one-layer LSTM with its gates reordered from PyTorch's i, f, g, o to i, f, o, g
    (the three sigmoid gates side by side, so that :func:`_lstm_rows` applies one sigmoid and one tanh per step)."""
    h = lstm.hidden_size
    perm = torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])
    perm = perm.to(lstm.weight_hh_l0.device)
    return lstm.weight_ih_l0[perm], lstm.weight_hh_l0[perm], (lstm.bias_ih_l0 + lstm.bias_hh_l0)[perm]


def _lstm_rows(x_gates: Tensor, w_hh: Tensor, order: list[int], valid: list[Tensor | None]) -> Tensor:
    """One LSTM layer's recurrence over precomputed input gates, the rows of a batch stepped together.

    ``x_gates`` ``(T, B, 4 * hidden)`` holds ``x @ W_ih.T + b_ih + b_hh`` of every position and ``w_hh`` is
    ``W_hh``, both with the gates in the order i, f, o, g (:func:`_ifog`); the positions are visited in ``order``
    with the state carried from one to the next, starting from zeros; ``valid[p]`` (``(B, 1)`` bool, or None when
    every row is valid) leaves the state of the rows without an epoch at position ``p`` unchanged. Returns
    ``(T, B, hidden)``: each position's new hidden state. Inference only (no dropout, no autograd graph kept).

    Each step writes into buffers allocated once (the gates, the cell state, the output row), so that a step is
    seven small operations: at one to five rows their dispatch, not their arithmetic, is most of a step's time.
    """
    t_len, b, four_h = x_gates.shape
    hidden = four_h // 4
    w = w_hh.t().contiguous()  # (hidden, 4 * hidden): measured faster than the transposed view
    xg = x_gates.unbind(0)
    out = x_gates.new_empty(t_len + 1, b, hidden)  # the extra last row: the zero initial state
    outs = out.unbind(0)
    h = outs[t_len].zero_()
    c = x_gates.new_zeros(b, hidden)
    tanh_c = x_gates.new_empty(b, hidden)
    gates = x_gates.new_empty(b, four_h)
    sig, g = gates[:, : 3 * hidden], gates[:, 3 * hidden :]
    i, f, o = gates[:, :hidden], gates[:, hidden : 2 * hidden], gates[:, 2 * hidden : 3 * hidden]
    for p in order:
        torch.addmm(xg[p], h, w, out=gates)
        sig.sigmoid_()
        g.tanh_()
        if valid[p] is None:
            c.mul_(f).addcmul_(i, g)
            torch.tanh(c, out=tanh_c)
            torch.mul(o, tanh_c, out=outs[p])
        else:  # rows outside their night keep their state
            c_new = torch.addcmul(f * c, i, g)
            c = torch.where(valid[p], c_new, c)
            outs[p].copy_(torch.where(valid[p], o * c_new.tanh(), h))
        h = outs[p]
    return out[:t_len]


def _offset_rows(net: DeepSleepNet, feats: Tensor, offsets: list[int], seq_len: int,
                 fwd: Tensor | None = None) -> Tensor:
    """The official bidirectional LSTM streamed over a night once per chunk offset, the offsets as rows of one batch.

    Equal to :meth:`SleepScorer._official_stream` with :meth:`SleepScorer.chunk_bounds` of each offset (carried
    state, eval mode), at the cost of one streaming plus a cheap recurrence per extra offset:

    * the forward stack does not depend on the chunking: one call, shared by every row;
    * the backward stack's first-layer input projection (``3072 -> 4 * hidden``, most of its work) depends on
      the epoch only: computed once for the night; the recurrences of all offsets then step together, row
      ``k`` shifted right by ``seq_len - first chunk`` positions so that every row's chunk boundaries fall on
      multiples of ``seq_len``; positions outside a row's night leave its state unchanged.

    ``(n_epochs, n_features)`` features in (and optionally the forward stack's ``(1, n_epochs, hidden_size)``
    output over them, computed here when not given); ``(n_offsets, n_epochs, 2 * hidden_size)`` LSTM outputs out.
    """
    n = feats.shape[0]
    pads = [seq_len - (o % seq_len or seq_len) for o in offsets]
    n_chunks = -(-(max(pads) + n) // seq_len)
    t_len = n_chunks * seq_len
    idx = torch.arange(t_len, device=feats.device)[:, None] - torch.tensor(pads, device=feats.device)[None]  # (T, B)
    inside = (idx >= 0) & (idx < n)
    full = inside.all(1).tolist()
    valid = [None if full[p] else inside[p, :, None] for p in range(t_len)]
    # the backward reading: chunk after chunk, each from its last position down to its first
    order = [p for t in range(n_chunks) for p in range((t + 1) * seq_len - 1, t * seq_len - 1, -1)]
    if fwd is None:
        h0, c0, _, _ = net.init_state(1, device=feats.device, dtype=feats.dtype)
        fwd, _, _ = net._run_stack(net.fwd_layers, feats[None], h0, c0)  # (1, n, hidden)
    x = None
    for li, lstm in enumerate(net.bwd_layers):
        w_ih, w_hh, bias = _ifog(lstm)
        if li == 0:  # per epoch, then laid out per row
            x_gates = torch.addmm(bias, feats, w_ih.t())[idx.clamp(0, n - 1)]
        else:
            x_gates = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w_ih.t()).view(t_len, len(offsets), -1)
        x = _lstm_rows(x_gates, w_hh, order, valid)
    bwd = torch.stack([x[p : p + n, k] for k, p in enumerate(pads)])  # (B, n, hidden)
    return torch.cat([fwd.expand(len(offsets), -1, -1), bwd], dim=2)

"""Sequence models over epoch features, behind one contract, and the encoder + sequence composition.

A *sequence model* maps the features of consecutive 30-s epochs to class scores for every epoch::

    forward(features, state=None, return_state=False)
        features: (batch, seq_len, n_features)  ->  logits: (batch, seq_len, n_outputs)

with the attributes ``n_features``, ``n_outputs`` and ``stateful``, and the state helpers of
:class:`~dsn.models.DeepSleepNet` (:meth:`SequenceNet.init_state`, :meth:`SequenceNet.mask_state`,
:meth:`SequenceNet.detach_state`). A recurrent model's state is an opaque tuple of tensors, each
``(k, batch, hidden_size)``, carried from one chunk of a recording to the next; a stateless model returns
``None`` as its state (so a caller that carries ``None`` forward needs no special case).

* :class:`LstmSequenceNet`: one (or more) unidirectional LSTM layers and a linear classifier, TinySleepNet's
  sequence part (Supratak & Guo 2020); its state carries across chunks, as the official code does.
* :class:`TransformerSequenceNet`: a :class:`torch.nn.TransformerEncoder` over the epoch features, with
  sinusoidal or learned positions (SleepTransformer, Phan et al. 2022; L-SeqSleepNet, Phan et al. 2023).
* :class:`NoSequence`: no context, each epoch scored alone (a linear head on its features, or the encoder's own
  class scores): a one-stage fit of an epoch encoder.

:class:`EncoderSequenceNet` puts an epoch encoder (``(batch, n_chans, n_times) -> (batch, n_features)``, with
an ``n_features`` attribute: :class:`~dsn.models.DeepFeatureNet`, :class:`~dsn.models.TinySleepNetEncoder`, an
:class:`~dsn.models.external.ExternalEncoder`) in front of any of them, with the interface of
:class:`~dsn.models.DeepSleepNet` that the fine-tuning system uses (``feature_net``, ``n_outputs``, ``forward(x,
state, return_state)``, ``mask_state``, ``detach_state``, ``pretrained_parameters``, ``new_parameters``).

Implementation Differences
--------------------------
1. **LSTM** (:class:`LstmSequenceNet`): as :class:`~dsn.models.DeepSleepNet`'s (Implementation Differences
   1-3 there): no peepholes (the official TinySleepNet code uses ``LSTMCell(use_peepholes=True)``), two bias
   vectors, the forget-gate bias initialised to ``lstm_forget_bias`` (TF ``forget_bias=1.0``), PyTorch's
   weight initialisation. Dropout follows the LSTM output (official ``DropoutWrapper(output_keep_prob=0.5)``).
   The official code masks the padded end of a recording's last sequence (``dynamic_rnn(sequence_length=)``);
   here every step of a chunk is read, so padding (if a data module pads) must be masked in the loss.
2. **Transformer** (:class:`TransformerSequenceNet`): not a reproduction of one paper. SleepTransformer puts
   a transformer inside each epoch (over time-frequency frames) and a second one across epochs; here the epoch
   encoder is any dsn encoder and only the across-epoch transformer is built: a linear projection of the
   features to ``d_model``, positions added, ``n_layers`` pre-norm encoder layers (GELU, feed-forward
   ``4 * d_model``), a final layer norm and a linear classifier. Attention is bidirectional within a chunk and
   nothing is carried between chunks: the context is the chunk (``seq_len`` epochs).
3. **Outputs are logits**; no softmax is applied.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from dsn.errors import ModelError
from dsn.models.deepsleepnet import DeepSleepNet, LSTMState, _check_positive_int, _init_lstm_bias

__all__ = [
    "SEQUENCE_NETS",
    "EncoderSequenceNet",
    "LstmSequenceNet",
    "NoSequence",
    "SequenceNet",
    "TransformerSequenceNet",
    "make_sequence_net",
]


def _check_drop(drop_prob: float) -> float:
    if not 0.0 <= drop_prob < 1.0:
        raise ModelError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
    return drop_prob


def _check_int(name: str, value: int) -> int:
    try:
        return _check_positive_int(name, value)
    except ValueError as e:
        raise ModelError(str(e)) from None


class SequenceNet(nn.Module):
    """Base class of the sequence models: ``(batch, seq_len, n_features) -> (batch, seq_len, n_outputs)``.

    Parameters
    ----------
    n_features : int
        Size of each epoch's feature vector (the encoder's ``n_features``).
    n_outputs : int
        Number of classes.

    Attributes
    ----------
    stateful : bool
        Whether :meth:`forward` carries a state from one chunk to the next (``False``: the state is ``None``).
    """

    stateful: bool = False
    mask_state = staticmethod(DeepSleepNet.mask_state)
    detach_state = staticmethod(DeepSleepNet.detach_state)

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.n_features = _check_int("n_features", n_features)
        self.n_outputs = _check_int("n_outputs", n_outputs)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LSTMState | None:
        """Zero state for ``batch_size`` streams (what ``state=None`` means); ``None`` for a stateless model."""
        return None

    def check_input(self, features: Tensor) -> None:
        """Raise :class:`~dsn.errors.ModelError` unless ``features`` is ``(batch, seq_len, n_features)``."""
        if features.ndim != 3 or features.shape[2] != self.n_features or min(features.shape[:2]) < 1:
            raise ModelError(
                f"{type(self).__name__} expects features (batch, seq_len, n_features={self.n_features}), got shape "
                f"{tuple(features.shape)}; put the epoch encoder in front (EncoderSequenceNet) or match n_features"
            )

    def score(self, features: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState | None]:
        """Logits ``(batch, seq_len, n_outputs)`` and the new state; subclasses implement it."""
        raise NotImplementedError

    def forward(
        self, features: Tensor, state: LSTMState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, LSTMState | None]:
        """Score every epoch of a batch of feature sequences.

        Parameters
        ----------
        features : Tensor
            ``(batch, seq_len, n_features)``; any ``seq_len >= 1``.
        state : tuple of Tensor, optional
            State carried from the previous chunk of the same streams (stateful models); ``None`` means zeros.
        return_state : bool, default False
            Also return the new state (``None`` for a stateless model).

        Returns
        -------
        Tensor or (Tensor, tuple of Tensor or None)
            Logits ``(batch, seq_len, n_outputs)``, and the new state when ``return_state``.
        """
        self.check_input(features)
        logits, new_state = self.score(features, state)
        return (logits, new_state) if return_state else logits


class LstmSequenceNet(SequenceNet):
    """Unidirectional LSTM over epoch features, then a linear classifier (TinySleepNet's sequence part).

    ``logits = Linear(dropout(LSTM(features)))``, with dropout after every LSTM layer (the last one included).

    Parameters
    ----------
    n_features : int
        Size of each epoch's features.
    n_outputs : int, default 5
        Number of classes.
    hidden_size : int, default 128
        LSTM units (TinySleepNet: 128).
    n_layers : int, default 1
        Stacked LSTM layers (TinySleepNet: 1).
    drop_prob : float, default 0.5
        Dropout after each LSTM layer (official ``output_keep_prob=0.5``).
    lstm_forget_bias : float or None, default 1.0
        Initial forget-gate bias (TF ``forget_bias``); ``None`` keeps PyTorch's initialisation.

    Notes
    -----
    Shapes: ``(batch, seq_len, n_features) -> (batch, seq_len, n_outputs)``. State: ``(h, c)``, each
    ``(n_layers, batch, hidden_size)``. The final state after a chunk is the initial state of the next chunk of
    the same stream, as the official code carries it between mini-batches (zeroed where a new recording starts,
    :meth:`mask_state`); a unidirectional LSTM is then chunk-invariant: two chunks with the carried state give
    the outputs of one long sequence.
    """

    stateful = True

    def __init__(
        self,
        n_features: int,
        n_outputs: int = 5,
        hidden_size: int = 128,
        n_layers: int = 1,
        drop_prob: float = 0.5,
        lstm_forget_bias: float | None = 1.0,
    ) -> None:
        super().__init__(n_features, n_outputs)
        self.hidden_size = _check_int("hidden_size", hidden_size)
        self.n_layers = _check_int("n_layers", n_layers)
        _check_drop(drop_prob)
        self.lstm = nn.LSTM(
            n_features, hidden_size, num_layers=n_layers, batch_first=True, dropout=drop_prob if n_layers > 1 else 0.0
        )
        _init_lstm_bias(self.lstm, lstm_forget_bias)
        self.dropout = nn.Dropout(drop_prob)
        self.classifier = nn.Linear(hidden_size, n_outputs)
        nn.init.zeros_(self.classifier.bias)  # official fc(..., bias=0.0)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LSTMState:
        """Zero ``(h, c)`` for ``batch_size`` streams, each ``(n_layers, batch_size, hidden_size)``."""
        return tuple(torch.zeros(self.n_layers, batch_size, self.hidden_size, device=device, dtype=dtype) for _ in "hc")

    def score(self, features: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        """Logits and the final ``(h, c)``."""
        b = features.shape[0]
        if state is None:
            state = self.init_state(b, features.device, features.dtype)
        expected = (self.n_layers, b, self.hidden_size)
        if len(state) != 2 or any(tuple(t.shape) != expected for t in state):
            raise ModelError(
                f"LstmSequenceNet state must be (h, c), each of shape {expected} (n_layers, batch, hidden_size), "
                f"got {[tuple(t.shape) for t in state]}; was it made with another batch size or model?"
            )
        out, (h, c) = self.lstm(features, (state[0].contiguous(), state[1].contiguous()))
        return self.classifier(self.dropout(out)), (h, c)


def sinusoidal_positions(seq_len: int, d_model: int, device=None, dtype=None) -> Tensor:
    """Sinusoidal position encodings (Vaswani et al. 2017): ``(seq_len, d_model)``, sine in even columns."""
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(seq_len, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe.to(dtype or torch.float32)


class TransformerSequenceNet(SequenceNet):
    """Transformer encoder over epoch features (SleepTransformer / L-SeqSleepNet style sequence model).

    ``Linear(n_features, d_model) -> + positions -> dropout -> n_layers x TransformerEncoderLayer (pre-norm) ->
    LayerNorm -> Linear(d_model, n_outputs)``; every epoch attends to every epoch of its chunk.

    Parameters
    ----------
    n_features : int
        Size of each epoch's features.
    n_outputs : int, default 5
        Number of classes.
    d_model : int, default 128
        Width of the transformer.
    n_heads : int, default 8
        Attention heads; must divide ``d_model``.
    n_layers : int, default 2
        Encoder layers.
    dim_feedforward : int, optional
        Feed-forward width; ``4 * d_model`` by default.
    drop_prob : float, default 0.1
        Dropout in the encoder layers and after the input projection.
    positions : {"sinusoidal", "learned"}, default "sinusoidal"
        Sinusoidal encodings (any ``seq_len``) or a learned embedding of ``max_len`` positions.
    max_len : int, default 128
        Longest chunk with ``positions="learned"``.

    Notes
    -----
    Shapes: ``(batch, seq_len, n_features) -> (batch, seq_len, n_outputs)``. Stateless: the state is ``None``.
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int = 5,
        d_model: int = 128,
        n_heads: int = 8,
        n_layers: int = 2,
        dim_feedforward: int | None = None,
        drop_prob: float = 0.1,
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        max_len: int = 128,
    ) -> None:
        super().__init__(n_features, n_outputs)
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_layers", n_layers), ("max_len", max_len)):
            _check_int(name, value)
        if d_model % n_heads:
            raise ModelError(f"d_model={d_model} must be a multiple of n_heads={n_heads}; e.g. d_model={n_heads * 16}")
        if positions not in ("sinusoidal", "learned"):
            raise ModelError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
        _check_drop(drop_prob)
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.positions, self.max_len = positions, max_len
        self.project = nn.Linear(n_features, d_model)
        self.position_embedding = nn.Parameter(torch.randn(max_len, d_model) * 0.02) if positions == "learned" else None
        self.dropout = nn.Dropout(drop_prob)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward or 4 * d_model, dropout=drop_prob, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.classifier = nn.Linear(d_model, n_outputs)

    def score(self, features: Tensor, state: LSTMState | None) -> tuple[Tensor, None]:
        """Logits and ``None`` (no state)."""
        seq_len = features.shape[1]
        x = self.project(features)
        if self.position_embedding is None:
            x = x + sinusoidal_positions(seq_len, self.d_model, x.device, x.dtype)
        elif seq_len > self.max_len:
            raise ModelError(
                f"TransformerSequenceNet was built with max_len={self.max_len} learned positions, got a chunk of "
                f"seq_len={seq_len} epochs; use shorter sequences, a larger max_len or positions='sinusoidal'"
            )
        else:
            x = x + self.position_embedding[:seq_len]
        return self.classifier(self.encoder(self.dropout(x))), None


class NoSequence(SequenceNet):
    """No sequence model: each epoch is scored from its own features alone (a one-stage fit).

    Parameters
    ----------
    n_features : int
        Size of each epoch's features.
    n_outputs : int, default 5
        Number of classes.
    head : {"linear", "identity"}, default "linear"
        ``"linear"``: a linear classifier on the features (named ``classifier``, as the pretraining model's head
        in :class:`~dsn.models.FeatureClassifierNet`, so its weights can be loaded); ``"identity"``: the
        features already are the encoder's class scores (``n_features == n_outputs``).

    Notes
    -----
    Shapes: ``(batch, seq_len, n_features) -> (batch, seq_len, n_outputs)``. Stateless: the state is ``None``.
    """

    def __init__(self, n_features: int, n_outputs: int = 5, head: Literal["linear", "identity"] = "linear") -> None:
        super().__init__(n_features, n_outputs)
        if head not in ("linear", "identity"):
            raise ModelError(f"head must be 'linear' or 'identity', got {head!r}")
        if head == "identity" and n_features != n_outputs:
            raise ModelError(
                f"NoSequence(head='identity') needs the encoder's class scores (n_features == n_outputs={n_outputs}), "
                f"got n_features={n_features}; use head='linear'"
            )
        self.head = head
        self.classifier = nn.Linear(n_features, n_outputs) if head == "linear" else nn.Identity()

    def score(self, features: Tensor, state: LSTMState | None) -> tuple[Tensor, None]:
        """Per-epoch logits and ``None`` (no state)."""
        return self.classifier(features), None


#: Sequence models by the short names a configuration may use.
SEQUENCE_NETS: dict[str, type[SequenceNet]] = {
    "lstm": LstmSequenceNet,
    "transformer": TransformerSequenceNet,
    "none": NoSequence,
}


def make_sequence_net(name: str, n_features: int, n_outputs: int = 5, **init_args) -> SequenceNet:
    """Build a sequence model by its short name (``lstm``, ``transformer``, ``none``).

    Raises
    ------
    ModelError
        For an unknown name (listing the known ones) or an argument the model does not take (naming it).
    """
    if name not in SEQUENCE_NETS:
        raise ModelError(f"unknown sequence model {name!r}; use one of {sorted(SEQUENCE_NETS)}")
    cls = SEQUENCE_NETS[name]
    try:
        return cls(n_features, n_outputs, **init_args)
    except TypeError as e:
        raise ModelError(f"sequence model {name!r} ({cls.__name__}): {e}") from None


class EncoderSequenceNet(nn.Module):
    """An epoch encoder followed by a sequence model: raw epochs in, per-epoch logits out.

    Parameters
    ----------
    feature_net : nn.Module
        Epoch encoder ``(batch, n_chans, n_times) -> (batch, n_features)`` with an ``n_features`` attribute.
    sequence_net : SequenceNet
        Sequence model with the same ``n_features``.

    Notes
    -----
    Shapes: ``forward(x, state=None, return_state=False)`` maps ``x`` ``(batch, seq_len, n_chans, n_times)``
    to logits ``(batch, seq_len, n_outputs)`` (and the sequence model's new state when ``return_state``): the
    interface of :class:`~dsn.models.DeepSleepNet`.
    """

    mask_state = staticmethod(DeepSleepNet.mask_state)
    detach_state = staticmethod(DeepSleepNet.detach_state)

    def __init__(self, feature_net: nn.Module, sequence_net: SequenceNet) -> None:
        super().__init__()
        n = getattr(feature_net, "n_features", None)
        if n != sequence_net.n_features:
            raise ModelError(
                f"{type(feature_net).__name__} gives n_features={n} but {type(sequence_net).__name__} was built for "
                f"n_features={sequence_net.n_features}; build the sequence model with the encoder's n_features"
            )
        self.feature_net = feature_net
        self.sequence_net = sequence_net
        self.n_outputs = sequence_net.n_outputs

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LSTMState | None:
        """The sequence model's zero state (``None`` for a stateless one)."""
        return self.sequence_net.init_state(batch_size, device, dtype)

    def extract_features(self, x: Tensor) -> Tensor:
        """Per-epoch features: ``(batch, seq_len, n_chans, n_times) -> (batch, seq_len, n_features)``."""
        if x.ndim != 4 or min(x.shape[:2]) < 1:
            raise ModelError(
                f"{type(self).__name__} expects a 4-d input (batch, seq_len, n_chans, n_times), got shape "
                f"{tuple(x.shape)}; for single epochs call the encoder, or add a seq_len dimension"
            )
        b, seq_len = x.shape[:2]
        return self.feature_net(x.reshape(b * seq_len, *x.shape[2:])).reshape(b, seq_len, -1)

    def forward(
        self, x: Tensor, state: LSTMState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, LSTMState | None]:
        """Logits ``(batch, seq_len, n_outputs)`` for raw epochs ``(batch, seq_len, n_chans, n_times)``."""
        return self.sequence_net(self.extract_features(x), state, return_state=return_state)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters of :attr:`feature_net` (the pretrained group)."""
        return list(self.feature_net.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters of :attr:`sequence_net` (the new group)."""
        return list(self.sequence_net.parameters())

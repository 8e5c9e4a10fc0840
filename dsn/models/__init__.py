"""Network definitions (plain ``torch.nn.Module`` objects, no training logic)."""

from dsn.models.deepsleepnet import (
    Conv1dSame,
    DeepFeatureNet,
    DeepSleepNet,
    FeatureClassifierNet,
    LSTMState,
    MaxPool1dSame,
    l2_penalty,
    same_output_length,
    same_padding,
)
from dsn.models.external import ExternalEncoder, make_encoder
from dsn.models.sequence import (
    SEQUENCE_NETS,
    EncoderSequenceNet,
    LstmSequenceNet,
    NoSequence,
    SequenceNet,
    TransformerSequenceNet,
    make_sequence_net,
)
from dsn.models.tinysleepnet import TinySleepNet, TinySleepNetEncoder
from dsn.models.wholeseq import RawEpochs, WholeSequenceNet

__all__ = [
    "SEQUENCE_NETS",
    "Conv1dSame",
    "DeepFeatureNet",
    "DeepSleepNet",
    "EncoderSequenceNet",
    "ExternalEncoder",
    "FeatureClassifierNet",
    "LSTMState",
    "LstmSequenceNet",
    "MaxPool1dSame",
    "NoSequence",
    "RawEpochs",
    "SequenceNet",
    "TinySleepNet",
    "TinySleepNetEncoder",
    "TransformerSequenceNet",
    "WholeSequenceNet",
    "l2_penalty",
    "make_encoder",
    "make_sequence_net",
    "same_output_length",
    "same_padding",
]

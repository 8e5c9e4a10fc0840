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

__all__ = [
    "Conv1dSame",
    "DeepFeatureNet",
    "DeepSleepNet",
    "FeatureClassifierNet",
    "LSTMState",
    "MaxPool1dSame",
    "l2_penalty",
    "same_output_length",
    "same_padding",
]

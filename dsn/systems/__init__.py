"""Training systems (LightningModules): they own losses, optimisers and metrics; networks are passed in."""

from dsn.systems.averaging import EMA, ema_callback
from dsn.systems.finetune import FinetuneSystem, load_pretrained
from dsn.systems.pretrain import PretrainSystem

__all__ = ["EMA", "FinetuneSystem", "PretrainSystem", "ema_callback", "load_pretrained"]

"""Training systems (LightningModules): they own losses, optimisers and metrics; networks are passed in."""

from dsn.systems.finetune import FinetuneSystem, load_pretrained
from dsn.systems.pretrain import PretrainSystem

__all__ = ["FinetuneSystem", "PretrainSystem", "load_pretrained"]

"""The training stack: `TrainConfig` and `train()` (AdamW, warmup + cosine LR, clipping,
periodic validation, HF-format checkpoints, exact resume), plus `evaluate_split`."""

from .config import TrainConfig
from .schedule import lr_at
from .trainer import TrainResult, evaluate_split, train

__all__ = ["TrainConfig", "TrainResult", "evaluate_split", "lr_at", "train"]

"""The training stack: `TrainConfig` and `train()` (AdamW, warmup + cosine LR, clipping,
periodic validation, HF-format checkpoints, exact resume, several processes on
torch.distributed, mixed precision), plus `evaluate_split`."""

from .config import TrainConfig
from .schedule import lr_at
from .trainer import TrainResult, check_options, evaluate_split, train

__all__ = ["TrainConfig", "TrainResult", "check_options", "evaluate_split", "lr_at", "train"]

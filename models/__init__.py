"""Golden PyTorch models, checkpoint I/O, tokenizers, the corpus and the training stack.

`models` never imports `hw`, `rtl` or `host`: it is the reference the hardware is checked
against, so it must stand on its own.
"""

from pathlib import Path

from .config import GPT2Config
from .errors import CheckpointError, ModelConfigError, ModelError, PromptError
from .gpt2 import GPT2LMHead
from .moe import MoEGPT, MoEGPTConfig
from .registry import load_model, model_types, register_model_type
from .tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "GPT2Config",
    "GPT2LMHead",
    "MoEGPT",
    "MoEGPTConfig",
    "ModelConfigError",
    "ModelError",
    "PromptError",
    "Tokenizer",
    "default_model_dir",
    "gpt2_tokenizer",
    "load_model",
    "load_tokenizer",
    "model_types",
    "register_model_type",
]

#: The embedded default model: trained by `tandem train` on the standard library's source.
DEFAULT_MODEL = "stdlib-code-4x256"


def default_model_dir() -> Path:
    return Path(__file__).parent / "pretrained" / DEFAULT_MODEL


register_model_type("gpt2", GPT2LMHead)
register_model_type("moe_gpt2", MoEGPT)

"""How a command turns `--model`, `--tokenizer` and `--backend` into checked objects.

Shared by `tandem generate` and `tandem serve` so that both accept and refuse the same things
with the same messages.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

import models
from models import Tokenizer

from .errors import UsageError
from .runtime import BACKENDS
from .runtime.prefill import PREFILL_NUMERICS, PREFILL_TARGETS

__all__ = [
    "add_model_arguments",
    "backend_options",
    "check_tokenizer_fits",
    "require_backend",
    "resolve_tokenizer",
]


def add_model_arguments(p) -> None:
    """--model, --tokenizer and --backend, as every generating command spells them."""
    p.add_argument("--model", default=str(models.default_model_dir()),
                   help="HF-format GPT-2 or MoE-GPT checkpoint directory (default: the shipped "
                   "model)")
    p.add_argument("--tokenizer", default="auto",
                   help="auto (the model's own), gpt2 (GPT-2's BPE) or a directory")
    p.add_argument("--backend", default="torch", help=f"one of: {', '.join(BACKENDS)}")
    accel = p.add_argument_group("accelerator backends (isa)")
    accel.add_argument("--config", default=None,
                       help="accelerator config: tiny, u280, u55c or a JSON file (default tiny)")
    accel.add_argument("--devices", type=int, default=None,
                       help="FPGAs in the ring (default 1)")
    accel.add_argument("--prefill", choices=PREFILL_TARGETS, default="fpga",
                       help="where the prompt is processed: fpga (the devices, default) or gpu "
                       "(the host's torch model on CUDA, else the CPU; the devices take the KV "
                       "cache and process only the last prompt token)")
    accel.add_argument("--prefill-numerics", choices=PREFILL_NUMERICS, default="torch",
                       help="with --prefill gpu: torch (FP32 golden model, default) or exact "
                       "(the devices' FP16 arithmetic emulated on the host: KV and tokens "
                       "bit-identical to --prefill fpga, slow)")


def backend_options(args) -> dict:
    """The keyword options `make_backend` passes to an accelerator backend's factory."""
    if args.backend == "torch" and (args.config is not None or args.devices is not None):
        given = "--config" if args.config is not None else "--devices"
        raise UsageError(f"{given} applies to the accelerator backends (isa, rtl, board); the "
                         "torch backend runs the golden model on one host device")
    options = {"config": "tiny" if args.config is None else args.config,
               "devices": 1 if args.devices is None else args.devices,
               "return_logits": getattr(args, "return_logits", False)}
    prefill = getattr(args, "prefill", "fpga")
    if prefill != "fpga" or getattr(args, "prefill_numerics", "torch") != "torch":
        if args.backend == "torch":
            raise UsageError("--prefill and --prefill-numerics apply to the accelerator "
                             "backends; the torch backend runs everything on one device")
        if prefill == "fpga":
            raise UsageError("--prefill-numerics applies to the host's prefill; add --prefill gpu")
        options.update(prefill=prefill, prefill_numerics=args.prefill_numerics)
    return options


def require_backend(name: str) -> None:
    """Raise UsageError unless `name` is a registered backend (cheap: before any model load)."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def resolve_tokenizer(model: str | Path, choice: str) -> Tokenizer | None:
    """`choice` is auto (the checkpoint's own, None if it ships none), gpt2 or a directory."""
    if choice in ("auto", "gpt2"):
        return models.load_tokenizer(model if choice == "auto" else choice)
    if not Path(choice).is_dir():
        raise UsageError(f"--tokenizer {choice!r} is neither auto, gpt2 nor a directory")
    tokenizer = models.load_tokenizer(choice)
    if tokenizer is None:
        raise UsageError(f"--tokenizer {choice} holds no tokenizer.json (nor vocab.json + "
                         "merges.txt)")
    return tokenizer


def check_tokenizer_fits(tokenizer: Tokenizer | None, model: nn.Module) -> None:
    """Raise UsageError if the tokenizer can produce ids the model has no embedding for."""
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise UsageError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size}; pass the model's own --tokenizer")

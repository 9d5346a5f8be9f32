"""The backend registry: a backend name and the user's options in, a `GenerationBackend` out.

`torch` is the golden model; `isa`, `rtl` and `board` are `ClusterBackend`s, one compiled
model on the instruction-level simulator, the RTL under simulation or Alveo cards. Their
modules are imported when a backend is made, so choosing `torch` loads neither the compiler
nor the simulators.
"""

from __future__ import annotations

from collections.abc import Callable

from models.gpt2 import GPT2LMHead

from ..errors import UsageError
from .api import GenerationBackend
from .torch_backend import TorchBackend

__all__ = ["BACKENDS", "make_backend"]


def _isa_backend(model: GPT2LMHead, config: str = "tiny", devices: int = 1,
                 return_logits: bool = False, prefill: str = "fpga",
                 prefill_numerics: str = "torch", **_) -> GenerationBackend:
    from hw.config import load_config

    from .cluster_backend import ClusterBackend

    return ClusterBackend(model, load_config(config, devices), return_logits=return_logits,
                          prefill=prefill, prefill_numerics=prefill_numerics)


def _rtl_backend(model: GPT2LMHead, config: str = "tiny", devices: int = 1,
                 return_logits: bool = False, **options) -> GenerationBackend:
    from hw.config import load_config

    from .rtl import RtlBackend

    options = {k: options[k] for k in ("prefill", "prefill_numerics") if k in options}
    return RtlBackend(model, load_config(config, devices), return_logits=return_logits,
                      **options)


def _board_backend(model: GPT2LMHead, config: str = "tiny", devices: int = 1,
                   return_logits: bool = False, xclbin: str | None = None,
                   **options) -> GenerationBackend:
    from hw.config import load_config

    from .board import BoardBackend

    if xclbin is None:
        raise UsageError("the board backend needs the kernel's --xclbin (built by `python -m "
                         "hw.vitis --config u280 --out DIR` and DIR/build.sh)")
    keep = ("prefill", "prefill_numerics", "pynq", "link_cfg", "timeout_s")
    return BoardBackend(model, load_config(config, devices), xclbin,
                        return_logits=return_logits,
                        **{k: options[k] for k in keep if k in options})


#: Backend name -> factory(model, **options) -> GenerationBackend.
BACKENDS: dict[str, Callable[..., GenerationBackend]] = {
    "torch": lambda model, **_: TorchBackend(model),
    "isa": _isa_backend,
    "rtl": _rtl_backend,
    "board": _board_backend,
}


def make_backend(name: str, model: GPT2LMHead, **options) -> GenerationBackend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name](model, **options)

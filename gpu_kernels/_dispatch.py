"""Where a kernel runs: the one decision every public function in `gpu_kernels` makes.

A public function launches its Triton kernel when Triton can run on its tensors' device:
CUDA tensors with `triton` importable, or CPU tensors under Triton's interpreter
(`TRITON_INTERPRET=1` in the environment before `gpu_kernels` is imported, which is how the
tests run the kernels here). Everywhere else it computes the same op with its torch reference,
so callers never branch.
"""

from __future__ import annotations

import os

import torch

__all__ = ["HAVE_TRITON", "INTERPRETER", "KERNEL_MODES", "jit", "kernels_notice",
           "resolve_kernels", "tl", "triton", "triton_available", "use_triton"]

try:  # triton is an optional extra; the kernel modules import it from here
    import triton
    import triton.language as tl
    HAVE_TRITON = True
    jit = triton.jit
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False
    triton = None

    class _NoTriton:  # lets the kernel modules (`x: tl.constexpr`) load without triton
        @staticmethod
        def constexpr(value=None):
            return value

    tl = _NoTriton()

    def jit(fn):
        return fn

#: Read once, as `@triton.jit` reads it when the kernel modules are imported.
INTERPRETER = HAVE_TRITON and os.environ.get("TRITON_INTERPRET", "") == "1"

KERNEL_MODES = ("torch", "triton", "auto")


def triton_available(device: torch.device | str) -> bool:
    """True when a Triton kernel can run on tensors of `device`."""
    if not HAVE_TRITON:
        return False
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    return kind == "cpu" and INTERPRETER


def resolve_kernels(kernels: str, device: torch.device | str) -> str:
    """Map a `kernels` option ("torch" | "triton" | "auto") to the path that runs on `device`.

    "auto" means Triton on CUDA and torch elsewhere; "triton" means Triton wherever it can run
    (CUDA, or CPU under the interpreter) and the torch reference elsewhere. Returns "torch" or
    "triton"; see `kernels_notice` for the line to show when "triton" falls back.
    """
    check_kernels(kernels)
    kind = torch.device(device).type
    if kernels == "torch":
        return "torch"
    if kernels == "auto":
        return "triton" if kind == "cuda" and triton_available(device) else "torch"
    return "triton" if triton_available(device) else "torch"


def kernels_notice(kernels: str, device: torch.device | str) -> str | None:
    """One line explaining a fallback of `kernels` on `device`, or None when there is none."""
    check_kernels(kernels)
    if kernels != "triton" or triton_available(device):
        return None
    why = ("triton is not installed" if not HAVE_TRITON else
           f"Triton needs CUDA (or TRITON_INTERPRET=1) and the device is {torch.device(device)}")
    return f"--kernels triton: {why}; using the torch reference kernels"


def check_kernels(kernels: str) -> None:
    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {KERNEL_MODES}, not {kernels!r}")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path runs on these (already validated, same-device) tensors."""
    return triton_available(tensors[0].device)


# -- input checks shared by the public functions --------------------------------------------


def check_tensor(name: str, t, dtypes: tuple[torch.dtype, ...] | None = None,
                 ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, not {t.dim()} "
                         f"(shape {tuple(t.shape)})")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be {allowed}, not {str(t.dtype).removeprefix('torch.')}")


def check_same_device(**tensors: torch.Tensor) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "put all inputs on one device")


def check_contiguous(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (strides {tuple(t.stride())} for shape "
                             f"{tuple(t.shape)}); call .contiguous() first")


FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())

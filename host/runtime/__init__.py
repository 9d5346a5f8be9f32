"""The runtime: generation backends behind one interface, selected by name.

Today: `torch` (the golden model on CPU or CUDA). The accelerator backends (`isa`, `rtl`,
`board`) plug into the same registry and extend the same per-step records.
"""

from .generation import BACKENDS, GenerationBackend, GenerationRequest, Step, make_backend

__all__ = ["BACKENDS", "GenerationBackend", "GenerationRequest", "Step", "make_backend"]

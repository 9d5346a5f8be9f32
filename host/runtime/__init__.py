"""The runtime: generation backends behind one interface, selected by name.

`api` holds the types (request, step, the backend and device-cluster protocols), `backends`
the registry (`torch`, `isa`, `rtl`, `board`), `cluster_backend` generation on a compiled
model over a device cluster, which the `isa`, `rtl` and `board` backends are.
"""

from .api import GenerationBackend, GenerationRequest, Step
from .backends import BACKENDS, make_backend
from .torch_backend import TorchBackend

__all__ = ["BACKENDS", "GenerationBackend", "GenerationRequest", "Step", "TorchBackend",
           "make_backend"]

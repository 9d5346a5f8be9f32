"""The instruction-level simulator: the `hw/` contract made executable.

Functionally exact through `hw.numerics` and timed through `hw.perf`; it imports nothing but
`hw`, so the RTL testbenches (`sim/`), the host runtime's `isa` backend and the compiler's
checks all run the same reference.
"""

from .cluster import IsaCluster
from .device import DeviceError, IsaDevice

__all__ = ["DeviceError", "IsaCluster", "IsaDevice"]

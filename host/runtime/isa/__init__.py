"""The `isa` backend: an instruction-level simulator of the accelerator, functionally exact
(through `hw.numerics`) and timed (through `hw.perf`)."""

from .cluster import IsaCluster
from .device import DeviceError, IsaDevice

__all__ = ["DeviceError", "IsaCluster", "IsaDevice"]

"""The `rtl` backend: the Amaranth kernels simulated on Verilator (or Icarus), driven through
the same cluster interface as the `isa` backend."""

from .backend import RtlBackend
from .cluster import RtlCluster, RtlDevice, RtlError, parse_trace, parse_writes

__all__ = ["RtlBackend", "RtlCluster", "RtlDevice", "RtlError", "parse_trace", "parse_writes"]

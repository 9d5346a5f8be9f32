"""The `board` backend: the kernel on Alveo U280 / U55C cards through PYNQ (`BoardCluster`),
tested against the RTL simulation through the same PYNQ calls (`sim.pynq`)."""

from .backend import BoardBackend
from .cluster import BoardCluster, BoardDevice, BoardError, import_pynq, pynq_bank

__all__ = ["BoardBackend", "BoardCluster", "BoardDevice", "BoardError", "import_pynq",
           "pynq_bank"]

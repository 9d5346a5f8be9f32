"""AMBA signatures as `wiring` signatures: AXI4 (the HBM masters), AXI4-Lite (kernel control)
and AXI4-Stream (ring links).

Signatures are written from the manager's side (`Out` is driven by the manager); a component
that serves the bus flips them. Member names are the AMBA signal names without the channel
prefix, so the Verilog port of member `awaddr` of port `m_axi_hbm0` is `m_axi_hbm0__awaddr`
(cocotbext-axi finds it with the prefix `m_axi_hbm0_`; `rtl.build` renames to the single
underscore Vitis wants).
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI_BURST_INCR", "axi4_signature", "axil_signature", "axis_signature"]

#: AxBURST encoding of incrementing bursts, the only kind the masters issue.
AXI_BURST_INCR = 1


def _check(name: str, value: int, allowed=None) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, not {value}")


def axi4_signature(addr_width: int, data_width: int, id_width: int = 1) -> wiring.Signature:
    """An AXI4 manager port. The masters here use a single ID (0), so responses return in
    order; the ID signals exist for interconnects and bus models that expect them."""
    _check("addr_width", addr_width)
    _check("data_width", data_width, {8 * 2**k for k in range(8)})
    _check("id_width", id_width)
    return wiring.Signature({
        "awid": Out(id_width), "arid": Out(id_width), "bid": In(id_width), "rid": In(id_width),
        "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1),
        "rready": Out(1),
    })


def axil_signature(addr_width: int, data_width: int = 32) -> wiring.Signature:
    """An AXI4-Lite manager port."""
    _check("addr_width", addr_width)
    _check("data_width", data_width, {32, 64})
    return wiring.Signature({
        "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1),
        "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


def axis_signature(data_width: int, user_width: int) -> wiring.Signature:
    """An AXI4-Stream transmitter (TDATA, TUSER, TLAST; every byte valid)."""
    _check("data_width", data_width, {8 * 2**k for k in range(8)})
    _check("user_width", user_width)
    return wiring.Signature({
        "tdata": Out(data_width), "tuser": Out(user_width), "tlast": Out(1),
        "tvalid": Out(1), "tready": In(1),
    })

"""The vector buffer's ports as a unit bench sees them, written once for every bench whose
design talks to `rtl.core.vbuf` (the MPU's and the ring router's).

In the core the buffer answers a read request one cycle later and cannot be stalled, so a
bench top replaces the design's `read` port by a request stream out (`read_req`) and the
response as plain inputs (`read_resp_valid`, `read_resp_payload`); `VbufPortModel` is the
cocotb side that serves them, and the write port, from a NumPy array with random back-pressure.
"""

from __future__ import annotations

import random

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["VbufPortModel", "block_int", "connect_plain_read_port", "high",
           "plain_read_port_members"]


def plain_read_port_members(design: wiring.Component, block_bits: int,
                            align: int) -> dict[str, wiring.Member]:
    """`design`'s signature members with its `read` port replaced by the plain one."""
    members = {name: member for name, member in design.signature.members.items()
               if name != "read"}
    members.update({
        "read_req": Out(stream.Signature(block_bits)),
        "read_resp_valid": In(1),
        "read_resp_payload": In(16 * align),
    })
    return members


def connect_plain_read_port(m: Module, top: wiring.Component, design: wiring.Component) -> None:
    """Wire the bench top's plain read port to `design.read`."""
    wiring.connect(m, wiring.flipped(top.read_req), design.read.req)
    m.d.comb += [
        design.read.resp.valid.eq(top.read_resp_valid),
        design.read.resp.payload.eq(top.read_resp_payload),
    ]


def high(signal) -> bool:
    """A 1-bit signal is 1 (X and Z are not)."""
    return str(signal.value) == "1"


def block_int(words: np.ndarray) -> int:
    """A block of FP16 words (as uint16 bits) packed into one integer, word 0 lowest."""
    return int.from_bytes(np.asarray(words, np.uint16).astype("<u2").tobytes(), "little")


class VbufPortModel:
    """The vector buffer's read and write ports as `rtl.core.vbuf` serves them.

    `words` is the buffer as uint16 bits (pass `array.view(np.uint16)` to serve an FP16 array
    in place); each cycle the ports accept with probability 1 - `pause`, drawn from `rng` read
    port first. `writes` lists the blocks written, in order.
    """

    def __init__(self, dut, words: np.ndarray, rng: random.Random, pause: float,
                 block_bits: int, align: int) -> None:
        assert words.dtype == np.uint16, "serve the buffer as its uint16 bits"
        self.dut, self.words, self.rng, self.pause = dut, words, rng, pause
        self.block_bits, self.align = block_bits, align
        self.read_pending: int | None = None
        self.read_ready = self.write_ready = True
        self.writes: list[int] = []

    def drive(self) -> None:
        """Inputs for this cycle (after the falling edge)."""
        dut, a = self.dut, self.align
        self.read_ready = self.rng.random() >= self.pause
        dut.read_req__ready.value = int(self.read_ready)
        if self.read_pending is None:
            dut.read_resp_valid.value = 0
        else:
            blk = self.read_pending
            dut.read_resp_valid.value = 1
            dut.read_resp_payload.value = block_int(self.words[blk * a:(blk + 1) * a])
        self.write_ready = self.rng.random() >= self.pause
        dut.write__req__ready.value = int(self.write_ready)

    def sample(self) -> None:
        """Transfers of this cycle's rising edge (in the ReadOnly phase before it)."""
        dut, a = self.dut, self.align
        self.read_pending = (int(dut.read_req__payload.value)
                             if self.read_ready and high(dut.read_req__valid) else None)
        if self.write_ready and high(dut.write__req__valid):
            req = int(dut.write__req__payload.value)
            block = req & ((1 << self.block_bits) - 1)
            data = req >> self.block_bits
            mask = data >> (16 * a)
            for e in range(a):
                if mask >> e & 1:
                    self.words[block * a + e] = data >> (16 * e) & 0xFFFF
            self.writes.append(block)

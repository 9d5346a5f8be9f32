"""`Vbuf`: the vector buffer, banked so the engines that run in parallel (MPU, VPU, DMA, ring)
each get a beat per cycle, and `VbufReader`, the client side of a read port.

The buffer holds `words` FP16 words in blocks of `align` words (one VPU beat, one lane beat).
Block b lives in bank `bank_of(b)`, an XOR fold of b's bits, so that streams walking through
regions whose distance is a power of two (the compiler's buffers are) land in different banks
instead of colliding on every beat. Each bank is a simple dual-port RAM: one read and one write
per cycle. Requests to a bank are granted by fixed priority, the lowest port index first; a
port that loses waits (`ready` low) and retries.

Read ports answer exactly one cycle after the grant, with no back-pressure: a client keeps room
for what it asked (`VbufReader` does). Writes carry a word mask (VSET, MM outputs and the ring
write parts of a block). A read in the same cycle as a write to the same block returns the new
data.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Vbuf", "VbufReader", "bank_of", "read_port_signature", "write_port_signature"]


def _log2(n: int) -> int:
    return n.bit_length() - 1


def bank_of(block: int, banks: int) -> int:
    """The bank of `block` (the model of the RTL's fold; for tests and docs)."""
    bits = _log2(banks)
    out = 0
    while block:
        out ^= block & (banks - 1)
        block >>= bits
    return out


def read_port_signature(block_bits: int, align: int) -> wiring.Signature:
    """A raw read port seen from the client: requests out, one-cycle responses in."""
    return wiring.Signature({
        "req": Out(stream.Signature(block_bits)),
        "resp": In(stream.Signature(16 * align, always_ready=True)),
    })


def write_port_signature(block_bits: int, align: int) -> wiring.Signature:
    return wiring.Signature({
        "req": Out(stream.Signature(data.StructLayout({
            "block": block_bits, "data": 16 * align, "mask": align}))),
    })


class Vbuf(wiring.Component):
    """`banks` banks of `words / (align * banks)` rows of `align` FP16 words; `readers` read
    ports and `writers` write ports, port 0 first in priority."""

    def __init__(self, *, words: int, align: int, banks: int, readers: int, writers: int):
        for name, value in (("align", align), ("banks", banks)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, not {value}")
        if words % (align * banks):
            raise ValueError(f"words ({words}) must be a multiple of align x banks "
                             f"({align * banks})")
        self.words, self.align, self.banks = words, align, banks
        self.rows = words // (align * banks)
        self.block_bits = max(1, _log2(words // align))
        super().__init__({
            "read": In(read_port_signature(self.block_bits, align)).array(readers),
            "write": In(write_port_signature(self.block_bits, align)).array(writers),
        })

    def _fold(self, m: Module, block) -> Signal:
        bits = _log2(self.banks)
        out = Signal(max(bits, 1))
        if bits == 0:
            return out
        parts = [block[i:i + bits] for i in range(0, len(block), bits)]
        acc = parts[0]
        for part in parts[1:]:
            acc = acc ^ part
        m.d.comb += out.eq(acc)
        return out

    def elaborate(self, platform):
        m = Module()
        bits = _log2(self.banks)
        width = 16 * self.align
        rd_banks = [self._fold(m, p.req.payload) for p in self.read]
        wr_banks = [self._fold(m, p.req.payload.block) for p in self.write]
        for b in range(self.banks):
            mem = memory.Memory(shape=unsigned(width), depth=self.rows, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port(granularity=16)
            rp = mem.read_port(domain="sync", transparent_for=(wp,))
            # write: the lowest-index port asking for this bank
            for k in reversed(range(len(self.write))):
                port = self.write[k].req
                with m.If(port.valid & (wr_banks[k] == b)):
                    m.d.comb += [wp.addr.eq(port.payload.block[bits:]),
                                 wp.data.eq(port.payload.data),
                                 wp.en.eq(port.payload.mask)]
            granted_w = Signal(range(len(self.write) + 1), name=f"wgrant{b}")
            m.d.comb += granted_w.eq(len(self.write))
            for k in reversed(range(len(self.write))):
                with m.If(self.write[k].req.valid & (wr_banks[k] == b)):
                    m.d.comb += granted_w.eq(k)
            for k in range(len(self.write)):
                with m.If(granted_w == k):
                    m.d.comb += self.write[k].req.ready.eq(1)
            # read
            granted = Signal(range(len(self.read) + 1), name=f"rgrant{b}")
            m.d.comb += granted.eq(len(self.read))
            for k in reversed(range(len(self.read))):
                with m.If(self.read[k].req.valid & (rd_banks[k] == b)):
                    m.d.comb += granted.eq(k)
            for k in range(len(self.read)):
                with m.If(granted == k):
                    m.d.comb += [self.read[k].req.ready.eq(1),
                                 rp.addr.eq(self.read[k].req.payload[bits:])]
            m.d.comb += rp.en.eq(1)
            # route the data back one cycle later; none after reset (an initial 0 would hand
            # port 0 a response it never asked for)
            answered = Signal(range(len(self.read) + 1), init=len(self.read), name=f"rans{b}")
            m.d.sync += answered.eq(granted)
            for k in range(len(self.read)):
                with m.If(answered == k):
                    m.d.comb += [self.read[k].resp.valid.eq(1),
                                 self.read[k].resp.payload.eq(rp.data)]
        return m


class VbufReader(wiring.Component):
    """Requests in, responses out with back-pressure: the client side of a `Vbuf` read port.

    A request goes to the buffer only while the response FIFO (`depth` beats) has room for it
    and for every response still on its way, so responses are never dropped.
    """

    def __init__(self, block_bits: int, align: int, depth: int = 4):
        self.depth = depth
        super().__init__({
            "req": In(stream.Signature(block_bits)),
            "resp": Out(stream.Signature(16 * align)),
            "port": Out(read_port_signature(block_bits, align)),
        })
        self._width = 16 * align

    def elaborate(self, platform):
        m = Module()
        buf = fifo.SyncFIFOBuffered(width=self._width, depth=self.depth)
        m.submodules.buf = buf
        inflight = Signal()
        taken = self.port.req.valid & self.port.req.ready
        m.d.sync += inflight.eq(taken)
        room = Signal()
        m.d.comb += room.eq(buf.level + inflight + 1 <= self.depth)
        m.d.comb += [
            self.port.req.valid.eq(self.req.valid & room),
            self.port.req.payload.eq(self.req.payload),
            self.req.ready.eq(self.port.req.ready & room),
            buf.w_en.eq(self.port.resp.valid),
            buf.w_data.eq(self.port.resp.payload),
            self.resp.valid.eq(buf.r_rdy),
            self.resp.payload.eq(buf.r_data),
            buf.r_en.eq(self.resp.ready),
        ]
        return m

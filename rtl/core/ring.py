"""`Ring`: the collectives (ALLGATHER, ARGMAXALL, SYNC) over a unidirectional ring of AXI4-Stream
links, bit-exact with `hw.isasim.cluster.IsaCluster._collective`.

Every flit carries `{kind, origin, hops}` in TUSER. A device sends its own flits (its ALLGATHER
slices, block by block; its ARGMAXALL candidate; a SYNC token) to the next device, and forwards
every flit it receives that has not yet been round the ring (hops < devices - 1), so each flit
reaches every other device once. A device takes flits off its input link only while it executes
the same collective itself (flits of a collective it has not reached wait on the link, which
back-pressures the sender), so a collective never writes into a buffer that the device is still
using. The collective completes when the device has sent its own flits and received every other
device's.

ALLGATHER flits of origin o are written to `base + t*stride + o*slice` (block by block, t the
row), counted per origin. ARGMAXALL keeps the best of the candidates in the isa's order: a
number beats NaN, then the larger value (-0 equal to +0), then the smaller index.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from rtl.axi import axis_signature

from . import ops
from .controller import write_back_layout
from .vbuf import VbufReader, read_port_signature, write_port_signature

__all__ = ["FLIT_USER", "MAX_DEVICES", "Ring"]

#: Devices a ring may have (per-origin counters).
MAX_DEVICES = 16
#: TUSER of a flit.
FLIT_USER = data.StructLayout({"kind": 2, "origin": 8, "hops": 8})
_DATA, _ARGMAX, _SYNC = 0, 1, 2


def _bits(layout, name: str) -> int:
    return Shape.cast(layout[name].shape).width


class Ring(wiring.Component):
    def __init__(self, cfg: AccelConfig, uop_layout, *, block_bits: int, sb_entries: int):
        self.cfg = cfg
        self.block_bits = block_bits
        self.sb_entries = sb_entries
        self._uop = uop_layout
        width = 16 * cfg.align
        super().__init__({
            "uop": In(stream.Signature(uop_layout)),
            "device": In(8),
            "devices": In(8),
            "tx": Out(axis_signature(width, FLIT_USER.size)),
            "rx": In(axis_signature(width, FLIT_USER.size)),
            "read": Out(read_port_signature(block_bits, cfg.align)),
            "write": Out(write_port_signature(block_bits, cfg.align)),
            "int_wb": Out(write_back_layout()),
            "scalar_wb": Out(write_back_layout()),
            "release_reads": Out(sb_entries),
            "release_write": Out(sb_entries),
            "retire": Out(1),
            "retire_pc": Out(_bits(uop_layout, "pc")),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        A = self.cfg.align
        log_a = A.bit_length() - 1
        bb = self.block_bits
        u = self.uop.payload
        D = self.devices
        others = Signal(8)
        m.d.comb += others.eq(D - 1)

        busy = Signal()
        op = Signal(8)
        base = Signal(bb + 1)
        slice_ = Signal(bb + 1)  # blocks per slice
        stride = Signal(bb + 1)  # blocks per row
        count = Signal(ops.LEN_BITS)
        sb = Signal(_bits(self._uop, "sb"))
        pc = Signal(_bits(self._uop, "pc"))
        rd = Signal(4)
        sd = Signal(4)
        best_val = Signal(32)
        best_idx = Signal(32)
        best_dev = Signal(8)

        m.d.comb += self.uop.ready.eq(~busy)
        accept = self.uop.valid & self.uop.ready
        is_ag = op == ops.CODES["ALLGATHER"]
        is_am = op == ops.CODES["ARGMAXALL"]
        with m.If(accept):
            m.d.sync += [busy.eq(1), op.eq(u.op), base.eq(u.base >> log_a),
                         slice_.eq(u.slice >> log_a), stride.eq(u.stride >> log_a),
                         count.eq(u.count), sb.eq(u.sb), pc.eq(u.pc), rd.eq(u.rd), sd.eq(u.sd),
                         best_val.eq(u.sd_v), best_idx.eq(u.rd_v), best_dev.eq(self.device)]

        # -- own flits ------------------------------------------------------------------------
        own_t = Signal(ops.LEN_BITS)
        own_b = Signal(bb + 1)
        own_done = Signal()
        reader = VbufReader(bb, A, depth=4)
        m.submodules.reader = reader
        wiring.connect(m, reader.port, wiring.flipped(self.read))
        ask_t = Signal(ops.LEN_BITS)
        ask_b = Signal(bb + 1)
        asked_all = Signal()
        own_block = base + ask_t * stride + self.device * slice_ + ask_b
        m.d.comb += [reader.req.valid.eq(busy & is_ag & ~asked_all & (others != 0)
                                         & (slice_ != 0) & (count != 0)),
                     reader.req.payload.eq(own_block)]
        with m.If(reader.req.valid & reader.req.ready):
            m.d.sync += ask_b.eq(ask_b + 1)
            with m.If(ask_b + 1 == slice_):
                m.d.sync += [ask_b.eq(0), ask_t.eq(ask_t + 1)]
                with m.If(ask_t + 1 == count):
                    m.d.sync += asked_all.eq(1)

        own = Signal(FLIT_USER)
        m.d.comb += [own.origin.eq(self.device), own.hops.eq(1)]
        own_data = Signal(16 * A)
        own_valid = Signal()
        with m.If(is_ag):
            m.d.comb += [own.kind.eq(_DATA), own_data.eq(reader.resp.payload),
                         own_valid.eq(busy & ~own_done & reader.resp.valid)]
        with m.Elif(is_am):  # alone on the ring (others == 0) a device sends nothing
            m.d.comb += [own.kind.eq(_ARGMAX), own_data.eq(Cat(best_val, best_idx)),
                         own_valid.eq(busy & ~own_done & (others != 0))]
        with m.Else():
            m.d.comb += [own.kind.eq(_SYNC), own_valid.eq(busy & ~own_done & (others != 0))]

        # -- received flits: write / reduce, and forward -------------------------------------
        received = Signal(32)
        rx_user = FLIT_USER(self.rx.tuser)
        forward = rx_user.hops < others
        fwd = Signal(FLIT_USER)
        m.d.comb += [fwd.kind.eq(rx_user.kind), fwd.origin.eq(rx_user.origin),
                     fwd.hops.eq(rx_user.hops + 1)]
        tx = self.tx
        # forwarded flits first: they keep the ring moving
        rx_take = Signal()
        w = self.write.req
        ct = Array(Signal(ops.LEN_BITS, name=f"rt{o}") for o in range(MAX_DEVICES))
        cb = Array(Signal(bb + 1, name=f"rb{o}") for o in range(MAX_DEVICES))
        origin = rx_user.origin[:(MAX_DEVICES - 1).bit_length()]
        rx_block = base + ct[origin] * stride + rx_user.origin * slice_ + cb[origin]
        m.d.comb += [w.payload.block.eq(rx_block), w.payload.data.eq(self.rx.tdata),
                     w.payload.mask.eq((1 << A) - 1)]
        # once every flit has come (the cycle the collective completes), the next flit on the
        # link belongs to the next collective, even when it is of the same kind
        expect = Signal(32)
        rx_ok = busy & self.rx.tvalid & (rx_user.kind == Mux(is_ag, _DATA,
                                                               Mux(is_am, _ARGMAX, _SYNC)))
        rx_ok = rx_ok & (received != expect)
        need_w = is_ag
        can = (~forward | tx.tready) & (~need_w | w.ready)
        m.d.comb += [rx_take.eq(rx_ok & can), self.rx.tready.eq(rx_take),
                     w.valid.eq(rx_ok & need_w & (~forward | tx.tready))]
        with m.If(rx_ok & forward):
            m.d.comb += [tx.tvalid.eq(~need_w | w.ready),
                         tx.tdata.eq(self.rx.tdata), tx.tuser.eq(fwd), tx.tlast.eq(1)]
        with m.Else():
            m.d.comb += [tx.tvalid.eq(own_valid), tx.tdata.eq(own_data), tx.tuser.eq(own),
                         tx.tlast.eq(1)]
            with m.If(is_ag):
                m.d.comb += reader.resp.ready.eq(tx.tready & busy & ~own_done)
        sent_own = ~(rx_ok & forward) & own_valid & tx.tready
        with m.If(sent_own):
            m.d.sync += own_b.eq(own_b + 1)
            with m.If(~is_ag):
                m.d.sync += own_done.eq(1)
            with m.Elif(own_b + 1 == slice_):
                m.d.sync += [own_b.eq(0), own_t.eq(own_t + 1)]
                with m.If(own_t + 1 == count):
                    m.d.sync += own_done.eq(1)
        with m.If(rx_take):
            m.d.sync += received.eq(received + 1)
            with m.If(is_ag):
                m.d.sync += cb[origin].eq(cb[origin] + 1)
                with m.If(cb[origin] + 1 == slice_):
                    m.d.sync += [cb[origin].eq(0), ct[origin].eq(ct[origin] + 1)]
            with m.If(is_am):
                cand_val = self.rx.tdata[:32]
                cand_idx = self.rx.tdata[32:64]
                better = _better(cand_val, cand_idx, rx_user.origin, best_val, best_idx, best_dev)
                with m.If(better):
                    m.d.sync += [best_val.eq(cand_val), best_idx.eq(cand_idx),
                                 best_dev.eq(rx_user.origin)]

        # -- completion -----------------------------------------------------------------------
        m.d.comb += expect.eq(Mux(is_ag, others * count * slice_, others))
        nothing = is_ag & ((slice_ == 0) | (count == 0))
        finished = busy & (own_done | (others == 0) | nothing) & (received == expect)
        with m.If(finished):
            m.d.sync += [busy.eq(0), own_done.eq(0), own_t.eq(0), own_b.eq(0), received.eq(0),
                         ask_t.eq(0), ask_b.eq(0), asked_all.eq(0)]
            m.d.sync += [c.eq(0) for c in ct] + [c.eq(0) for c in cb]
            m.d.comb += [self.release_reads.eq(1 << sb), self.release_write.eq(1 << sb),
                         self.retire.eq(1), self.retire_pc.eq(pc)]
            with m.If(is_am):
                m.d.comb += [self.int_wb.valid.eq(1), self.int_wb.idx.eq(rd),
                             self.int_wb.value.eq(best_idx),
                             self.scalar_wb.valid.eq(1), self.scalar_wb.idx.eq(sd),
                             self.scalar_wb.value.eq(best_val)]
        m.d.comb += self.idle.eq(~busy)
        return m


def _better(val, idx, dev, best_val, best_idx, best_dev):
    """Candidate (val, idx, dev) beats the best so far in `IsaCluster`'s order."""
    def nan(x):
        return (x[23:31] == 0xFF) & (x[:23] != 0)

    def key(x):
        mag = x[:31]
        neg = x[31] & (mag != 0)
        return Mux(neg, Cat(~mag, Const(0, 2)), Cat(mag, Const(1, 1), Const(0, 1)))

    ka, kb = key(val), key(best_val)
    na, nb = nan(val), nan(best_val)
    lower_index = (idx.as_signed() < best_idx.as_signed()) | (
        (idx == best_idx) & (dev < best_dev))
    both_nan = na & nb
    return Mux(na != nb, nb, Mux(both_nan, dev < best_dev,
                                 (ka > kb) | ((ka == kb) & lower_index)))

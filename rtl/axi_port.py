"""`AxiPort`: one AXI4 manager (one HBM pseudo-channel) shared by several read clients and one
write client, in bursts, with several bursts outstanding.

Clients ask for runs of whole beats (`addr` beat-aligned, `beats` >= 1). The port splits each
run into INCR bursts of at most `max_burst` beats that never cross a 4 KB boundary (AXI4 forbids
it), issues up to `outstanding` read bursts and `outstanding` write bursts before their data or
responses return, and hands the read data back to the client that asked, in order, marking the
run's last beat. Reads of different clients are served round-robin, one run at a time per
address channel.

Contract for read clients: ask only for data you can take. Responses share one R channel, so
a client that leaves its data waiting stalls every other client's data behind it; the stream
buffers and the prefetch FIFOs of the core reserve room before they ask.

Writes: a run's beats come on `write_data` (data and byte strobes), in order; `write_done`
pulses once per run when its last burst's response has arrived, and `writes_pending` is high
from the request until then. A response other than OKAY sets the sticky `error`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI_BURST_INCR, axi4_signature

__all__ = ["AxiPort", "read_request_layout", "write_request_layout"]

_BOUNDARY = 4096  # AXI4: a burst must not cross a 4 KB boundary


def read_request_layout(addr_width: int, len_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": addr_width, "beats": len_width})


def write_request_layout(addr_width: int, len_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": addr_width, "beats": len_width})


class AxiPort(wiring.Component):
    """An AXI4 manager for `readers` read clients and one write client.

    Parameters: `addr_width`, `data_width` (bits per beat), `readers` (>= 1), `max_burst`
    (beats per burst, 1..256), `outstanding` (bursts in flight per direction, a power of two),
    `len_width` (bits of a run's beat count).
    """

    def __init__(self, *, addr_width: int, data_width: int, readers: int, max_burst: int = 16,
                 outstanding: int = 8, len_width: int = 20):
        if not isinstance(readers, int) or readers < 1:
            raise ValueError(f"readers must be a positive integer, not {readers!r}")
        if not isinstance(max_burst, int) or not 1 <= max_burst <= 256:
            raise ValueError(f"max_burst must be an integer in 1..256, not {max_burst!r}")
        if not isinstance(outstanding, int) or outstanding < 1 or outstanding & (outstanding - 1):
            raise ValueError(f"outstanding must be a power of two, not {outstanding!r}")
        if data_width % 8 or data_width // 8 > _BOUNDARY:
            raise ValueError(f"data_width must be a whole number of bytes, not {data_width}")
        self.addr_width = addr_width
        self.data_width = data_width
        self.readers = readers
        self.max_burst = max_burst
        self.outstanding = outstanding
        self.len_width = len_width
        self.beat_bytes = data_width // 8
        # the largest burst a 4 KB page still holds whole, so bursts stay inside one page
        self.page_beats = _BOUNDARY // self.beat_bytes
        rd = stream.Signature(read_request_layout(addr_width, len_width))
        rdata = stream.Signature(data.StructLayout({"data": data_width, "last": 1}))
        wr = stream.Signature(write_request_layout(addr_width, len_width))
        wdata = stream.Signature(data.StructLayout({"data": data_width,
                                                    "strb": data_width // 8}))
        super().__init__({
            "read_req": In(rd).array(readers),
            "read_data": Out(rdata).array(readers),
            "write_req": In(wr),
            "write_data": In(wdata),
            "write_done": Out(1),
            "writes_pending": Out(1),
            "error": Out(1),
            "bus": Out(axi4_signature(addr_width, data_width)),
        })

    def _burst_len(self, m: Module, addr, remaining, name: str) -> Signal:
        """Beats of the next burst: the rest of the run, capped by max_burst and the page."""
        beat_index = Signal(range(self.page_beats), name=f"{name}_page_pos")
        shift = self.beat_bytes.bit_length() - 1
        page_bits = _BOUNDARY.bit_length() - 1
        m.d.comb += beat_index.eq(addr[shift:page_bits] if page_bits > shift else 0)
        to_page = Signal(range(self.page_beats + 1), name=f"{name}_to_page")
        m.d.comb += to_page.eq(self.page_beats - beat_index)
        cap = min(self.max_burst, self.page_beats)
        capped = Signal(range(cap + 1), name=f"{name}_capped")
        m.d.comb += capped.eq(Mux(remaining < cap, remaining, cap))
        n = Signal(range(cap + 1), name=f"{name}_len")
        m.d.comb += n.eq(Mux(to_page < capped, to_page, capped))
        return n

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        size = self.beat_bytes.bit_length() - 1
        m.d.comb += [bus.arsize.eq(size), bus.awsize.eq(size),
                     bus.arburst.eq(AXI_BURST_INCR), bus.awburst.eq(AXI_BURST_INCR)]
        self._read_path(m)
        self._write_path(m)
        with m.If((bus.rvalid & bus.rready & (bus.rresp != 0))
                  | (bus.bvalid & bus.bready & (bus.bresp != 0))):
            m.d.sync += self.error.eq(1)
        return m

    # -- reads -------------------------------------------------------------------------------

    def _read_path(self, m: Module) -> None:
        bus = self.bus
        n = self.readers
        # a read tag per burst in flight: which client, and whether it ends the client's run
        tag_layout = data.StructLayout({"reader": range(max(n, 2)), "last": 1})
        tags = fifo.SyncFIFOBuffered(width=tag_layout.size, depth=self.outstanding)
        m.submodules.read_tags = tags

        busy = Signal()
        addr = Signal(self.addr_width)
        remaining = Signal(self.len_width)
        reader = Signal(range(max(n, 2)))
        turn = Signal(range(max(n, 2)))  # round-robin pointer: the client served first
        # take the next run: the first asking client at or after `turn`
        pick = Signal(range(max(n, 2)))
        ahead = Signal(range(max(n, 2)))  # the first asking client at or after `turn`
        any_ahead = Signal()
        lowest = Signal(range(max(n, 2)))  # the first asking client overall (wrap-around)
        found = Signal()
        for k in reversed(range(n)):  # the lowest index is assigned last and wins
            with m.If(self.read_req[k].valid & (k >= turn)):
                m.d.comb += [ahead.eq(k), any_ahead.eq(1)]
            with m.If(self.read_req[k].valid):
                m.d.comb += [lowest.eq(k), found.eq(1)]
        m.d.comb += pick.eq(Mux(any_ahead, ahead, lowest))
        with m.If(~busy & found):
            m.d.sync += [busy.eq(1), reader.eq(pick), turn.eq(Mux(pick == n - 1, 0, pick + 1))]
            for k in range(n):
                with m.If(pick == k):
                    m.d.comb += self.read_req[k].ready.eq(1)
                    m.d.sync += [addr.eq(self.read_req[k].payload.addr),
                                 remaining.eq(self.read_req[k].payload.beats)]

        # one burst at a time on AR: address and length held until the handshake
        length = self._burst_len(m, addr, remaining, "ar")
        new_tag = Signal(tag_layout)
        ar_valid = Signal()
        m.d.comb += [
            ar_valid.eq(busy & (remaining != 0) & tags.w_rdy),
            bus.arvalid.eq(ar_valid),
            bus.araddr.eq(addr),
            bus.arlen.eq(length - 1),
            new_tag.reader.eq(reader),
            new_tag.last.eq(remaining == length),
            tags.w_data.eq(new_tag),
        ]
        with m.If(ar_valid & bus.arready):
            m.d.comb += tags.w_en.eq(1)
            m.d.sync += [addr.eq(addr + length * self.beat_bytes),
                         remaining.eq(remaining - length)]
            with m.If(remaining == length):
                m.d.sync += busy.eq(0)
        with m.If(busy & (remaining == 0)):  # a zero-beat run asks for nothing
            m.d.sync += busy.eq(0)

        tag = tag_layout(tags.r_data)
        for k in range(n):
            out = self.read_data[k]
            sel = tags.r_rdy & (tag.reader == k)
            m.d.comb += [out.payload.data.eq(bus.rdata), out.payload.last.eq(bus.rlast & tag.last),
                         out.valid.eq(sel & bus.rvalid)]
            with m.If(sel):
                m.d.comb += bus.rready.eq(out.ready)
        with m.If(bus.rvalid & bus.rready & bus.rlast):
            m.d.comb += tags.r_en.eq(1)

    # -- writes ------------------------------------------------------------------------------

    def _write_path(self, m: Module) -> None:
        bus = self.bus
        # per burst in flight: its length (for WLAST) and whether it ends its run (for done)
        wlens = fifo.SyncFIFOBuffered(width=9, depth=self.outstanding)
        bflags = fifo.SyncFIFOBuffered(width=1, depth=self.outstanding)
        m.submodules.write_lens = wlens
        m.submodules.write_ends = bflags

        busy = Signal()
        addr = Signal(self.addr_width)
        remaining = Signal(self.len_width)
        pending = Signal(range(self.outstanding * 4 + 2))  # runs accepted, not yet done
        with m.If(~busy):
            m.d.comb += self.write_req.ready.eq(1)
            with m.If(self.write_req.valid):
                m.d.sync += [busy.eq(1), addr.eq(self.write_req.payload.addr),
                             remaining.eq(self.write_req.payload.beats)]
        length = self._burst_len(m, addr, remaining, "aw")
        aw_valid = Signal()
        m.d.comb += [
            aw_valid.eq(busy & (remaining != 0) & wlens.w_rdy & bflags.w_rdy),
            bus.awvalid.eq(aw_valid),
            bus.awaddr.eq(addr),
            bus.awlen.eq(length - 1),
            wlens.w_data.eq(length),
            bflags.w_data.eq(remaining == length),
        ]
        with m.If(aw_valid & bus.awready):
            m.d.comb += [wlens.w_en.eq(1), bflags.w_en.eq(1)]
            m.d.sync += [addr.eq(addr + length * self.beat_bytes),
                         remaining.eq(remaining - length)]
            with m.If(remaining == length):
                m.d.sync += busy.eq(0)
        with m.If(busy & (remaining == 0)):
            m.d.sync += busy.eq(0)

        # W follows the AW order; WLAST from the burst's length
        count = Signal(9)
        m.d.comb += [
            bus.wvalid.eq(wlens.r_rdy & self.write_data.valid),
            self.write_data.ready.eq(wlens.r_rdy & bus.wready),
            bus.wdata.eq(self.write_data.payload.data),
            bus.wstrb.eq(self.write_data.payload.strb),
            bus.wlast.eq(count + 1 == wlens.r_data),
        ]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += count.eq(count + 1)
            with m.If(bus.wlast):
                m.d.sync += count.eq(0)
                m.d.comb += wlens.r_en.eq(1)

        m.d.comb += bus.bready.eq(bflags.r_rdy)
        done = Signal()
        with m.If(bus.bvalid & bus.bready):
            m.d.comb += [bflags.r_en.eq(1), done.eq(bflags.r_data)]
        m.d.comb += self.write_done.eq(done)
        accepted = self.write_req.valid & self.write_req.ready
        with m.If(accepted & ~done):
            m.d.sync += pending.eq(pending + 1)
        with m.Elif(~accepted & done):
            m.d.sync += pending.eq(pending - 1)
        m.d.comb += self.writes_pending.eq((pending != 0) | accepted | busy)

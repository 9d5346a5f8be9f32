"""`Dma`: the DMA engine: LDR, TOKOUT, LOADV, STOREV, LOADR, STORER and STOREC between the HBM
ports and the vector buffer, with the striped layouts of `hw.layout`.

An instruction is split at once into one task per port it touches (a striped vector touches
every port, a row or a column's part one port each), queued on that port, and the next
instruction may follow immediately: tasks of several instructions are in flight on the AXI
ports at once. Each port runs its read tasks (an AXI read run whose beats go to vector-buffer
blocks, or for LDR to a register) and its write tasks (vector-buffer blocks, or single FP16
words for STOREC, or a 32-bit token for TOKOUT, as AXI write runs with byte strobes) in order.
An instruction completes, in program order, when all its tasks have: loads when their last
beat is in the buffer, stores when their last write response has arrived.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Shape, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from rtl.axi_port import read_request_layout, write_request_layout

from . import ops
from .controller import write_back_layout
from .vbuf import VbufReader, read_port_signature, write_port_signature

__all__ = ["Dma", "dma_client_signature"]

_LEN_BITS = ops.LEN_BITS
_TABLE = 4  # instructions in flight


def dma_client_signature(addr_width: int, data_width: int) -> wiring.Signature:
    """The DMA engine's side of one `AxiPort`: a read client and the write client."""
    return wiring.Signature({
        "read_req": Out(stream.Signature(read_request_layout(addr_width, _LEN_BITS))),
        "read_data": In(stream.Signature(data.StructLayout({"data": data_width, "last": 1}))),
        "write_req": Out(stream.Signature(write_request_layout(addr_width, _LEN_BITS))),
        "write_data": Out(stream.Signature(data.StructLayout({"data": data_width,
                                                              "strb": data_width // 8}))),
        "write_done": In(1),
    })


def _bits(layout, name: str) -> int:
    return Shape.cast(layout[name].shape).width


class Dma(wiring.Component):
    def __init__(self, cfg: AccelConfig, uop_layout, *, block_bits: int, sb_entries: int,
                 addr_width: int = 64):
        if cfg.lane_width != cfg.align:
            raise ValueError(f"lane_width ({cfg.lane_width}) must equal align ({cfg.align}) "
                             "in the RTL: a port beat is one vector-buffer block")
        self.cfg = cfg
        self.ports = cfg.hbm_ports
        self.addr_width = addr_width
        self.block_bits = block_bits
        self.sb_entries = sb_entries
        self._uop = uop_layout
        self.entry_bits = (_TABLE - 1).bit_length()
        pc = _bits(uop_layout, "pc")
        a = cfg.align
        super().__init__({
            "uop": In(stream.Signature(uop_layout)),
            "hbm_base": In(addr_width).array(self.ports),
            "axi": Out(dma_client_signature(addr_width, cfg.hbm_port_width_bits)).array(
                self.ports),
            "read": Out(read_port_signature(block_bits, a)).array(self.ports),
            "write": Out(write_port_signature(block_bits, a)).array(self.ports),
            "int_wb": Out(write_back_layout()),
            "release_reads": Out(sb_entries),
            "release_write": Out(sb_entries),
            "retire": Out(1),
            "retire_pc": Out(pc),
            "writes_pending": Out(1),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        P, A = self.ports, cfg.align
        log_p, log_a = P.bit_length() - 1, A.bit_length() - 1
        bb = cfg.beat_bytes
        log_bb = bb.bit_length() - 1
        aw, bbits = self.addr_width, self.block_bits
        u = self.uop.payload
        eb = self.entry_bits

        def is_op(*names):
            out = Const(0, 1)
            for n in names:
                out = out | (u.op == ops.CODES[n])
            return out

        rtask_l = data.StructLayout({"addr": aw, "beats": _LEN_BITS, "blk": bbits + 1,
                                     "stride": log_p + 1, "entry": eb, "ldr": 1, "lane": 8,
                                     "rd": 4})
        # kind 0: blocks as a run; 1: single FP16 words (STOREC); 2: a 32-bit token (TOKOUT)
        wtask_l = data.StructLayout({"kind": 2, "addr": aw, "count": _LEN_BITS,
                                     "astride": 40, "blk": bbits + 1, "word": 32,
                                     "stride": log_p + 1, "lane": 8, "value": 32, "entry": eb})

        # -- the instruction table -------------------------------------------------------------
        t_valid = Signal(_TABLE)
        t_left = [Signal(range(2 * P + 2), name=f"t{e}_left") for e in range(_TABLE)]
        t_sb = [Signal(_bits(self._uop, "sb"), name=f"t{e}_sb") for e in range(_TABLE)]
        t_pc = [Signal(_bits(self._uop, "pc"), name=f"t{e}_pc") for e in range(_TABLE)]
        t_store = Signal(_TABLE)
        head = Signal(eb)
        tail = Signal(eb)
        count = Signal(range(_TABLE + 1))

        # per-port queues
        rq = [fifo.SyncFIFOBuffered(width=rtask_l.size, depth=4) for _ in range(P)]
        rd_q = [fifo.SyncFIFOBuffered(width=rtask_l.size, depth=4) for _ in range(P)]
        wq_req = [fifo.SyncFIFOBuffered(width=wtask_l.size, depth=4) for _ in range(P)]
        wq_dat = [fifo.SyncFIFOBuffered(width=wtask_l.size, depth=4) for _ in range(P)]
        wq_done = [fifo.SyncFIFOBuffered(width=wtask_l.size, depth=8) for _ in range(P)]
        for p in range(P):
            for name, q in (("rq", rq), ("rdq", rd_q), ("wreq", wq_req), ("wdat", wq_dat),
                            ("wdone", wq_done)):
                m.submodules[f"{name}{p}"] = q[p]

        room = Const(1, 1)
        for p in range(P):
            room = room & rq[p].w_rdy & wq_req[p].w_rdy & wq_dat[p].w_rdy & wq_done[p].w_rdy
        m.d.comb += self.uop.ready.eq(room & (count != _TABLE))
        accept = self.uop.valid & self.uop.ready

        # -- split an instruction into port tasks ----------------------------------------------
        nb = Signal(_LEN_BITS + 1)  # port beats (blocks) of the vector
        m.d.comb += nb.eq((u.len + (A - 1)) >> log_a)
        n_words = nb << log_a
        row_port = u.row[:log_p] if log_p else Const(0, 1)
        row_off = Signal(56)
        m.d.comb += row_off.eq((u.row >> log_p) * u.ldb << log_bb)
        tasks_made = []
        for p in range(P):
            rt, wt = Signal(rtask_l, name=f"rt{p}"), Signal(wtask_l, name=f"wt{p}")
            want_r, want_w = Signal(name=f"want_r{p}"), Signal(name=f"want_w{p}")
            base = self.hbm_base[p]
            per_port = Signal(_LEN_BITS + 1, name=f"per_port{p}")
            m.d.comb += per_port.eq(Mux(nb > p, (nb + (P - 1 - p)) >> log_p, 0))
            elems = Signal(_LEN_BITS + 8, name=f"elems{p}")
            m.d.comb += elems.eq(Mux(n_words > p, (n_words + (P - 1 - p)) >> log_p, 0))
            m.d.comb += [rt.entry.eq(tail), wt.entry.eq(tail)]
            with m.Switch(u.op):
                with m.Case(ops.CODES["LOADV"]):
                    m.d.comb += [want_r.eq(per_port != 0), rt.addr.eq(base + u.src),
                                 rt.beats.eq(per_port), rt.blk.eq((u.dst >> log_a) + p),
                                 rt.stride.eq(P)]
                with m.Case(ops.CODES["STOREV"]):
                    m.d.comb += [want_w.eq(per_port != 0), wt.kind.eq(0),
                                 wt.addr.eq(base + u.dst), wt.count.eq(per_port),
                                 wt.blk.eq((u.src >> log_a) + p), wt.stride.eq(P)]
                with m.Case(ops.CODES["LOADR"]):
                    m.d.comb += [want_r.eq(row_port == p), rt.addr.eq(base + u.mat + row_off),
                                 rt.beats.eq(nb), rt.blk.eq(u.dst >> log_a), rt.stride.eq(1)]
                with m.Case(ops.CODES["STORER"]):
                    m.d.comb += [want_w.eq(row_port == p), wt.kind.eq(0),
                                 wt.addr.eq(base + u.mat + row_off), wt.count.eq(nb),
                                 wt.blk.eq(u.src >> log_a), wt.stride.eq(1)]
                with m.Case(ops.CODES["STOREC"]):
                    col_bytes = u.col << 1
                    m.d.comb += [want_w.eq(elems != 0), wt.kind.eq(1),
                                 wt.addr.eq(base + u.mat + (col_bytes >> log_bb << log_bb)),
                                 wt.count.eq(elems), wt.astride.eq(u.ldb << log_bb),
                                 wt.word.eq(u.src + p), wt.stride.eq(P),
                                 wt.lane.eq(col_bytes[:log_bb] >> 1)]
                if p == 0:
                    with m.Case(ops.CODES["LDR"]):
                        m.d.comb += [want_r.eq(1), rt.addr.eq(base + (u.addr >> log_bb << log_bb)),
                                     rt.beats.eq(1), rt.ldr.eq(1),
                                     rt.lane.eq(u.addr[:log_bb] >> 2), rt.rd.eq(u.rd)]
                    with m.Case(ops.CODES["TOKOUT"]):
                        m.d.comb += [want_w.eq(1), wt.kind.eq(2),
                                     wt.addr.eq(base + (u.addr >> log_bb << log_bb)),
                                     wt.count.eq(1), wt.lane.eq(u.addr[:log_bb] >> 2),
                                     wt.value.eq(u.ra_v)]
            m.d.comb += [rq[p].w_data.eq(rt), rq[p].w_en.eq(accept & want_r),
                         wq_req[p].w_data.eq(wt), wq_req[p].w_en.eq(accept & want_w),
                         wq_dat[p].w_data.eq(wt), wq_dat[p].w_en.eq(accept & want_w),
                         wq_done[p].w_data.eq(wt), wq_done[p].w_en.eq(accept & want_w)]
            tasks_made += [want_r, want_w]
        n_tasks = Signal(range(2 * P + 2))
        m.d.comb += n_tasks.eq(sum(tasks_made))
        is_store = is_op("STOREV", "STORER", "STOREC", "TOKOUT")

        # -- per port: read runs and write runs ------------------------------------------------
        done_sources = []  # (valid, entry) per task completion
        for p in range(P):
            axi = self.axi[p]
            # read issue
            head_r = rtask_l(rq[p].r_data)
            m.d.comb += [axi.read_req.valid.eq(rq[p].r_rdy & rd_q[p].w_rdy),
                         axi.read_req.payload.addr.eq(head_r.addr),
                         axi.read_req.payload.beats.eq(head_r.beats),
                         rd_q[p].w_data.eq(rq[p].r_data)]
            with m.If(axi.read_req.valid & axi.read_req.ready):
                m.d.comb += [rq[p].r_en.eq(1), rd_q[p].w_en.eq(1)]
            # read data: to the buffer (or a register for LDR)
            cur = rtask_l(rd_q[p].r_data)
            i = Signal(_LEN_BITS, name=f"rbeat{p}")
            beat = axi.read_data
            w = self.write[p].req
            m.d.comb += [w.payload.block.eq(cur.blk + i * cur.stride),
                         w.payload.data.eq(beat.payload.data),
                         w.payload.mask.eq((1 << A) - 1)]
            is_ldr = cur.ldr
            m.d.comb += [w.valid.eq(rd_q[p].r_rdy & beat.valid & ~is_ldr),
                         beat.ready.eq(rd_q[p].r_rdy & (w.ready | is_ldr))]
            r_done = Signal(name=f"r_done{p}")
            with m.If(beat.valid & beat.ready):
                m.d.sync += i.eq(i + 1)
                with m.If(i + 1 == cur.beats):
                    m.d.sync += i.eq(0)
                    m.d.comb += [rd_q[p].r_en.eq(1), r_done.eq(1)]
                if p == 0:
                    with m.If(is_ldr):
                        m.d.comb += [self.int_wb.valid.eq(1), self.int_wb.idx.eq(cur.rd),
                                     self.int_wb.value.eq(beat.payload.data.word_select(
                                         cur.lane[:max(1, log_bb - 2)], 32))]
            done_sources.append((r_done, cur.entry))

            # write requests
            hw_ = wtask_l(wq_req[p].r_data)
            k = Signal(_LEN_BITS, name=f"wreq{p}")
            req = axi.write_req
            runs = Mux(hw_.kind == 1, hw_.count, 1)
            m.d.comb += [req.valid.eq(wq_req[p].r_rdy),
                         req.payload.addr.eq(hw_.addr + k * hw_.astride),
                         req.payload.beats.eq(Mux(hw_.kind == 0, hw_.count, 1))]
            with m.If(req.valid & req.ready):
                m.d.sync += k.eq(k + 1)
                with m.If(k + 1 == runs):
                    m.d.sync += k.eq(0)
                    m.d.comb += wq_req[p].r_en.eq(1)

            # write data: blocks or words from the buffer, or the token
            dt = wtask_l(wq_dat[p].r_data)
            reader = VbufReader(bbits, A, depth=4)
            m.submodules[f"reader{p}"] = reader
            wiring.connect(m, reader.port, wiring.flipped(self.read[p]))
            asked = Signal(_LEN_BITS, name=f"asked{p}")
            sent = Signal(_LEN_BITS, name=f"sent{p}")
            words = dt.kind == 1
            word_addr = dt.word + asked * dt.stride
            m.d.comb += [reader.req.valid.eq(wq_dat[p].r_rdy & (dt.kind != 2)
                                             & (asked != dt.count)),
                         reader.req.payload.eq(Mux(words, word_addr >> log_a,
                                                   dt.blk + asked * dt.stride))]
            with m.If(reader.req.valid & reader.req.ready):
                m.d.sync += asked.eq(asked + 1)
            out = axi.write_data
            sent_word = (dt.word + sent * dt.stride)[:log_a] if log_a else Const(0, 1)
            word16 = reader.resp.payload.word_select(sent_word, 16)
            lanes16 = bb // 2
            shift16 = dt.lane[:max(1, (lanes16 - 1).bit_length())]
            shift32 = dt.lane[:max(1, (bb // 4 - 1).bit_length())]
            with m.Switch(dt.kind):
                with m.Case(0):
                    m.d.comb += [out.valid.eq(wq_dat[p].r_rdy & reader.resp.valid),
                                 out.payload.data.eq(reader.resp.payload),
                                 out.payload.strb.eq((1 << bb) - 1),
                                 reader.resp.ready.eq(wq_dat[p].r_rdy & out.ready)]
                with m.Case(1):
                    m.d.comb += [out.valid.eq(wq_dat[p].r_rdy & reader.resp.valid),
                                 out.payload.data.eq(word16 << (shift16 << 4)),
                                 out.payload.strb.eq(Const(3, bb) << (shift16 << 1)),
                                 reader.resp.ready.eq(wq_dat[p].r_rdy & out.ready)]
                with m.Case(2):
                    m.d.comb += [out.valid.eq(wq_dat[p].r_rdy),
                                 out.payload.data.eq(dt.value << (shift32 << 5)),
                                 out.payload.strb.eq(Const(15, bb) << (shift32 << 2))]
            with m.If(out.valid & out.ready):
                m.d.sync += sent.eq(sent + 1)
                with m.If(sent + 1 == dt.count):
                    m.d.sync += [sent.eq(0), asked.eq(0)]
                    m.d.comb += wq_dat[p].r_en.eq(1)

            # write completions: every run's response
            ct = wtask_l(wq_done[p].r_data)
            got = Signal(_LEN_BITS, name=f"wgot{p}")
            w_done = Signal(name=f"w_done{p}")
            runs_c = Mux(ct.kind == 1, ct.count, 1)
            with m.If(axi.write_done):
                m.d.sync += got.eq(got + 1)
                with m.If(got + 1 == runs_c):
                    m.d.sync += got.eq(0)
                    m.d.comb += [wq_done[p].r_en.eq(1), w_done.eq(1)]
            done_sources.append((w_done, ct.entry))

        # -- the table: count down each instruction's tasks; retire in order -------------------
        for e in range(_TABLE):
            dec = Signal(range(2 * P + 2), name=f"t{e}_dec")
            m.d.comb += dec.eq(sum(Mux(v & (ent == e), 1, 0) for v, ent in done_sources))
            with m.If(accept & (tail == e)):
                m.d.sync += [t_valid[e].eq(1), t_left[e].eq(n_tasks), t_sb[e].eq(u.sb),
                             t_pc[e].eq(u.pc), t_store[e].eq(is_store)]
            with m.Elif(t_valid[e]):
                m.d.sync += t_left[e].eq(t_left[e] - dec)
        head_done = Signal()
        sb_of_head = Signal(_bits(self._uop, "sb"))
        pc_of_head = Signal(_bits(self._uop, "pc"))
        for e in range(_TABLE):
            with m.If(head == e):
                m.d.comb += [head_done.eq(t_valid[e] & (t_left[e] == 0)),
                             sb_of_head.eq(t_sb[e]), pc_of_head.eq(t_pc[e])]
        with m.If(head_done):
            m.d.sync += [t_valid.bit_select(head, 1).eq(0), head.eq(head + 1)]
            m.d.comb += [self.release_reads.eq(1 << sb_of_head),
                         self.release_write.eq(1 << sb_of_head),
                         self.retire.eq(1), self.retire_pc.eq(pc_of_head)]
        with m.If(accept):
            m.d.sync += tail.eq(tail + 1)
        m.d.sync += count.eq(count + accept - head_done)
        m.d.comb += [self.writes_pending.eq((t_valid & t_store) != 0),
                     self.idle.eq(count == 0)]
        return m

"""The matrix unit: `WeightStream` (weights from the HBM ports into per-lane FIFOs) and `Mpu`
(the dot-product lanes and the MM instruction), bit-exact with `IsaDevice._mm`.

Lanes. There is one lane per HBM port (`mpu_lanes == hbm_ports`); lane p computes the rows the
striped layout stores in channel p (rows p, p + P, ...), `lane_width` products per beat. A lane
keeps up to four rows in flight (its adder loop's depth) times up to `max_tokens` tokens: the
beat sum of (row, token) is added to that pair's partial sum, which waits in a small partial-sum
memory between its beats, so every output is ((t0 + t1) + t2) + ... over its beat sums in
column order, the numerics model's `dot`. Rows go in groups of four; for each column beat k of
a group, every token t and every row j of the group take one step, all lanes in lockstep
sharing the vector beat (token t, beat k) read once from the vector buffer. When fewer than four
(row, token) pairs share a beat, bubbles keep each pair's steps four cycles apart, which is what
the adder needs: a group of g rows costs B * max(4, g * ntok) cycles.

Weights. A matrix is streamed per port in groups of four rows: for each chunk of a row's beats,
a burst for each row of the group, into that row's FIFO (`slot`). The MM takes beat k of rows
0..3 from the four slot FIFOs, so rows stored one after the other in HBM reach the lane
interleaved. PREFETCH descriptors queue (`prefetch_queue`) in front of one streamer; a direct MM
(attention over the KV cache) streams through its own.

Outputs: for each step, the lanes' P results are P consecutive rows; with a bias they are
round_fp16(add32(dot, widen(bias))), else round_fp16(dot); `mask` writes -Inf into the rows from
`rows` up to the next multiple of `align`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Shape, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from rtl import arith
from rtl.arith.add import NEG_ZERO
from rtl.arith.pipeline import Regs
from rtl.axi_port import read_request_layout

from . import ops
from .vbuf import VbufReader, read_port_signature, write_port_signature

__all__ = ["SLOTS", "Mpu", "WeightStream", "descriptor_layout", "stream_client_signature"]

#: Rows of a group: the lane's adder loop depth (ADD_LATENCY).
SLOTS = arith.ADD_LATENCY
_LEN_BITS = ops.LEN_BITS
_FP16_NEG_INF = 0xFC00


def descriptor_layout() -> data.StructLayout:
    """A queued PREFETCH (or direct MM) matrix: its operands at their `hw.isa` widths."""
    return ops.immediate_layout("PREFETCH")


def stream_client_signature(addr_width: int, data_width: int) -> wiring.Signature:
    return wiring.Signature({
        "read_req": Out(stream.Signature(read_request_layout(addr_width, _LEN_BITS))),
        "read_data": In(stream.Signature(data.StructLayout({"data": data_width, "last": 1}))),
    })


def _bits(layout, name: str) -> int:
    return Shape.cast(layout[name].shape).width


class WeightStream(wiring.Component):
    """Streams matrices (`desc`, in order) from every port into `SLOTS` FIFOs per port of
    `slot_beats` beats each, in bursts of at most `chunk` beats, asking only for what fits."""

    def __init__(self, cfg: AccelConfig, *, slot_beats: int, chunk: int, addr_width: int = 64,
                 queue: int = 2):
        if chunk > slot_beats:
            raise ValueError(f"chunk ({chunk}) cannot exceed slot_beats ({slot_beats})")
        self.cfg = cfg
        self.ports = cfg.hbm_ports
        self.slot_beats = slot_beats
        self.chunk = chunk
        self.queue = queue
        width = cfg.hbm_port_width_bits
        super().__init__({
            "desc": In(stream.Signature(descriptor_layout())),
            "hbm_base": In(addr_width).array(self.ports),
            "axi": Out(stream_client_signature(addr_width, width)).array(self.ports),
            "slot": Out(stream.Signature(width)).array(self.ports, SLOTS),
            "idle": Out(1),
        })
        self.addr_width = addr_width

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        P, W = self.ports, cfg.lane_width
        log_p, log_w = P.bit_length() - 1, W.bit_length() - 1
        bb = cfg.beat_bytes
        log_bb = bb.bit_length() - 1
        S = self.chunk
        log_s = S.bit_length() - 1
        D = self.slot_beats
        dl = descriptor_layout()
        queues = [fifo.SyncFIFOBuffered(width=dl.size, depth=self.queue) for _ in range(P)]
        room = Const(1, 1)
        for p, q in enumerate(queues):
            m.submodules[f"desc{p}"] = q
            room = room & q.w_rdy
            m.d.comb += [q.w_data.eq(self.desc.payload), q.w_en.eq(self.desc.valid & room)]
        m.d.comb += self.desc.ready.eq(room)
        idle = Const(1, 1)
        for p in range(P):
            q = queues[p]
            d = dl(q.r_data)
            rows_p = Signal(_LEN_BITS, name=f"rows{p}")
            m.d.comb += rows_p.eq(Mux(d.rows > p, (d.rows + (P - 1 - p)) >> log_p, 0))
            beats = Signal(_LEN_BITS, name=f"beats{p}")
            m.d.comb += beats.eq((d.cols + (W - 1)) >> log_w)
            g = Signal(_LEN_BITS, name=f"g{p}")
            c = Signal(_LEN_BITS, name=f"c{p}")  # chunk: beats c*S ..
            j = Signal(range(SLOTS), name=f"j{p}")
            row = (g << 2) + j
            n = Signal(range(S + 1), name=f"n{p}")
            rest = beats - (c << log_s)
            m.d.comb += n.eq(Mux(rest < S, rest, S))
            exists = row < rows_p
            credit = [Signal(range(D + 1), init=D, name=f"credit{p}_{k}") for k in range(SLOTS)]
            route = fifo.SyncFIFOBuffered(width=2, depth=16)
            m.submodules[f"route{p}"] = route
            req = self.axi[p].read_req
            cr = Signal(range(D + 1), name=f"cr{p}")
            for k in range(SLOTS):
                with m.If(j == k):
                    m.d.comb += cr.eq(credit[k])
            want = q.r_rdy & exists & (beats != 0)
            m.d.comb += [
                req.valid.eq(want & (cr >= n) & route.w_rdy),
                req.payload.addr.eq(self.hbm_base[p] + d.w + ((row * d.ldb + (c << log_s))
                                                               << log_bb)),
                req.payload.beats.eq(n),
                route.w_data.eq(j), route.w_en.eq(req.valid & req.ready),
            ]
            # advance when this (row, chunk) is asked for or has no row
            step = (req.valid & req.ready) | (q.r_rdy & (~exists | (beats == 0)))
            last_j = j == SLOTS - 1
            last_c = (c + 1) << log_s >= beats
            last_g = ((g + 1) << 2) >= rows_p
            with m.If(step):
                m.d.sync += j.eq(j + 1)
                with m.If(last_j):
                    m.d.sync += [j.eq(0), c.eq(c + 1)]
                    with m.If(last_c):
                        m.d.sync += [c.eq(0), g.eq(g + 1)]
                        with m.If(last_g | (beats == 0)):
                            m.d.sync += g.eq(0)
                            m.d.comb += q.r_en.eq(1)
            # data: into the slot the run was asked for
            rd = self.axi[p].read_data
            slot_id = route.r_data
            fifos = [fifo.SyncFIFOBuffered(width=cfg.hbm_port_width_bits, depth=D)
                     for _ in range(SLOTS)]
            for k, f in enumerate(fifos):
                m.submodules[f"slot{p}_{k}"] = f
                m.d.comb += [f.w_data.eq(rd.payload.data),
                             f.w_en.eq(rd.valid & route.r_rdy & (slot_id == k))]
                out = self.slot[p][k]
                m.d.comb += [out.valid.eq(f.r_rdy), out.payload.eq(f.r_data),
                             f.r_en.eq(out.ready)]
                asked = req.valid & req.ready & (j == k)
                popped = out.valid & out.ready
                m.d.sync += credit[k].eq(credit[k] - Mux(asked, n, 0) + popped)
                idle = idle & (credit[k] == D)
            m.d.comb += rd.ready.eq(route.r_rdy)
            with m.If(rd.valid & rd.ready & rd.payload.last):
                m.d.comb += route.r_en.eq(1)
            idle = idle & ~q.r_rdy & (q.level == 0)
        m.d.comb += self.idle.eq(idle)
        return m


class Mpu(wiring.Component):
    """The MM and PREFETCH instructions (see the module doc)."""

    def __init__(self, cfg: AccelConfig, uop_layout, *, block_bits: int, sb_entries: int,
                 max_tokens: int = 128, addr_width: int = 64):
        A, P, W = cfg.align, cfg.hbm_ports, cfg.lane_width
        if cfg.mpu_lanes != P:
            raise ValueError(f"mpu_lanes ({cfg.mpu_lanes}) must equal hbm_ports ({P}) in the "
                             "RTL: one lane per port")
        if W != A:
            raise ValueError(f"lane_width ({W}) must equal align ({A}) in the RTL")
        if A % P or (SLOTS * P) % A:
            raise ValueError(f"hbm_ports ({P}) must divide align ({A}) and {SLOTS} x "
                             "hbm_ports must be a multiple of it: a step's outputs fill part of "
                             "one block, a group's biases whole blocks")
        if max_tokens < 1 or max_tokens & (max_tokens - 1):
            raise ValueError(f"max_tokens must be a power of two, not {max_tokens}")
        self.cfg = cfg
        self.block_bits = block_bits
        self.sb_entries = sb_entries
        self.max_tokens = max_tokens
        self._uop = uop_layout
        slot_beats = max(2, cfg.prefetch_beats // SLOTS)
        self.slot_beats = slot_beats
        self.chunk = 1 << (min(cfg.hbm_burst_beats, max(1, slot_beats // 2)).bit_length() - 1)
        width = cfg.hbm_port_width_bits
        pc = _bits(uop_layout, "pc")
        super().__init__({
            "uop": In(stream.Signature(uop_layout)),
            "pref": In(stream.Signature(uop_layout)),
            "clear": In(1),  #: drop every prefetched matrix (between runs)
            "hbm_base": In(addr_width).array(P),
            "axi_pref": Out(stream_client_signature(addr_width, width)).array(P),
            "axi_direct": Out(stream_client_signature(addr_width, width)).array(P),
            "read": Out(read_port_signature(block_bits, A)),
            "write": Out(write_port_signature(block_bits, A)),
            "release_reads": Out(sb_entries),
            "release_write": Out(sb_entries),
            "retire": Out(2),
            "retire_pc": Out(pc).array(2),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        A, P, W = cfg.align, cfg.hbm_ports, cfg.lane_width
        log_a, log_p, log_w = A.bit_length() - 1, P.bit_length() - 1, W.bit_length() - 1
        bb = self.block_bits
        T = self.max_tokens
        streams = {}
        for name in ("pref", "direct"):
            ws = WeightStream(cfg, slot_beats=self.slot_beats, chunk=self.chunk,
                              queue=max(cfg.prefetch_queue, 1) if name == "pref" else 1)
            streams[name] = ws
            m.submodules[f"stream_{name}"] = (ResetInserter({"sync": self.clear})(ws)
                                              if name == "pref" else ws)
            for p in range(P):
                m.d.comb += ws.hbm_base[p].eq(self.hbm_base[p])
                wiring.connect(m, ws.axi[p], wiring.flipped(getattr(self, f"axi_{name}")[p]))

        # -- PREFETCH: queue the descriptor; count those no MM has taken yet ------------------
        pf = self.pref.payload
        waiting = Signal(range(cfg.prefetch_queue + 2))
        pws = streams["pref"]
        m.d.comb += [
            pws.desc.payload.w.eq(pf.w), pws.desc.payload.ldb.eq(pf.ldb),
            pws.desc.payload.rows.eq(pf.rows), pws.desc.payload.cols.eq(pf.cols),
            pws.desc.valid.eq(self.pref.valid),
            self.pref.ready.eq(pws.desc.ready & (waiting < cfg.prefetch_queue)),
        ]
        pf_taken = self.pref.valid & self.pref.ready
        with m.If(pf_taken):
            m.d.comb += self.retire_pc[1].eq(pf.pc)

        # -- MM --------------------------------------------------------------------------------
        u = self.uop.payload
        busy = Signal()
        mm = Signal(self._uop)
        prefetched_bit = ops.flag_bit("MM", "prefetched")
        bias_bit = ops.flag_bit("MM", "bias")
        mask_bit = ops.flag_bit("MM", "mask")
        dws = streams["direct"]
        direct_new = ~u.flags[prefetched_bit]
        m.d.comb += [
            dws.desc.payload.w.eq(u.w), dws.desc.payload.ldb.eq(u.ldb),
            dws.desc.payload.rows.eq(u.rows), dws.desc.payload.cols.eq(u.cols),
            self.uop.ready.eq(~busy & dws.desc.ready),
            dws.desc.valid.eq(self.uop.valid & self.uop.ready & direct_new),
        ]
        accept = self.uop.valid & self.uop.ready
        mm_taken_pf = accept & u.flags[prefetched_bit]
        m.d.sync += waiting.eq(waiting + pf_taken - mm_taken_pf)
        with m.If(self.clear):
            m.d.sync += waiting.eq(0)

        B = Signal(_LEN_BITS)  # beats per row
        rows_pp = Signal(_LEN_BITS)  # rows per port (port 0's, the most)
        groups = Signal(_LEN_BITS)
        with m.If(accept):
            m.d.sync += [busy.eq(1), mm.eq(u), B.eq((u.cols + (W - 1)) >> log_w),
                         rows_pp.eq((u.rows + (P - 1)) >> log_p),
                         groups.eq((((u.rows + (P - 1)) >> log_p) + (SLOTS - 1)) >> 2)]
        direct = ~mm.flags[prefetched_bit]
        ntok = mm.ntok[:_LEN_BITS]
        has_bias = mm.flags[bias_bit]
        bias_blocks = (SLOTS * P) // A

        # the vector reader: per group, its bias blocks, then for each beat k and token t the
        # vector block (t, k)
        xr = VbufReader(bb, A, depth=8)
        m.submodules.xreader = xr
        wiring.connect(m, xr.port, wiring.flipped(self.read))
        rg = Signal(_LEN_BITS)
        rk = Signal(_LEN_BITS)
        rt = Signal(_LEN_BITS)
        rb = Signal(range(bias_blocks + 1))
        rdone = Signal()
        reading = busy & ~rdone
        in_bias = has_bias & (rb != bias_blocks)
        src_blk = (mm.src + rt * mm.sstride) >> log_a
        bias_blk = (mm.bias + ((rg << 2) << log_p)) >> log_a
        m.d.comb += [xr.req.valid.eq(reading & (ntok != 0) & (rows_pp != 0) & (B != 0)),
                     xr.req.payload.eq(Mux(in_bias, bias_blk + rb, src_blk + rk))]
        with m.If(accept):
            m.d.sync += [rg.eq(0), rk.eq(0), rt.eq(0), rb.eq(0), rdone.eq(0)]
        with m.If(busy & ~rdone & ((ntok == 0) | (rows_pp == 0) | (B == 0))):
            m.d.sync += rdone.eq(1)
        with m.If(xr.req.valid & xr.req.ready):
            with m.If(in_bias):
                m.d.sync += rb.eq(rb + 1)
            with m.Else():
                m.d.sync += rt.eq(rt + 1)
                with m.If(rt + 1 == ntok):
                    m.d.sync += [rt.eq(0), rk.eq(rk + 1)]
                    with m.If(rk + 1 == B):
                        m.d.sync += [rk.eq(0), rg.eq(rg + 1), rb.eq(0)]
                        with m.If(rg + 1 == groups):
                            m.d.sync += rdone.eq(1)
        reads_released = Signal()
        with m.If(busy & rdone & ~reads_released):
            m.d.sync += reads_released.eq(1)
            m.d.comb += self.release_reads.eq(1 << mm.sb)
        with m.If(accept):
            m.d.sync += reads_released.eq(0)

        # -- the step sequence -----------------------------------------------------------------
        en = Signal()
        g = Signal(_LEN_BITS)
        k = Signal(_LEN_BITS)
        t = Signal(_LEN_BITS)
        jj = Signal(range(SLOTS))
        bubble = Signal(range(SLOTS + 1))
        loading_bias = Signal(range(bias_blocks + 1))
        bias_regs = Signal(16 * SLOTS * P)
        sdone = Signal()  # every step injected
        g_eff = Signal(range(SLOTS + 1))
        left = rows_pp - (g << 2)
        m.d.comb += g_eff.eq(Mux(left < SLOTS, left, SLOTS))
        pairs = Signal(_LEN_BITS + 3)
        m.d.comb += pairs.eq(g_eff * ntok)
        with m.If(accept):
            m.d.sync += [g.eq(0), k.eq(0), t.eq(0), jj.eq(0), bubble.eq(0), sdone.eq(0),
                         loading_bias.eq(0)]
        with m.If(busy & ~sdone & ((ntok == 0) | (rows_pp == 0) | (B == 0))):
            m.d.sync += sdone.eq(1)
        need_bias = has_bias & (loading_bias != bias_blocks) & (k == 0) & (t == 0) & (jj == 0)
        x = xr.resp
        wsrc = [[Mux(direct, dws.slot[p][j].payload, pws.slot[p][j].payload)
                 for j in range(SLOTS)] for p in range(P)]
        wvalid = [[Mux(direct, dws.slot[p][j].valid, pws.slot[p][j].valid)
                   for j in range(SLOTS)] for p in range(P)]
        # rows of this group that port p holds: row 4g + j exists if 4g + j < rows_p
        exists = [[Signal(name=f"exists{p}_{j}") for j in range(SLOTS)] for p in range(P)]
        for p in range(P):
            rows_p = Mux(mm.rows > p, (mm.rows + (P - 1 - p)) >> log_p, 0)
            for j in range(SLOTS):
                m.d.comb += exists[p][j].eq(((g << 2) + j) < rows_p)
        w_ok = Const(1, 1)
        for p in range(P):
            for j in range(SLOTS):
                w_ok = w_ok & (~(jj == j) | ~exists[p][j] | wvalid[p][j])
        stepping = busy & ~sdone & ~need_bias & (bubble == 0)
        inject = Signal()
        m.d.comb += inject.eq(en & stepping & x.valid & w_ok)
        # bias blocks at the start of each group
        with m.If(en & busy & ~sdone & need_bias & x.valid):
            m.d.comb += x.ready.eq(1)
            m.d.sync += [bias_regs.word_select(loading_bias, 16 * A).eq(x.payload),
                         loading_bias.eq(loading_bias + 1)]
        with m.If(en & (bubble != 0)):
            m.d.sync += bubble.eq(bubble - 1)
        last_j = jj + 1 == g_eff
        last_t = t + 1 == ntok
        last_k = k + 1 == B
        with m.If(inject):
            with m.If(last_j):
                m.d.comb += x.ready.eq(1)
            m.d.sync += jj.eq(jj + 1)
            with m.If(last_j):
                m.d.sync += [jj.eq(0), t.eq(t + 1)]
                with m.If(last_t):
                    m.d.sync += [t.eq(0), k.eq(k + 1)]
                    with m.If(pairs < SLOTS):
                        m.d.sync += bubble.eq(SLOTS - pairs)
                    with m.If(last_k):
                        m.d.sync += [k.eq(0), g.eq(g + 1), loading_bias.eq(0)]
                        with m.If(g + 1 == groups):
                            m.d.sync += sdone.eq(1)
        for p in range(P):
            for j in range(SLOTS):
                ready = inject & (jj == j) & exists[p][j] & last_t
                m.d.comb += [dws.slot[p][j].ready.eq(ready & direct),
                             pws.slot[p][j].ready.eq(ready & ~direct)]

        # -- the lanes -------------------------------------------------------------------------
        regs = Regs(m, en, "mpu")
        first_beat = k == 0
        last_beat = last_k
        cols_left = mm.cols - (k << log_w)
        colmask = Signal(W)
        for e in range(W):
            m.d.comb += colmask[e].eq(cols_left > e)
        q_idx = Signal(range(SLOTS * T))
        m.d.comb += q_idx.eq((t << 2) + jj)
        row_base = ((g << 2) + jj) << log_p  # the step's first row
        # side values that travel with a step (all lanes share them)
        side = {"valid": inject, "first": first_beat, "last": last_beat, "q": q_idx,
                "row": row_base, "tok": t}
        front_latency = arith.MUL16_LATENCY + (W.bit_length() - 1) * arith.ADD_LATENCY
        for _ in range(front_latency):
            side = {k_: regs(v, k_) for k_, v in side.items()}
        acc_valid = side["valid"]
        outs = []
        for p in range(P):
            wbeat = Signal(16 * W, name=f"wbeat{p}")
            for j in range(SLOTS):
                with m.If(jj == j):
                    m.d.comb += wbeat.eq(Mux(exists[p][j], wsrc[p][j], 0))
            products = []
            for e in range(W):
                wv = Mux(colmask[e], wbeat[16 * e:16 * e + 16], 0)
                xv = Mux(colmask[e], x.payload[16 * e:16 * e + 16], 0)
                products.append(arith.mul16(m, regs, wv, xv))
            beat_sum = arith.tree32(m, regs, products)
            # accumulate: partial (or -0 for a first beat) + beat sum; the partial of the same
            # pair four steps ago is still leaving the adder, older ones are in the memory
            ram = memory.Memory(shape=32, depth=SLOTS * T, init=[])
            m.submodules[f"partials{p}"] = ram
            rport = ram.read_port(domain="comb")
            wport = ram.write_port()
            acc_q = [side["q"]]
            acc_last = [side["last"]]
            acc_v = [acc_valid]
            m.d.comb += rport.addr.eq(side["q"])
            add_out_q = Signal(range(SLOTS * T), name=f"addq{p}")
            add_out_v = Signal(name=f"addv{p}")
            add_out = Signal(32, name=f"addout{p}")
            partial = Mux(side["first"], NEG_ZERO,
                          Mux(add_out_v & (add_out_q == side["q"]), add_out, rport.data))
            total = arith.add32(m, regs, beat_sum, partial)
            for _ in range(arith.ADD_LATENCY):
                acc_q.append(regs(acc_q[-1], "accq"))
                acc_last.append(regs(acc_last[-1], "accl"))
                acc_v.append(regs(acc_v[-1], "accv"))
            m.d.comb += [add_out.eq(total), add_out_q.eq(acc_q[-1]), add_out_v.eq(acc_v[-1])]
            m.d.comb += [wport.addr.eq(acc_q[-1]), wport.data.eq(total),
                         wport.en.eq(en & acc_v[-1] & ~acc_last[-1])]
            outs.append(total)
        # final sums leave the adder with their step's row, token and bias
        fin = {"valid": acc_v[-1] & acc_last[-1]}
        sides_late = dict(side)
        for _ in range(arith.ADD_LATENCY):
            sides_late = {k_: regs(v, k_) for k_, v in sides_late.items()}
        fin["row"], fin["tok"] = sides_late["row"], sides_late["tok"]
        # bias words: the group's, registered when the step was injected, carried along
        bias_j = Signal(16 * P)
        for j in range(SLOTS):
            with m.If(jj == j):
                m.d.comb += bias_j.eq(bias_regs.word_select(j, 16 * P))
        bias_side = bias_j
        for _ in range(front_latency + arith.ADD_LATENCY):
            bias_side = regs(bias_side, "bias")
        results = []
        for p in range(P):
            bw = arith.widen16(m, regs, bias_side[16 * p:16 * p + 16])
            y = outs[p]
            y1 = regs(y, "y1")  # aligned with the widened bias
            total = arith.add32(m, regs, y1, Mux(regs(has_bias, "hb"), bw, NEG_ZERO))
            results.append(arith.round32to16(m, regs, total))
        out_latency = 1 + arith.ADD_LATENCY + 2
        for _ in range(out_latency):
            fin = {k_: regs(v, k_) for k_, v in fin.items()}

        # -- the writer: one step's P rows per write; then the mask padding ------------------
        w = self.write.req
        addr = mm.dst + fin["tok"] * mm.dstride + fin["row"]
        masked = mm.flags[mask_bit]
        padded = (mm.rows + (A - 1)) >> log_a << log_a
        words = Signal(16 * A)
        wmask = Signal(A)
        offset = addr[:log_a] if log_a else Const(0, 1)
        for p in range(P):
            row = fin["row"] + p
            real = row < mm.rows
            pad = masked & (row < padded) & ~real
            value = Mux(real, results[p], _FP16_NEG_INF)
            for slot_ in range(A // P):
                with m.If(offset[log_p:] == slot_ if log_a > log_p else Const(1, 1)):
                    m.d.comb += [words[16 * (slot_ * P + p):16 * (slot_ * P + p) + 16].eq(value),
                                 wmask[slot_ * P + p].eq(real | pad)]
        # after the last step: -Inf in rows [roundup(rows, P), roundup(rows, align)) per token
        pad_t = Signal(_LEN_BITS)
        padding = Signal()
        pipe_empty = Signal()
        from_rows = (mm.rows + (P - 1)) >> log_p << log_p
        pad_words = Signal(A)
        for e in range(A):
            m.d.comb += pad_words[e].eq(((from_rows & (A - 1)) <= e) & (from_rows[:log_a] != 0))
        pad_addr = mm.dst + pad_t * mm.dstride + from_rows
        with m.If(padding):
            m.d.comb += [w.valid.eq(1), w.payload.block.eq(pad_addr >> log_a),
                         w.payload.data.eq(Cat(*[Const(_FP16_NEG_INF, 16)] * A)),
                         w.payload.mask.eq(pad_words)]
            with m.If(w.ready):
                m.d.sync += pad_t.eq(pad_t + 1)
                with m.If(pad_t + 1 == ntok):
                    m.d.sync += padding.eq(0)
        with m.Else():
            m.d.comb += [w.valid.eq(fin["valid"] & (wmask != 0)),
                         w.payload.block.eq(addr >> log_a), w.payload.data.eq(words),
                         w.payload.mask.eq(wmask)]
        m.d.comb += en.eq(~(fin["valid"] & (wmask != 0) & ~w.ready) & ~padding)

        # -- completion ------------------------------------------------------------------------
        # every (row, token) pair's last beat yields one output; when all have left, every
        # earlier beat has too
        in_flight = Signal(range(1 << 12))
        out_now = en & fin["valid"]
        m.d.sync += in_flight.eq(in_flight + (inject & last_k) - out_now)
        m.d.comb += pipe_empty.eq(in_flight == 0)
        finishing = Signal()
        need_pad = masked & (from_rows[:log_a] != 0) & (ntok != 0)
        pad_done = Signal()
        with m.If(accept):
            m.d.sync += [pad_done.eq(0), pad_t.eq(0), finishing.eq(0)]
        with m.If(busy & sdone & pipe_empty & ~padding & ~finishing):
            with m.If(need_pad & ~pad_done):
                m.d.sync += [padding.eq(1), pad_done.eq(1)]
            with m.Else():
                m.d.sync += finishing.eq(1)
        mm_retire = Signal()
        m.d.comb += self.retire.eq(Cat(mm_retire, pf_taken))
        with m.If(finishing & reads_released):
            m.d.sync += [busy.eq(0), finishing.eq(0)]
            m.d.comb += [self.release_write.eq(1 << mm.sb), mm_retire.eq(1),
                         self.retire_pc[0].eq(mm.pc)]
        m.d.comb += self.idle.eq(~busy & dws.idle)
        return m


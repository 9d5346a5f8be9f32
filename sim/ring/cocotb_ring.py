"""cocotb tests of the ring router alone (`sim.ring.top`): a sequence of collectives (ALLGATHER,
ARGMAXALL, SYNC) on device `device` of a ring of `devices`, the other devices played by
cocotbext-axi streams, checked against the `isa` backend's collective
(`IsaCluster._collective`).

The case comes in TANDEM_RING_CASE (JSON): seed, devices, device, collectives (how many, drawn
at random), pause (the probability that the link in, the link out, the vector buffer's ports
and the controller stall in a cycle); optional corrupt, a collective whose read-back buffer
gets one flipped bit (the negative test: the run must fail there).

The neighbour model. On a unidirectional ring the link into device d carries every other
device's flits: origin o arrives with hops = (d - o) mod devices, the flits of one origin in
their order, the origins interleaved in any way; the flits of a collective all come before the
upstream device's flits of the next one. The source sends the flits of every collective in such
a random interleaving as fast as the router takes them. Checked: the vector buffer after every
collective equals the model's (every word of it), the flits the router sends (its own, then
each one it must forward with one more hop, nothing else, per origin in order), the register
write-backs of ARGMAXALL, and each collective's retirement (pc, scoreboard releases).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from hw.isa import Instr
from hw.isasim import IsaCluster
from rtl.core import ops
from rtl.core.ring import FLIT_USER
from sim.ring.top import BLOCK_BITS, CONFIG, UOP
from sim.streams import pauses
from sim.tb import TB
from sim.vbuf_port import VbufPortModel, block_int, high

A = CONFIG.align
FLIT_BYTES = 2 * A
_DATA, _ARGMAX, _SYNC = 0, 1, 2
_USER = {name: (field.offset, field.width) for name, field in FLIT_USER}
REGION = 1 << 14  # words of the vector buffer the collectives use
NAN = 0x7FC00000


def pack_uop(**fields) -> int:
    word = 0
    for name, value in fields.items():
        field = UOP[name]
        word |= (int(value) & ((1 << field.width) - 1)) << field.offset
    return word


def user(kind: int, origin: int, hops: int) -> int:
    return (kind << _USER["kind"][0]) | (origin << _USER["origin"][0]) | (hops << _USER["hops"][0])


def unuser(value: int) -> tuple[int, int, int]:
    return tuple((value >> _USER[n][0]) & ((1 << _USER[n][1]) - 1)
                 for n in ("kind", "origin", "hops"))


def f32_bits(x) -> int:
    return int(np.asarray(x, np.float32).view(np.uint32))


def _collectives(rng: random.Random, n: int, devices: int) -> list[tuple[str, dict]]:
    """Random collectives with operands the compiler could emit (aligned, inside REGION)."""
    out = []
    for _ in range(n):
        op = rng.choice(["ALLGATHER", "ALLGATHER", "ARGMAXALL", "SYNC"])
        if op == "ALLGATHER":
            slice_ = A * rng.choice([0, 1, 1, 2, 3]) if rng.random() < 0.1 else \
                A * rng.choice([1, 2, 3])
            count = rng.choice([0, 1, 2, 3]) if rng.random() < 0.1 else rng.choice([1, 2, 3])
            stride = devices * slice_ + A * rng.choice([0, 0, 1, 4])
            span = max(count - 1, 0) * stride + devices * slice_
            base = A * rng.randrange((REGION - span) // A)
            out.append((op, {"base": base, "slice": slice_, "stride": stride, "count": count}))
        elif op == "ARGMAXALL":
            out.append((op, {"rd": rng.randrange(1, 16), "sd": rng.randrange(16)}))
        else:
            out.append((op, {}))
    return out


def _candidate(rng: random.Random, devices: int) -> tuple[int, int]:
    """(FP32 bits, int32 index): ties, signed zeros, NaN and negative indices included."""
    value = rng.choice([1.5, 1.5, -2.0, 0.0, -0.0, 3.25, float(rng.randrange(-4, 4))])
    bits = f32_bits(value)
    if rng.random() < 0.1:
        bits = NAN
    idx = rng.choice([7, 7, 3, -1, rng.randrange(-2**31, 2**31)])
    return bits, idx


@cocotb.test()
async def collectives_match_the_isa_cluster(dut):
    case = json.loads(os.environ["TANDEM_RING_CASE"])
    rng = random.Random(case["seed"])
    D, me, pause = case["devices"], case["device"], case["pause"]
    plan = _collectives(rng, case["collectives"], D)

    # -- the model: the isa backend's devices, collective by collective ---------------------
    cluster = IsaCluster(CONFIG.with_devices(D))
    cluster.load([[Instr("HALT")]] * D, None)
    devs = cluster.devices
    for dev in devs:
        dev.vbuf[:REGION] = np.random.default_rng(rng.randrange(2**32)).integers(
            0, 1 << 16, REGION, dtype=np.uint16).view(np.float16)
    vbuf = devs[me].vbuf.view(np.uint16).copy()  # the router's buffer (the DUT's copy)
    rx_frames: list[AxiStreamFrame] = []
    expected = []  # per collective: (uop, own flits, forwarded flits, wb, vbuf after)
    received = []  # per collective: every flit's data that comes in
    for k, (op, args) in enumerate(plan):
        instr = Instr(op, dict(args))
        v = {name: (val.imm if hasattr(val, "imm") else val) for name, val in instr.args.items()}
        incoming = {}  # origin -> [(kind, hops, data)] in order
        own = []
        fields = {"op": ops.CODES[op], "pc": 100 + k, "sb": k % 8}
        if op == "ALLGATHER":
            fields.update(base=v["base"], slice=v["slice"], stride=v["stride"], count=v["count"])
            for o in range(D):
                seq = []
                for t in range(v["count"]):
                    lo = v["base"] + t * v["stride"] + o * v["slice"]
                    for b in range(v["slice"] // A):
                        words = devs[o].vbuf[lo + b * A:lo + (b + 1) * A].view(np.uint16)
                        seq.append((_DATA, block_int(words)))
                if o == me:
                    own = seq
                else:
                    incoming[o] = seq
        elif op == "ARGMAXALL":
            for o in range(D):
                bits, idx = _candidate(rng, D)
                devs[o].sregs[v["sd"]] = np.uint32(bits).view(np.float32)
                devs[o].regs[v["rd"]] = idx
                flit = (_ARGMAX, bits | (idx & 0xFFFFFFFF) << 32)
                if o == me:
                    own = [flit]
                    fields.update(rd=v["rd"], sd=v["sd"], rd_v=idx, sd_v=bits)
                else:
                    incoming[o] = [flit]
        else:
            for o in range(D):
                if o == me:
                    own = [(_SYNC, None)]
                else:
                    incoming[o] = [(_SYNC, 0)]
        if D == 1:
            own = []  # alone on the ring: nothing to send
        # the link in: a random interleaving of the origins' flits, each origin in order
        queues = {o: list(seq) for o, seq in incoming.items() if seq}
        forwarded = {}
        while queues:
            o = rng.choice(sorted(queues))
            kind, data = queues[o].pop(0)
            if not queues[o]:
                del queues[o]
            hops = (me - o) % D
            rx_frames.append(AxiStreamFrame(tdata=data.to_bytes(FLIT_BYTES, "little"),
                                            tuser=user(kind, o, hops)))
            if hops < D - 1:
                forwarded.setdefault(o, []).append((kind, hops + 1, data))
        cluster._collective([(instr, v)] * D)
        wb = None
        if op == "ARGMAXALL":
            wb = (v["rd"], devs[me].regs[v["rd"]] & 0xFFFFFFFF, v["sd"],
                  f32_bits(devs[me].sregs[v["sd"]]))
        expected.append((fields, own, forwarded, wb, devs[me].vbuf.view(np.uint16).copy()))
        received.append({data for seq in incoming.values() for _, data in seq})

    # -- the bench ----------------------------------------------------------------------------
    tb = TB(dut)
    dut.device.value = me
    dut.devices.value = D
    dut.uop__valid.value = 0
    dut.uop__payload.value = 0
    source = tb.add(AxiStreamSource(AxiStreamBus.from_prefix(dut, "rx_"), dut.clk, dut.rst),
                    pauses(random.Random(rng.random()), pause), quiet=True)
    sink = tb.add(AxiStreamSink(AxiStreamBus.from_prefix(dut, "tx_"), dut.clk, dut.rst),
                  pauses(random.Random(rng.random()), pause), quiet=True)
    mem = tb.add(VbufPortModel(dut, vbuf, rng, pause, BLOCK_BITS, A))
    mem.drive()
    await tb.reset(cycles=3)
    for frame in rx_frames:
        await source.send(frame)

    k_sent = 0
    retired = []
    limit = 4000 + 200 * sum(len(e[1]) + sum(map(len, e[2].values())) for e in expected)
    for cycle in range(limit):
        await FallingEdge(dut.clk)
        mem.drive()
        offer = k_sent < len(expected) and rng.random() >= pause
        dut.uop__valid.value = int(offer)
        if offer:
            dut.uop__payload.value = pack_uop(**expected[k_sent][0])
        await ReadOnly()
        mem.sample()
        if offer and high(dut.uop__ready):
            k_sent += 1
        if high(dut.retire):
            k = len(retired)
            assert k < k_sent, f"cycle {cycle}: a retirement with no collective in flight"
            fields, _, _, wb, after = expected[k]
            assert int(dut.retire_pc.value) == fields["pc"], "retire_pc"
            sb = 1 << fields["sb"]
            assert int(dut.release_reads.value) == sb
            assert int(dut.release_write.value) == sb
            got_wb = None
            if int(dut.int_wb.value) & 1:
                iw, sw = int(dut.int_wb.value), int(dut.scalar_wb.value)
                assert sw & 1, "ARGMAXALL writes back both registers at once"
                got_wb = (iw >> 1 & 0xF, iw >> 5, sw >> 1 & 0xF, sw >> 5)
            assert got_wb == wb, (f"collective {k} ({plan[k][0]}): write-back {got_wb}, "
                                  f"expected {wb}")
            if case.get("corrupt") == k:  # negative test: the checker must see one bad bit
                vbuf[0] ^= 1
            differ = np.flatnonzero(vbuf != after)
            assert not differ.size, (f"collective {k} ({plan[k][0]} {plan[k][1]}): "
                                     f"{differ.size} vector-buffer words differ, first at "
                                     f"{differ[:6].tolist()}")
            retired.append(cycle)
            if len(retired) == len(expected):
                break
    assert len(retired) == len(expected), (f"{len(retired)} of {len(expected)} collectives "
                                           f"retired within {limit} cycles")
    await tb.cycles(20)
    assert source.empty(), "flits left on the link in"

    # the link out, collective by collective
    sent = []
    while not sink.empty():
        frame = sink.recv_nowait()
        tuser = frame.tuser[0] if isinstance(frame.tuser, list) else frame.tuser
        sent.append((unuser(int(tuser)), int.from_bytes(bytes(frame.tdata), "little")))
    pos = 0
    for k, (_, own, forwarded, _, _) in enumerate(expected):
        n = len(own) + sum(map(len, forwarded.values()))
        chunk = sent[pos:pos + n]
        assert len(chunk) == n, f"collective {k}: {len(chunk)} flits out, expected {n}"
        pos += n
        by_origin = {}
        for (kind, origin, hops), data in chunk:
            by_origin.setdefault(origin, []).append((kind, hops, data))
        mine = by_origin.pop(me, [])
        assert [(kd, h) for kd, h, _ in mine] == [(kd, 1) for kd, _ in own], \
            f"collective {k}: own flits {[(kd, h) for kd, h, _ in mine]}"
        if plan[k][0] == "ALLGATHER":
            assert [d for _, _, d in mine] == [d for _, d in own], f"collective {k}: own data"
        elif plan[k][0] == "ARGMAXALL" and mine:
            # the router sends the best candidate it holds: its own or one received before
            offered = {d for _, d in own} | received[k]
            assert mine[0][2] & ((1 << 64) - 1) in offered, f"collective {k}: candidate sent"
        assert by_origin == forwarded, f"collective {k}: forwarded {by_origin} != {forwarded}"
    assert pos == len(sent), f"{len(sent) - pos} flits sent after the last collective"
    dut._log.info("%d collectives on device %d of %d: %d flits in, %d out, %d cycles",
                  len(expected), me, D, len(rx_frames), len(sent), retired[-1])

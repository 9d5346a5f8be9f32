"""`ScalarUnit`: the FP32 scalar instructions SLI, SMULI, SADDH, SRECIP and SRSQRT, one per
cycle, each `SCALAR_LATENCY` cycles from issue to its register write-back (`hw.isa` gives
the exact formula of each; the arithmetic is `rtl.arith`'s)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from rtl import arith

from . import ops
from .controller import write_back_layout

__all__ = ["SCALAR_LATENCY", "ScalarUnit"]

#: The longest path: FP32 -> FP16, reciprocal or rsqrt, FP16 -> FP32, plus the output register.
SCALAR_LATENCY = 2 + 6 + 1 + 1


def _delay(m: Module, value, cycles: int, name: str):
    for k in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{k}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


class ScalarUnit(wiring.Component):
    def __init__(self, uop_layout):
        super().__init__({
            "uop": In(stream.Signature(uop_layout)),
            "wb": Out(write_back_layout()),
            "retire": Out(1),
            "retire_pc": Out(uop_layout["pc"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        u = self.uop.payload
        m.d.comb += self.uop.ready.eq(1)
        units = {
            "mul": arith.Fp32Multiplier(), "widen_imm": arith.Fp16ToFp32(),
            "add": arith.Fp32Adder(), "round_sum": arith.Fp32ToFp16(),
            "widen_sum": arith.Fp16ToFp32(), "round_in": arith.Fp32ToFp16(),
            "recip": arith.Reciprocal(), "rsqrt": arith.Rsqrt(),
            "widen_recip": arith.Fp16ToFp32(), "widen_rsqrt": arith.Fp16ToFp32(),
        }
        for name, unit in units.items():
            m.submodules[name] = unit
            m.d.comb += [unit.i.valid.eq(1), unit.o.ready.eq(1)]
        sa = u.sa_v
        imm = u.imm
        m.d.comb += [
            units["mul"].i.payload.a.eq(sa), units["mul"].i.payload.b.eq(imm),
            units["widen_imm"].i.payload.eq(imm[:16]),
            units["add"].i.payload.a.eq(_delay(m, sa, 1, "sa")),
            units["add"].i.payload.b.eq(units["widen_imm"].o.payload),
            units["round_sum"].i.payload.eq(units["add"].o.payload),
            units["widen_sum"].i.payload.eq(units["round_sum"].o.payload),
            units["round_in"].i.payload.eq(sa),
            units["recip"].i.payload.eq(units["round_in"].o.payload),
            units["rsqrt"].i.payload.eq(units["round_in"].o.payload),
            units["widen_recip"].i.payload.eq(units["recip"].o.payload),
            units["widen_rsqrt"].i.payload.eq(units["rsqrt"].o.payload),
        ]
        latency = SCALAR_LATENCY - 1  # the results, before the output register
        paths = {
            "SLI": (imm, 0),
            "SMULI": (units["mul"].o.payload, units["mul"].latency),
            "SADDH": (units["widen_sum"].o.payload, 1 + 4 + 2 + 1),
            "SRECIP": (units["widen_recip"].o.payload, 2 + 6 + 1),
            "SRSQRT": (units["widen_rsqrt"].o.payload, 2 + 6 + 1),
        }
        op = _delay(m, u.op, latency, "op")
        valid = _delay(m, self.uop.valid, latency, "valid")
        sd = _delay(m, u.sd, latency, "sd")
        pc = _delay(m, u.pc, latency, "pc")
        result = Signal(32)
        for name, (value, depth) in paths.items():
            aligned = _delay(m, value, latency - depth, name.lower())  # outside the If: the
            with m.If(op == ops.CODES[name]):  # delay registers run every cycle
                m.d.comb += result.eq(aligned)
        m.d.sync += [self.wb.valid.eq(valid), self.wb.idx.eq(sd), self.wb.value.eq(result),
                     self.retire.eq(valid), self.retire_pc.eq(pc)]
        return m

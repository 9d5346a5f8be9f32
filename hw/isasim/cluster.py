"""`IsaCluster`: D simulated devices joined in a ring, behind the `Device` protocol.

Every device runs its own program until it reaches a ring instruction; when all of them have,
the collective is carried out (data moved between their vector buffers) and timed: it starts
when the last device is ready. Devices that reach different instructions, or halt while others
wait, have diverged: that is a compiler bug and raises `DeviceError`.

`symmetric=True` (timing only) simulates device 0 alone and times collectives as if every
device arrived when it did: exact for dense models, where device 0 is the last to reach every
collective: the compiler gives it the largest share of everything (heads, output columns, LM
head rows; when the device count does not divide them the others hold as many or one fewer,
see `host.compiler.plan`), so the others run the same instruction sequence on shapes no larger,
or fewer per-head instructions (a test checks the cycles against all devices simulated). MoE
programs branch on where the chosen experts live, so their devices' streams differ between
collectives; the compiler refuses timing-only MoE compiles, and functional runs simulate every
device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.isa import Instr

from .device import RING_OPS, DeviceError, IsaDevice

__all__ = ["IsaCluster"]


class IsaCluster:
    """The `isa` backend's devices. Load programs and images, write the job, start, wait."""

    kind = "isa"

    def __init__(self, config: AccelConfig, functional: bool = True,
                 symmetric: bool = False) -> None:
        self.config = config
        self.functional = functional
        self.symmetric = symmetric
        self.devices: list[IsaDevice] = []
        self.max_instructions = 500_000_000

    # -- Device protocol -------------------------------------------------------------------

    def load(self, programs: list[list[Instr]], images: list[HbmImage] | None) -> None:
        count = 1 if self.symmetric else self.config.devices
        if len(programs) < count:
            raise ValueError(f"{count} devices need {count} programs, not {len(programs)}")
        self.devices = [
            IsaDevice(d, self.config, programs[d], None if images is None else images[d],
                      functional=self.functional)
            for d in range(count)
        ]

    def write_i32(self, device: int, offset: int, values) -> None:
        self.devices[device].image.write_i32(offset, values)

    def read_i32(self, device: int, offset: int, n: int) -> np.ndarray:
        return self.devices[device].image.read_i32(offset, n)

    def image(self, device: int) -> HbmImage:
        return self.devices[device].image

    def start(self) -> None:
        for dev in self.devices:
            dev.reset()

    def wait(self) -> None:
        for _ in self.run():
            pass

    def counters(self) -> dict:
        d0 = self.devices[0]
        return {
            "cycles": max(dev.timeline.cycles for dev in self.devices),
            "instructions": [dev.executed for dev in self.devices],
            "busy": d0.timeline.busy,
            **d0.timeline.snapshot(),
        }

    # -- simulation ------------------------------------------------------------------------

    def run(self) -> Iterator[None]:
        """Advance to completion, yielding after every collective (so callers can stream
        the TOKOUT events that have appeared on device 0)."""
        limit = self.max_instructions
        while True:
            stops = [dev.run_to_collective(limit) for dev in self.devices]
            waits = [w for w in stops if w is not None]
            if not waits:
                return
            if len(waits) < len(stops):
                raise DeviceError("devices diverged: some halted while others wait at "
                                  f"{waits[0][0].op}")
            ops = {(w[0].op, w[0].args.get("slice"), w[0].args.get("stride")) for w in waits}
            if len(ops) != 1:
                pcs = [dev.pc for dev in self.devices]
                raise DeviceError(f"devices diverged at ring instructions {ops} (pcs {pcs})")
            start = max(dev.ring_ready(i, v) for dev, (i, v) in zip(self.devices, waits,
                                                                     strict=True))
            if self.functional:
                self._collective(waits)
            for dev, (instr, v) in zip(self.devices, waits, strict=True):
                dev.commit_ring(instr, v, start)
            yield

    def _collective(self, waits: list[tuple[Instr, dict]]) -> None:
        _COLLECTIVES[waits[0][0].op](self.devices, waits)


def _allgather(devs: list[IsaDevice], waits: list[tuple[Instr, dict]]) -> None:
    v0 = waits[0][1]
    count, slice_, stride = int(v0["count"]), int(v0["slice"]), int(v0["stride"])
    base = int(v0["base"])
    for t in range(count):
        row = base + t * stride
        for owner in range(len(devs)):
            lo = row + owner * slice_
            data = devs[owner].buffer[lo : lo + slice_].copy()
            for dev in devs:
                dev.buffer[lo : lo + slice_] = data


def _argmaxall(devs: list[IsaDevice], waits: list[tuple[Instr, dict]]) -> None:
    rd, sd = waits[0][0].args["rd"], waits[0][0].args["sd"]
    best = max(((float(dev.sregs[sd]), -dev.regs[rd]) for dev in devs),
               key=lambda p: (not np.isnan(p[0]), p[0], p[1]))
    for dev in devs:
        dev.sregs[sd] = np.float32(best[0])
        dev._setr(rd, -best[1])


def _sync(devs: list[IsaDevice], waits: list[tuple[Instr, dict]]) -> None:
    """A barrier moves nothing: its effect is the common start time."""


#: What each ring opcode does to the devices' state once all of them have reached it (its
#: timing is the devices' `commit_ring`); checked at import to cover `RING_OPS`.
_COLLECTIVES: dict[str, Callable[[list[IsaDevice], list[tuple[Instr, dict]]], None]] = {
    "ALLGATHER": _allgather,
    "ARGMAXALL": _argmaxall,
    "SYNC": _sync,
}
assert set(_COLLECTIVES) == RING_OPS, "every ring opcode of hw.isa needs its collective here"

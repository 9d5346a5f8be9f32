"""`HostImages`: the memory half of the device protocol for clusters that run a whole job at
once (the `rtl` simulation, the `board` cards). The host keeps each device's HBM image; the
job descriptor is written into it, it goes to the devices when a run starts and comes back
from them when the run ends, as a driver copies buffers to and from a card."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.intmath import round_up
from hw.isa import Instr

__all__ = ["HostImages"]

_PAGE = 4096


class HostImages:
    config: AccelConfig
    devices: list[Any]
    images: list[HbmImage]

    def _load(self, programs: list[list[Instr]], images: list[HbmImage] | None,
              device: Callable[[int, list[Instr]], Any]) -> None:
        """One `device(index, program)` per device and a copy of each image (empty ones when
        `images` is None)."""
        n = self.config.devices
        if len(programs) < n:
            raise ValueError(f"{n} devices need {n} programs, not {len(programs)}")
        self.devices = [device(d, programs[d]) for d in range(n)]
        self.images = [images[d].copy() if images is not None else HbmImage(self.config)
                       for d in range(n)]

    def write_i32(self, device: int, offset: int, values) -> None:
        self.images[device].write_i32(offset, values)

    def read_i32(self, device: int, offset: int, n: int) -> np.ndarray:
        return self.images[device].read_i32(offset, n)

    def image(self, device: int) -> HbmImage:
        return self.images[device]

    def program_offset(self, device: int) -> int:
        """Where the program lies in port 0's buffer: the first page above the image (the
        kernel's `program` argument points there)."""
        used = self.images[device].used_bytes(0)
        return round_up(max(used, self.config.scalar_area_bytes), _PAGE)

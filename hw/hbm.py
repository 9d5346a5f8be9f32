"""`HbmImage`: one device's HBM contents, per pseudo-channel, with the striped accessors of
`hw.layout`. The compiler writes images, the simulators read and write them, and the host
driver copies them to the card's banks.

Channels are grown on demand, so an image of a small model under a large config stays small.
Reads past the written end of a channel return zeros, as fresh device memory does after the
runtime clears it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import AccelConfig
from .intmath import ceil_div
from .layout import row_location

__all__ = ["HbmImage"]


class HbmImage:
    def __init__(self, config: AccelConfig) -> None:
        self.config = config
        self.ports = config.hbm_ports
        self.beat = config.beat_bytes
        self.width = config.lane_width
        self.channels = [np.zeros(0, np.uint8) for _ in range(self.ports)]

    # -- raw bytes ---------------------------------------------------------------------------

    def _ensure(self, channel: int, end: int) -> np.ndarray:
        if end > self.config.hbm_channel_bytes:
            raise ValueError(f"HBM access up to byte {end} of channel {channel} exceeds the "
                             f"channel's {self.config.hbm_channel_bytes} bytes")
        data = self.channels[channel]
        if len(data) < end:
            grown = np.zeros(max(end, 2 * len(data)), np.uint8)
            grown[: len(data)] = data
            self.channels[channel] = data = grown
        return data

    def write_bytes(self, channel: int, offset: int, data) -> None:
        data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) \
            else data.view(np.uint8).reshape(-1)
        self._ensure(channel, offset + len(data))[offset : offset + len(data)] = data

    def read_bytes(self, channel: int, offset: int, n: int) -> np.ndarray:
        data = self.channels[channel]
        out = np.zeros(n, np.uint8)
        avail = max(0, min(n, len(data) - offset))
        if avail:
            out[:avail] = data[offset : offset + avail]
        return out

    def used_bytes(self, channel: int) -> int:
        nz = np.flatnonzero(self.channels[channel])
        return int(nz[-1]) + 1 if len(nz) else 0

    # -- scalars in channel 0 ----------------------------------------------------------------

    def write_i32(self, offset: int, values) -> None:
        self.write_bytes(0, offset, np.asarray(values, dtype="<i4").reshape(-1))

    def read_i32(self, offset: int, n: int = 1) -> np.ndarray:
        return self.read_bytes(0, offset, 4 * n).view("<i4").copy()

    # -- striped matrices and vectors --------------------------------------------------------

    def write_matrix(self, base: int, ldb: int, rows16: np.ndarray) -> None:
        """Store FP16 rows (R, cols <= ldb * lane_width), zero-padded to whole beats."""
        rows16 = np.asarray(rows16, np.float16)
        n_rows, cols = rows16.shape
        if cols > ldb * self.width:
            raise ValueError(f"{cols} columns do not fit {ldb} beats of {self.width}")
        padded = np.zeros((n_rows, ldb * self.width), np.float16)
        padded[:, :cols] = rows16
        for c in range(min(self.ports, n_rows)):
            block = padded[c :: self.ports]
            self.write_bytes(c, base, block.reshape(-1))

    def read_matrix(self, base: int, ldb: int, rows: int, cols: int, first_row: int = 0):
        """FP16 rows [first_row, first_row + rows) of a striped matrix, `cols` columns each."""
        out = np.zeros((rows, ldb * self.width), np.float16)
        row_bytes = ldb * self.beat
        for r in range(first_row, min(first_row + self.ports, first_row + rows)):
            channel, offset = row_location(base, r, ldb, self.ports, self.beat)
            count = len(range(r, first_row + rows, self.ports))
            raw = self.read_bytes(channel, offset, count * row_bytes)
            out[r - first_row :: self.ports] = raw.view(np.float16).reshape(count, -1)
        return out[:, :cols]

    def write_row(self, base: int, ldb: int, row: int, values16: np.ndarray) -> None:
        values16 = np.asarray(values16, np.float16).reshape(-1)
        channel, offset = row_location(base, row, ldb, self.ports, self.beat)
        self.write_bytes(channel, offset, values16)

    def write_column(self, base: int, ldb: int, col: int, values16: np.ndarray) -> None:
        """Element i of `values16` into (row i, column col) of a striped matrix."""
        values16 = np.asarray(values16, np.float16).reshape(-1)
        for r, v in enumerate(values16):
            channel, offset = row_location(base, r, ldb, self.ports, self.beat)
            self.write_bytes(channel, offset + 2 * col, np.asarray([v], np.float16))

    def write_vector(self, base: int, values16: np.ndarray) -> None:
        values16 = np.asarray(values16, np.float16).reshape(-1)
        beats = ceil_div(len(values16), self.width)
        self.write_matrix(base, 1, np.pad(values16, (0, beats * self.width - len(values16)))
                          .reshape(beats, self.width))

    def read_vector(self, base: int, length: int) -> np.ndarray:
        beats = ceil_div(length, self.width)
        return self.read_matrix(base, 1, beats, self.width).reshape(-1)[:length]

    # -- files -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> list[Path]:
        """One raw file per non-empty channel: `hbm<k>.bin` (bank k's image)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for k in range(self.ports):
            n = self.used_bytes(k)
            if n:
                path = directory / f"hbm{k:02d}.bin"
                path.write_bytes(self.channels[k][:n].tobytes())
                written.append(path)
        return written

    @classmethod
    def load(cls, config: AccelConfig, directory: str | Path) -> HbmImage:
        image = cls(config)
        for k in range(image.ports):
            path = Path(directory) / f"hbm{k:02d}.bin"
            if path.is_file():
                image.write_bytes(k, 0, path.read_bytes())
        return image

    def copy(self) -> HbmImage:
        other = HbmImage(self.config)
        other.channels = [c.copy() for c in self.channels]
        return other

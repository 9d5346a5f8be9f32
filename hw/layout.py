"""Where data lives in HBM: the striped layouts shared by the compiler, the simulators and the
RTL address generators.

A device has P pseudo-channels (ports). Large data is striped over all of them so that every
port streams long sequential bursts at once:

- a **matrix** of R rows x B beats (a beat is one port word: `lane_width` FP16 values) puts row
  r in channel r mod P, at byte offset `base + (r // P) * B * beat_bytes` of that channel; the
  rows a lane reads are contiguous in its channel;
- a **vector** of E values is a matrix of ceil(E / lane_width) one-beat rows: beat k sits in
  channel k mod P at `base + (k // P) * beat_bytes`.

`base` is the same offset in every channel. Scalars (the job descriptor, the prompt and the
output tokens) live in channel 0's scalar area, below every striped allocation.
"""

from __future__ import annotations

import numpy as np

from .intmath import ceil_div

__all__ = [
    "DESC",
    "matrix_bytes_per_channel",
    "matrix_rows_per_channel",
    "row_location",
    "vector_bytes_per_channel",
]


def matrix_rows_per_channel(rows: int, ports: int) -> int:
    return ceil_div(rows, ports)


def matrix_bytes_per_channel(rows: int, ldb: int, ports: int, beat_bytes: int) -> int:
    """Bytes a rows x ldb-beat matrix occupies in each channel."""
    return matrix_rows_per_channel(rows, ports) * ldb * beat_bytes


def vector_bytes_per_channel(length: int, lane_width: int, ports: int, beat_bytes: int) -> int:
    return matrix_bytes_per_channel(ceil_div(length, lane_width), 1, ports, beat_bytes)


def row_location(base: int, row: int | np.ndarray, ldb: int, ports: int, beat_bytes: int):
    """(channel, byte offset) of the first beat of `row`."""
    return row % ports, base + (row // ports) * ldb * beat_bytes


class DESC:
    """Byte offsets of the job descriptor in channel 0's scalar area (32-bit words).

    The host writes N_PROMPT, POS0, MAX_NEW and the prompt, starts the kernel and, once it is
    done, reads N_OUT and the output tokens. POS0 > 0 means the KV cache already holds positions
    0..POS0-1 (written by the host's prefill); the device processes the rest of the prompt.
    """

    MAGIC = 0x00  # written by the compiler: identifies the program's descriptor version
    N_PROMPT = 0x04  # prompt tokens
    POS0 = 0x08  # positions already in the KV cache
    MAX_NEW = 0x0C  # tokens to generate
    N_OUT = 0x10  # tokens generated so far (written by the device)
    PROMPT = 0x40  # int32 prompt tokens

    @staticmethod
    def out_tokens(n_positions: int) -> int:
        """Offset of the int32 output tokens, after room for a full-context prompt."""
        return DESC.PROMPT + 4 * n_positions

    @staticmethod
    def size(n_positions: int) -> int:
        return DESC.out_tokens(n_positions) + 4 * n_positions

    MAGIC_VALUE = 0x54414E31  # "TAN1"

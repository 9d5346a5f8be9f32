"""Integer rounding used wherever sizes are padded to beats, lanes or pages.

One place for the two idioms, so that no module spells ``-(-x // m)`` by hand.
"""

from __future__ import annotations


def ceil_div(x: int, m: int) -> int:
    """The number of ``m``-sized pieces that hold ``x`` (x >= 0, m > 0)."""
    return -(-x // m)


def round_up(x: int, m: int) -> int:
    """``x`` rounded up to a multiple of ``m``."""
    return ceil_div(x, m) * m

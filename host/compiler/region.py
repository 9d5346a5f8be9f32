"""`Region`: one named allocation of the compiler's layouts, in the vector buffer or in HBM.

Its own module because both the dense plan (`plan`) and the expert plan (`moe`) allocate
regions, and `plan` imports `moe`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Region"]


@dataclass
class Region:
    """A named allocation: VBUF words, or bytes per HBM channel at the same offset in each."""

    offset: int
    size: int

"""cocotb bus models for Amaranth `stream` ports (`<name>__payload`, `__valid`, `__ready`),
built on cocotbext-axi's generic stream source and sink, so testbenches get the same random
valid gaps and ready back-pressure (`set_pause_generator`) as on the AXI channels."""

from __future__ import annotations

import random
from collections.abc import Iterator

from cocotbext.axi.stream import define_stream

__all__ = ["PayloadBus", "PayloadSink", "PayloadSource", "PayloadTransaction", "pauses"]

PayloadBus, PayloadTransaction, PayloadSource, PayloadSink, _ = define_stream(
    "Payload", signals=["payload", "valid", "ready"])


def pauses(rng: random.Random, rate: float) -> Iterator[bool]:
    """An endless pause pattern: each cycle paused with probability `rate`."""
    while True:
        yield rng.random() < rate

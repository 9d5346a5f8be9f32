# amaranth: UnusedElaboratable=no
# (constructors that raise leave half-built components behind; they are meant to be unused)
"""Parameters of the `rtl.arith` units: checked at construction, with messages that say what
to fix; and the latencies and loop depth the core and the timing model rely on."""

from __future__ import annotations

import pytest

from rtl import arith


@pytest.mark.parametrize("cls", [arith.AdderTree, arith.SumLane, arith.DotLane, arith.MaxLane])
@pytest.mark.parametrize("width", [0, 3, 6, 24])
def test_vector_units_need_a_power_of_two_width(cls, width):
    with pytest.raises(ValueError, match=rf"^width must be a power of two, not {width}$"):
        cls(width)


@pytest.mark.parametrize("cls", [arith.AdderTree, arith.DotLane])
def test_width_must_be_an_integer(cls):
    with pytest.raises(TypeError, match=r"^width must be an integer, not float$"):
        cls(8.0)


def test_latencies_follow_the_pipeline_stages():
    assert arith.Fp32Adder().latency == arith.ADD_LATENCY == 4
    assert arith.AdderTree(16).latency == 4 * arith.ADD_LATENCY
    assert arith.AdderTree(1).latency == 1
    assert arith.DotLane(16).front_latency == arith.MUL16_LATENCY + 4 * arith.ADD_LATENCY
    # The accumulator loop holds one partial sum per adder stage.
    assert arith.DotLane(8).rows_in_flight == arith.SumLane(8).rows_in_flight == 4

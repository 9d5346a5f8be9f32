"""The padding helpers against exact rational arithmetic."""

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from hw.intmath import ceil_div, round_up


@given(st.integers(0, 10**12), st.integers(1, 10**6))
def test_ceil_div_and_round_up_match_exact_ceiling(x, m):
    assert ceil_div(x, m) == math.ceil(Fraction(x, m))
    assert round_up(x, m) % m == 0
    assert x <= round_up(x, m) < x + m

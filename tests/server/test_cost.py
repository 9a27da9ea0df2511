"""The fair-share cost model: hand-worked cases and the invariant that costs add up to rate x busy time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmforge_server.cost import FairShareMeter, fair_share_costs

RATE = 3600.0  # USD/h, i.e. 1 USD per second: costs read as seconds of a whole replica


def test_single_request_pays_the_whole_rate():
    assert fair_share_costs([(10.0, 12.5)], RATE) == [pytest.approx(2.5)]


def test_overlap_is_shared():
    # A alone 0-1 (1.0), A+B 1-3 (1.0 each), B alone 3-4 (1.0): A = 2.0, B = 2.0
    assert fair_share_costs([(0, 3), (1, 4)], RATE) == [pytest.approx(2.0), pytest.approx(2.0)]


def test_three_way_sharing():
    # 0-1: A alone (A 1); 1-2: A,B (0.5 each); 2-5: A,B,C (1 each); 5-6: C alone (C 1)
    costs = fair_share_costs([(0, 5), (1, 5), (2, 6)], RATE)
    assert costs == [pytest.approx(2.5), pytest.approx(1.5), pytest.approx(2.0)]


def test_idle_time_is_not_charged():
    costs = fair_share_costs([(0, 1), (100, 101)], RATE)
    assert costs == [pytest.approx(1.0), pytest.approx(1.0)]


def test_real_rate_units():
    # an L4 machine at 0.854 USD/h, one request for 36 s -> 0.854/100
    assert fair_share_costs([(0, 36)], 0.854) == [pytest.approx(0.00854)]


def test_zero_rate_costs_nothing_and_negative_rate_is_refused():
    assert fair_share_costs([(0, 5), (1, 2)], 0.0) == [0.0, 0.0]
    with pytest.raises(ValueError):
        FairShareMeter(-1.0)


def test_meter_tracks_busy_time_and_in_flight():
    m = FairShareMeter(RATE, now=0.0)
    m.start("a", 1.0)
    m.start("b", 2.0)
    assert m.in_flight == 2
    assert m.finish("a", 4.0) == pytest.approx(1.0 + 1.0)  # 1 s alone, 2 s shared
    assert m.finish("b", 5.0) == pytest.approx(1.0 + 1.0)
    assert m.in_flight == 0
    assert m.busy_seconds == pytest.approx(4.0)
    with pytest.raises(KeyError):
        m.finish("a", 6.0)


def _union_length(intervals):
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


intervals_st = st.lists(
    st.tuples(st.integers(0, 1000), st.integers(1, 200)).map(lambda t: (t[0] / 10, (t[0] + t[1]) / 10)),
    min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(intervals_st, st.sampled_from([0.5, 0.854, 3600.0, 29.387]))
def test_costs_sum_to_rate_times_busy_time(intervals, rate):
    costs = fair_share_costs(intervals, rate)
    assert sum(costs) == pytest.approx(rate / 3600 * _union_length(intervals), rel=1e-9, abs=1e-12)
    for (s, e), c in zip(intervals, costs, strict=True):
        overlap_max = sum(1 for s2, e2 in intervals if s2 < e and e2 > s)
        # never more than running alone, never less than sharing with everyone that overlaps it
        assert c <= rate / 3600 * (e - s) * (1 + 1e-9)
        assert c >= rate / 3600 * (e - s) / overlap_max * (1 - 1e-9)

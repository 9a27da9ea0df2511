"""The canary promotion state machine: examples for each rule, then Hypothesis over random histories."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmforge.promotion import Gate, Policy, Sample, State, breach, decide, parse_interval, revision, start

POLICY = Policy(steps=(10, 50, 100), interval_s=600, max_error_rate=0.01, max_p95_ms=2000, min_requests=20)
OK = Sample(requests=100, errors=0, p95_ms=500)
PASSED, NOT_PASSED = Gate(True, "Passed"), Gate(False, "Evaluation e is Running")


def step(state, *, gate=PASSED, sample=OK, now, rev="r1", initial=10, policy=POLICY):
    return decide(state, rev=rev, initial_weight=initial, policy=policy, gate=gate, sample=sample, now=now)


def test_parse_interval():
    assert parse_interval("30s") == 30 and parse_interval("10m") == 600 and parse_interval("2h") == 7200
    with pytest.raises(ValueError):
        parse_interval("10")


def test_revision_changes_with_the_canary():
    assert revision({"weight": 10}) == revision({"weight": 10}) != revision({"weight": 20})


def test_start_at_spec_weight_counts_reached_steps():
    assert start("r", 10, POLICY, 0) == State("r", 0, 10, 0)
    assert start("r", 0, POLICY, 0) == State("r", -1, 0, 0)
    assert start("r", 60, POLICY, 0) == State("r", 1, 60, 0)
    assert start("r", 100, POLICY, 0) == State("r", 1, 100, 0)  # promotion still needs a gated step


def test_full_happy_path_steps_then_promotes():
    d = step(None, now=0)
    assert d.action == "Started" and d.state.weight == 10 and d.state.step == 0
    d = step(d.state, now=599)
    assert d.action == "Hold" and d.state.weight == 10
    d = step(d.state, now=600)
    assert d.action == "Advanced" and d.state.weight == 50 and d.previous_weight == 10
    assert "error rate 0.0000" in d.reason and "p95 500 ms" in d.reason
    d = step(d.state, now=1000)
    assert d.action == "Hold"
    d = step(d.state, now=1200)
    assert d.action == "Promoted" and d.state.weight == 100 and d.state.phase == "Promoted"
    assert step(d.state, now=99999).action == "Done"


def test_blocked_while_evaluation_not_passed():
    s = step(None, now=0).state
    d = step(s, gate=NOT_PASSED, now=10_000)
    assert d.action == "Blocked" and d.state == s and "Running" in d.reason
    assert step(s, now=10_000).action == "Advanced"


def test_waits_for_enough_requests():
    s = step(None, now=0).state
    d = step(s, sample=Sample(5, 0, 100), now=600)
    assert d.action == "Waiting" and d.state.weight == 10 and "5 of 20" in d.reason


def test_breach_rolls_back_at_once_with_numbers():
    s = step(None, now=0).state
    d = step(s, sample=Sample(100, 5, 300), now=1)
    assert d.action == "RolledBack" and d.state.weight == 0 and d.state.phase == "RolledBack"
    assert "0.0500" in d.reason and "5/100" in d.reason
    d = step(s, sample=Sample(100, 0, 2500), now=1)
    assert d.action == "RolledBack" and "2500 ms" in d.reason
    assert step(d.state, now=10**6).action == "Done"


def test_too_few_requests_cannot_breach():
    assert breach(Sample(10, 10, 99999), POLICY) is None
    assert breach(Sample(20, 1, 100), POLICY) is not None


def test_new_canary_revision_starts_over():
    rolled = step(step(None, now=0).state, sample=Sample(100, 50, 1), now=1).state
    d = step(rolled, rev="r2", now=2)
    assert d.action == "Started" and d.state.weight == 10 and d.state.phase == "Progressing"


def test_last_step_below_100_holds_as_static_split():
    policy = Policy((10, 50), 60, 0.01, 2000, 0)
    s = step(None, now=0, policy=policy).state
    s = step(s, now=60, policy=policy).state
    assert s.weight == 50
    d = step(s, now=10**6, policy=policy)
    assert d.action == "Hold" and d.state.weight == 50


def test_from_zero_weight_needs_no_requests():
    s = step(None, now=0, initial=0).state
    d = step(s, sample=Sample(0, 0, None), now=600, initial=0)
    assert d.action == "Advanced" and d.state.weight == 10


# -- properties -------------------------------------------------------------------------------------------

steps_st = st.lists(st.integers(1, 100), min_size=1, max_size=6, unique=True).map(lambda xs: tuple(sorted(xs)))
policy_st = st.builds(Policy, steps=steps_st, interval_s=st.sampled_from([0.0, 1.0, 30.0, 600.0]),
                      max_error_rate=st.sampled_from([0.0, 0.01, 0.5]), max_p95_ms=st.sampled_from([100.0, 2000.0]),
                      min_requests=st.sampled_from([0, 1, 20]))
tick_st = st.tuples(
    st.floats(0, 1000, allow_nan=False),             # time advance
    st.booleans(),                                   # gate passed
    st.integers(0, 200),                             # requests
    st.integers(0, 200),                             # errors (clipped to requests)
    st.one_of(st.none(), st.floats(0, 5000, allow_nan=False)),  # p95
    st.booleans(),                                   # new revision this tick
)


@settings(max_examples=400, deadline=None)
@given(policy=policy_st, initial=st.integers(0, 100), ticks=st.lists(tick_st, max_size=40))
def test_invariants_over_random_histories(policy, initial, ticks):
    now, rev, state = 0.0, 0, None
    allowed = {0, initial, 100, *policy.steps}
    for dt, passed, requests, errors, p95, new_rev in ticks:
        now += dt
        if new_rev:
            rev += 1
        sample = Sample(requests, min(errors, requests), p95)
        d = decide(state, rev=f"r{rev}", initial_weight=initial, policy=policy, gate=Gate(passed), sample=sample,
                   now=now)
        new = d.state
        assert 0 <= new.weight <= 100
        assert new.weight in allowed
        assert new.revision == f"r{rev}"
        if d.action == "Started":
            assert new.weight == initial and new.phase == "Progressing"
        elif state is not None and state.phase != "Progressing":
            assert d.action == "Done" and new == state, "Promoted and RolledBack are final for a revision"
        elif d.action in ("Advanced", "Promoted"):
            assert passed, "never advance without a Passed Evaluation"
            assert now - state.step_started_at >= policy.interval_s, "every step is held for the interval"
            assert breach(sample, policy) is None
            assert state.weight == 0 or requests >= policy.min_requests
            assert new.step == state.step + 1
            assert new.weight > state.weight or new.weight == state.weight == 100
            assert (d.action == "Promoted") == (new.weight == 100)
        elif d.action == "RolledBack":
            assert new.weight == 0 and new.phase == "RolledBack"
            assert breach(sample, policy) is not None
        else:
            assert new == state, f"{d.action} must not change the state"
        if d.action != "RolledBack" and state is not None and state.revision == new.revision:
            assert new.weight >= state.weight, "weight only drops by a rollback"
        if new.phase == "Promoted":
            assert new.weight == 100
        state = new


@settings(max_examples=200, deadline=None)
@given(policy=policy_st, initial=st.integers(0, 99), n=st.integers(1, 30))
def test_never_passes_means_never_above_initial(policy, initial, n):
    state, now = None, 0.0
    for _ in range(n):
        now += policy.interval_s + 1
        state = step(state, gate=NOT_PASSED, sample=Sample(1000, 0, 1), now=now, initial=initial,
                     policy=policy).state
        assert state.weight == initial and state.phase == "Progressing"


@settings(max_examples=200, deadline=None)
@given(policy=policy_st, initial=st.integers(0, 100))
def test_good_canary_with_passed_eval_reaches_the_last_step(policy, initial):
    state, now = None, 0.0
    for _ in range(len(policy.steps) + 2):
        state = step(state, sample=Sample(1000, 0, 1), now=now, initial=initial, policy=policy).state
        now += policy.interval_s
    assert state.weight == max(initial, policy.steps[-1])
    assert (state.phase == "Promoted") == (policy.steps[-1] == 100)

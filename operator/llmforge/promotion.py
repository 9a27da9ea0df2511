"""Progressive canary promotion as a pure state machine: (state, facts, now) -> decision.

The canary starts at `spec.canary.weight`, then steps through `promotion.steps`, each held for
`interval`. It advances only when the hold time is over, the referenced Evaluation is Passed, and live
analysis has enough requests to judge and holds (error rate and p95 latency within bounds). A breach
rolls the canary back to weight 0 at once, hold time or not. Reaching weight 100 promotes it. Promoted
and RolledBack are final for that canary; a changed `spec.canary` (a new revision) starts over.

The state is small and lives in the ModelDeployment's status (canaryRevision, promotionStep,
stepStartedAt, canaryWeight, promotionPhase), so an operator restart continues where it was.
No I/O and no clock: `now` is an argument, which is what makes this exhaustively testable.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

Phase = Literal["Progressing", "Promoted", "RolledBack"]
Action = Literal["Started", "Hold", "Blocked", "Waiting", "Advanced", "Promoted", "RolledBack", "Done"]
#: Actions that change the weight or the phase (worth an event and a history entry).
TRANSITIONS = frozenset({"Started", "Advanced", "Promoted", "RolledBack"})

_DURATION = re.compile(r"^([0-9]+)(s|m|h)$")


def parse_interval(text: str) -> float:
    """'30s' / '10m' / '1h' -> seconds (the CRD pattern guarantees the form)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"interval {text!r}: expected a number and s, m or h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def revision(canary: dict[str, Any]) -> str:
    """Identity of a canary spec: the promotion state belongs to exactly one."""
    return hashlib.sha256(json.dumps(canary, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class State:
    revision: str
    step: int
    """Index into steps of the current weight; -1 while below the first step."""
    weight: int
    step_started_at: float
    """Epoch seconds when the current weight took effect."""
    phase: Phase = "Progressing"


@dataclass(frozen=True)
class Gate:
    """May the canary take more traffic: the Evaluation is Passed (and the canary serves); else why not."""

    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class Sample:
    """The canary's live numbers (cumulative over its pods)."""

    requests: float = 0.0
    errors: float = 0.0
    p95_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Policy:
    steps: tuple[int, ...]
    interval_s: float
    max_error_rate: float
    max_p95_ms: float
    min_requests: int


@dataclass(frozen=True)
class Decision:
    state: State
    action: Action
    reason: str
    previous_weight: int | None = None

    @property
    def transition(self) -> bool:
        return self.action in TRANSITIONS


def start(rev: str, initial_weight: int, policy: Policy, now: float) -> State:
    """At the spec's weight; the step is the highest one already reached by that weight. Step 100 is never
    reached by the start: promotion always takes a gated advance."""
    step = max((i for i, w in enumerate(policy.steps) if w <= initial_weight and w < 100), default=-1)
    return State(rev, step, initial_weight, now)


def breach(sample: Sample, policy: Policy) -> str | None:
    """Why the live analysis fails, with numbers, or None. Judged only with enough requests."""
    if sample.requests <= 0 or sample.requests < policy.min_requests:
        return None
    rate = sample.error_rate or 0.0
    if rate > policy.max_error_rate:
        return (f"error rate {rate:.4f} ({sample.errors:g}/{sample.requests:g} requests) > "
                f"maxErrorRate {policy.max_error_rate:g}")
    if sample.p95_ms is not None and sample.p95_ms > policy.max_p95_ms:
        return f"p95 latency {sample.p95_ms:.0f} ms > maxP95LatencyMs {policy.max_p95_ms:g} ({sample.requests:g} requests)"
    return None


def decide(state: State | None, *, rev: str, initial_weight: int, policy: Policy, gate: Gate, sample: Sample,
           now: float) -> Decision:
    """One evaluation of the promotion; call it on every analysis tick."""
    if state is None or state.revision != rev:
        new = start(rev, initial_weight, policy, now)
        return Decision(new, "Started", f"canary at {new.weight}%, steps {list(policy.steps)}",
                        None if state is None else state.weight)
    if state.phase != "Progressing":
        return Decision(state, "Done", f"canary {state.phase}")
    # Judged at any weight: at 0% header-pinned requests still reach the canary, and bad numbers there
    # must not be advanced on.
    why = breach(sample, policy)
    if why:
        return Decision(replace(state, weight=0, phase="RolledBack", step_started_at=now), "RolledBack", why,
                        state.weight)
    held = now - state.step_started_at
    if held < policy.interval_s or math.isnan(held):
        return Decision(state, "Hold", f"{held:.0f}s of {policy.interval_s:.0f}s at {state.weight}%")
    if state.step + 1 >= len(policy.steps):
        return Decision(state, "Hold", f"last step reached at {state.weight}%")
    if not gate.passed:
        return Decision(state, "Blocked", gate.reason or "Evaluation not Passed")
    if state.weight > 0 and sample.requests < policy.min_requests:
        return Decision(state, "Waiting",
                        f"{sample.requests:g} of {policy.min_requests} requests needed to judge {state.weight}%")
    nxt = state.step + 1
    weight = policy.steps[nxt]
    rate = sample.error_rate
    numbers = (f"error rate {rate:.4f}" if rate is not None else "no requests") + (
        f", p95 {sample.p95_ms:.0f} ms" if sample.p95_ms is not None else "")
    if weight >= 100:
        return Decision(State(rev, nxt, 100, now, "Promoted"), "Promoted",
                        f"Evaluation Passed; {numbers}; canary promoted to stable", state.weight)
    return Decision(State(rev, nxt, weight, now), "Advanced", f"Evaluation Passed; {numbers}", state.weight)

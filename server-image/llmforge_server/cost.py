"""Fair-share cost model: what one request cost on a replica billed at a fixed USD/hour.

While ``n`` requests are in flight, each accrues ``rate / 3600 / n`` USD per second. Summed over
requests this equals ``rate x busy time`` (time with at least one request in flight), so per-request
costs add up to what the replica cost while it was working; idle time is not charged to any request.
(The operator reports the replica's full cost, idle included, in ``status.cost``.)

Implementation: a virtual clock ``share(t) = integral of rate/3600/n(t) dt`` over busy time. A request's
cost is ``share(finish) - share(start)``, so each start/finish is O(1) however many are in flight.
Pure: the caller passes the time, which makes it exact to test.
"""

from __future__ import annotations

from collections.abc import Iterable


class FairShareMeter:
    """Per-request cost under fair sharing of a replica's rate. Not thread-safe (one event loop)."""

    def __init__(self, usd_per_hour: float, now: float = 0.0):
        if usd_per_hour < 0:
            raise ValueError("usd_per_hour must be >= 0")
        self.usd_per_second = usd_per_hour / 3600.0
        self.in_flight = 0
        self.busy_seconds = 0.0
        self._share = 0.0  # USD accrued by one request in flight since the meter started
        self._last = now
        self._started: dict[object, float] = {}

    def _advance(self, now: float) -> None:
        dt = max(0.0, now - self._last)
        if self.in_flight:
            self._share += self.usd_per_second * dt / self.in_flight
            self.busy_seconds += dt
        self._last = max(self._last, now)

    def start(self, key: object, now: float) -> None:
        """A request began at ``now``."""
        if key in self._started:
            raise KeyError(f"request {key!r} already started")
        self._advance(now)
        self._started[key] = self._share
        self.in_flight += 1

    def finish(self, key: object, now: float) -> float:
        """A request ended at ``now`` (success, error or disconnect alike); returns its cost in USD."""
        self._advance(now)
        start_share = self._started.pop(key)
        self.in_flight -= 1
        return self._share - start_share


def fair_share_costs(intervals: Iterable[tuple[float, float]], usd_per_hour: float) -> list[float]:
    """Cost of each ``(start, end)`` interval, computed by the meter (the reference for tests and docs)."""
    intervals = list(intervals)
    timed = [i for i, (s, e) in enumerate(intervals) if e > s]  # an empty interval costs nothing
    events = sorted([(intervals[i][0], 1, i) for i in timed]
                    + [(intervals[i][1], 0, i) for i in timed])  # at a tie, finishes go before starts
    meter = FairShareMeter(usd_per_hour, now=events[0][0] if events else 0.0)
    costs = [0.0] * len(intervals)
    for t, kind, i in events:
        if kind:
            meter.start(i, t)
        else:
            costs[i] = meter.finish(i, t)
    return costs

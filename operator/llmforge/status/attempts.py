"""Pods -> a ledger of attempts -> cost: shared by every kind whose work runs as Job pods (FineTuneJob, Evaluation).

A Job's pods are deleted by preemption, a node's loss or a TTL, so their billed spans are copied into
``status.attempts`` and merged with whatever pods are observed next time: the ledger only grows, and an
attempt whose pod vanished while running ends at the moment it was last missed. ``cost_status`` turns the
ledger into ``status.cost`` (every attempt's seconds x GPUs x rate / 3600). Pure: dicts and datetimes in,
camelCase dicts out; the price table is passed in by the controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..api.phases import PodPhase
from ..pricing import Interval, PriceTable, cost_usd


@dataclass(frozen=True)
class Placement:
    """The accelerator actually requested (auto resolved), for cost and the GPU column."""

    accelerator: str
    count: int
    spot: bool


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def fmt_time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z") if value else None


def container_status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    """The named container's status (the first one if that name is absent: a single-container pod)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == container), statuses[0] if statuses else {})


def _disrupted(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return cond
    return None


def _last_transition(pod: dict[str, Any]) -> str | None:
    times = [parse_time(c.get("lastTransitionTime")) for c in pod.get("status", {}).get("conditions") or []]
    times = [t for t in times if t]
    return fmt_time(max(times)) if times else None


def attempt_of(pod: dict[str, Any], container: str = "trainer") -> dict[str, Any]:
    """One pod as a status.attempts entry (camelCase), timed by its work container."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    state = container_status(pod, container).get("state") or {}
    term = state.get("terminated")
    start = (term or {}).get("startedAt") or (state.get("running") or {}).get("startedAt")
    if not start and status.get("phase") in (PodPhase.RUNNING, PodPhase.SUCCEEDED, PodPhase.FAILED):
        start = status.get("startTime")
    end = (term or {}).get("finishedAt")
    if not end and start and status.get("phase") in (PodPhase.SUCCEEDED, PodPhase.FAILED):
        end = _last_transition(pod) or meta.get("deletionTimestamp")
    if not end and start and meta.get("deletionTimestamp"):
        # deletionTimestamp is when the grace period ends; the pod was told to stop grace seconds earlier.
        deleted = parse_time(meta["deletionTimestamp"])
        grace = meta.get("deletionGracePeriodSeconds") or 0
        end = fmt_time(deleted - timedelta(seconds=grace)) if deleted else None
    out: dict[str, Any] = {"pod": meta.get("name", ""), "uid": meta.get("uid", "")}
    if pod.get("spec", {}).get("nodeName"):
        out["node"] = pod["spec"]["nodeName"]
    if start:
        out["startTime"] = fmt_time(parse_time(start))
    if end:
        out["endTime"] = fmt_time(parse_time(end))
    if term and term.get("exitCode") is not None:
        out["exitCode"] = int(term["exitCode"])
    disrupted = _disrupted(pod)
    if disrupted:
        out["reason"] = "DisruptionTarget"
    elif term:
        out["reason"] = term.get("reason") or ("Completed" if term.get("exitCode") == 0 else "Error")
    elif status.get("phase") == PodPhase.FAILED:
        out["reason"] = status.get("reason") or PodPhase.FAILED.value
    return out


def merge_attempts(previous: list[dict[str, Any]] | None, pods: list[dict[str, Any]],
                   now: datetime, container: str = "trainer") -> list[dict[str, Any]]:
    """Previous attempts updated from the pods seen now; vanished running attempts end now."""
    by_uid = {a["uid"]: dict(a) for a in previous or [] if a.get("uid")}
    order = [a["uid"] for a in previous or [] if a.get("uid")]
    seen = set()
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or ""):
        att = attempt_of(pod, container)
        seen.add(att["uid"])
        old = by_uid.get(att["uid"], {})
        merged = {**old, **{k: v for k, v in att.items() if v is not None}}
        if att["uid"] not in by_uid:
            order.append(att["uid"])
        by_uid[att["uid"]] = merged
    for uid in order:
        att = by_uid[uid]
        if uid not in seen and att.get("startTime") and not att.get("endTime"):
            att["endTime"] = fmt_time(now)
            att.setdefault("reason", "PodGone")
    return [by_uid[u] for u in order]


def intervals(attempts: list[dict[str, Any]], now: datetime) -> list[Interval]:
    """Each started attempt's billed span; one still running is billed up to now."""
    out = []
    for att in attempts:
        start = parse_time(att.get("startTime"))
        if start is None:
            continue
        end = parse_time(att.get("endTime")) or now
        out.append(Interval(start.timestamp(), end.timestamp()))
    return out


def cost_status(attempts: list[dict[str, Any]], accelerator: str, gpus: int, spot: bool, prices: PriceTable,
                now: datetime, running: bool) -> dict[str, Any]:
    """status.cost: every attempt's seconds x GPUs x rate / 3600."""
    rate = prices.rate(accelerator, spot)
    spans = intervals(attempts, now)
    usd = cost_usd(spans, gpus, rate)
    return {
        "usd": round(usd, 4), "gpuHours": round(sum(s.seconds for s in spans) * gpus / 3600, 4),
        "ratePerGpuHour": rate, "usdPerHour": round(rate * gpus, 4) if running else 0.0,
        "accelerator": accelerator, "spot": spot, "pricingSource": prices.label, "updatedAt": fmt_time(now),
    }

"""Kubernetes-style conditions, level-based: lastTransitionTime moves only when status flips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..api.phases import Phase


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(conditions: list[dict[str, Any]] | None, type_: str, status: bool | str, reason: str,
                  message: str = "", generation: int | None = None, now: str | None = None) -> list[dict[str, Any]]:
    """A new list with the condition set; other conditions keep their order."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in (conditions or [])]
    for cond in out:
        if cond.get("type") == type_:
            if cond.get("status") != value:
                cond["lastTransitionTime"] = now or now_iso()
            cond.update(status=value, reason=reason, message=message)
            if generation is not None:
                cond["observedGeneration"] = generation
            return out
    new = {"type": type_, "status": value, "reason": reason, "message": message,
           "lastTransitionTime": now or now_iso()}
    if generation is not None:
        new["observedGeneration"] = generation
    return out + [new]


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def job_failure(failed: dict[str, Any], result: Any, raw: str | None, who: str,
                attempts: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """`status.failure` of a failed Job: the pod's own result when it wrote one; else OutOfMemory when its
    last pod was OOMKilled (the kernel killed it at the memory limit, so it could write nothing, and a retry
    with the same limit fails the same way); else the Job's Failed condition with the tail of `who`'s output
    (FallbackToLogsOnError puts the log there)."""
    if result is not None and result.phase == Phase.FAILED:
        return {"reason": result.reason or "Error", "message": result.message or ""}
    ended = [a for a in attempts or [] if a.get("endTime")]
    if ended and ended[-1].get("reason") == "OOMKilled":
        oom = sum(1 for a in ended if a.get("reason") == "OOMKilled")
        return {"reason": "OutOfMemory",
                "message": f"the {who} container exceeded its memory limit and was killed (OOMKilled) in "
                           f"{oom} of {len(ended)} attempt(s); raise spec.resources.memory"}
    msg = failed.get("message") or f"the {who} Job failed"
    if raw and result is None:
        msg += f"; {who} output: {raw.strip()[-800:]}"
    return {"reason": failed.get("reason") or "JobFailed", "message": msg}

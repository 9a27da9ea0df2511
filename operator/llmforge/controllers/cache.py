"""An in-memory view of the objects we watch, fed by kopf's watch events and our own write responses.

Like controller-runtime's informer cache: a refresh reads its FineTuneJob, Job and Pods from here instead
of three API calls, which is what lets one operator keep up with a thousand jobs on two cores. Newer wins
by resourceVersion, so a stale watch event never overwrites the response of a write we just made.

The pods of one owner are trusted only for a while after an API list seeded them in this process
(`fresh`), so an operator that just restarted, whose watch has not replayed every pod yet, never mistakes
"not seen yet" for "gone" (that would end a running attempt in the cost ledger), and a DELETED event lost
across a watch restart is healed by the next list. Deleted uids are remembered so a list that raced a
deletion cannot bring a pod back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

Key = tuple[str, str]
#: Fields dropped from cached bodies: large, and nothing we compute reads them.
_DROP_META = ("managedFields",)
_DIFFBASE = "/last-handled-configuration"
_TOMBSTONES = 4096


def _rv(body: dict[str, Any]) -> int:
    raw = (body.get("metadata") or {}).get("resourceVersion") or "0"
    return int(raw) if raw.isdigit() else 0


def slim(body: Any, spec_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A plain-dict copy without managedFields or kopf's copy of the last-handled spec, and with only
    `spec_keys` of the spec when given (a pod's containers and volumes are most of its size, and unread)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    for key in _DROP_META:
        meta.pop(key, None)
    if any(k.endswith(_DIFFBASE) for k in meta.get("annotations") or {}):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if not k.endswith(_DIFFBASE)}
    out["metadata"] = meta
    if spec_keys is not None:
        spec = out.get("spec") or {}
        out["spec"] = {k: spec[k] for k in spec_keys if k in spec}
    return out


class Latest:
    """The newest body seen per key."""

    def __init__(self, spec_keys: tuple[str, ...] | None = None) -> None:
        self._items: dict[Key, dict[str, Any]] = {}
        self._spec_keys = spec_keys

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._items.get(key)

    def put(self, key: Key, body: Any) -> dict[str, Any]:
        new = slim(body, self._spec_keys)
        old = self._items.get(key)
        if old is None or _rv(new) >= _rv(old):
            self._items[key] = new
            return new
        return old

    def drop(self, key: Key) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class Children:
    """Pods (or any children) per owner key, by uid."""

    def __init__(self, spec_keys: tuple[str, ...] | None = None) -> None:
        self._by_owner: dict[Key, dict[str, dict[str, Any]]] = {}
        self._spec_keys = spec_keys
        self._seeded: dict[Key, float] = {}
        self._deleted: dict[str, None] = {}

    def fresh(self, key: Key, ttl: float) -> bool:
        """Seeded by a list less than ttl seconds ago."""
        return time.monotonic() - self._seeded.get(key, float("-inf")) < ttl

    def items(self, key: Key) -> list[dict[str, Any]]:
        return list(self._by_owner.get(key, {}).values())

    def put(self, key: Key, body: Any) -> None:
        uid = (body.get("metadata") or {}).get("uid")
        if not uid or uid in self._deleted:
            return
        group = self._by_owner.setdefault(key, {})
        old = group.get(uid)
        new = slim(body, self._spec_keys)
        if old is None or _rv(new) >= _rv(old):
            group[uid] = new

    def delete(self, key: Key, body: Any) -> None:
        uid = (body.get("metadata") or {}).get("uid")
        if not uid:
            return
        self._by_owner.get(key, {}).pop(uid, None)
        self._deleted[uid] = None
        if len(self._deleted) > _TOMBSTONES:  # bounded: a uid is never reused, old ones stop mattering
            self._deleted.pop(next(iter(self._deleted)))

    def seed(self, key: Key, listed: Iterable[dict[str, Any]], list_rv: str | None) -> list[dict[str, Any]]:
        """Merge an API list (taken at list_rv) into the view and trust it for a while; returns the pods.

        A cached pod missing from the list is gone, unless a watch event newer than the list added it.
        """
        listed = list(listed)
        for body in listed:
            self.put(key, body)
        upto = int(list_rv) if list_rv and list_rv.isdigit() else None
        present = {(b.get("metadata") or {}).get("uid") for b in listed}
        group = self._by_owner.get(key, {})
        for uid in [u for u, b in group.items() if u not in present and (upto is None or _rv(b) <= upto)]:
            del group[uid]
        self._seeded[key] = time.monotonic()
        return self.items(key)

    def vouch(self, key: Key) -> None:
        """Trust the view as it is, e.g. for a Job just created: whatever pods its watch already brought
        are its only ones (they can arrive before the create call returns; a seed of [] would drop them)."""
        self._seeded[key] = time.monotonic()

    def forget(self, key: Key) -> None:
        self._by_owner.pop(key, None)
        self._seeded.pop(key, None)

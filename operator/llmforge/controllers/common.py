"""Plumbing the reconcilers share: one lock per resource, and a kopf body as a plain dict."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from .. import GROUP, VERSION


class KeyedLocks:
    """One asyncio.Lock per (namespace, name), alive only while a task holds or awaits it.

    Weak values: a lock nobody references has nobody to exclude, so a deleted resource's lock goes with its
    last user instead of staying in a dict for the operator's lifetime.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, namespace: str, name: str) -> asyncio.Lock:
        lock = self._locks.get((namespace, name))
        if lock is None:
            lock = self._locks[(namespace, name)] = asyncio.Lock()
        return lock

    def __len__(self) -> int:
        return len(self._locks)


def plain(body: Any, kind: str) -> dict[str, Any]:
    """A kopf Body (a live view) as a dict the pure status functions can keep and compare."""
    return {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": body.get("kind", kind),
            "metadata": dict(body.get("metadata", {})), "spec": dict(body.get("spec", {})),
            "status": dict(body.get("status", {}) or {})}

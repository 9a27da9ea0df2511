"""The reconcilers' shared plumbing: the level-based phase census behind `llmforge_resources`, and
per-resource locks that exclude while used and are gone when nobody holds them."""

from __future__ import annotations

import asyncio
import gc

from prometheus_client import CollectorRegistry

from llmforge.controllers.common import KeyedLocks, plain
from llmforge.controllers.metrics import PhaseCensus


def _census() -> tuple[PhaseCensus, CollectorRegistry]:
    census, registry = PhaseCensus(), CollectorRegistry()
    registry.register(census)
    return census, registry


def _count(registry: CollectorRegistry, kind: str, phase: str) -> float | None:
    return registry.get_sample_value("llmforge_resources", {"kind": kind, "phase": phase})


def _body(phase: str | None) -> dict:
    return {"status": {"phase": phase}} if phase else {"metadata": {}}


def test_census_counts_what_the_watch_shows_after_a_restart_never_negative():
    census, registry = _census()  # a fresh process: the watch's listing shows two jobs already Running
    census.observe("FineTuneJob", "ns", "a", _body("Running"))
    census.observe("FineTuneJob", "ns", "b", _body("Running"))
    census.observe("Evaluation", "ns", "a", _body(None))
    assert _count(registry, "FineTuneJob", "Running") == 2
    assert _count(registry, "Evaluation", "New") == 1
    census.observe("FineTuneJob", "ns", "a", _body("Succeeded"))
    census.observe("FineTuneJob", "ns", "a", _body("Succeeded"))  # the same level again changes nothing
    assert _count(registry, "FineTuneJob", "Running") == 1
    assert _count(registry, "FineTuneJob", "Succeeded") == 1


def test_census_forgets_deleted_resources_and_keeps_emptied_series_at_zero():
    census, registry = _census()
    census.observe("ModelDeployment", "ns", "m", _body("Progressing"))
    census.observe("ModelDeployment", "other", "m", _body("Progressing"))
    census.observe("ModelDeployment", "ns", "m", _body("Progressing"), deleted=True)
    assert _count(registry, "ModelDeployment", "Progressing") == 1  # same name, other namespace stays
    census.observe("ModelDeployment", "other", "m", None, deleted=True)
    assert _count(registry, "ModelDeployment", "Progressing") == 0


def test_keyed_locks_exclude_per_key_and_go_when_unused():
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, tag: str) -> None:
        async with locks("ns", key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    async def main() -> None:
        await asyncio.gather(work("a", "1"), work("a", "2"), work("b", "3"))

    asyncio.run(main())
    assert order.index("1-") < order.index("2+") or order.index("2-") < order.index("1+")  # "a" never overlaps
    assert order.index("3+") < max(order.index("1-"), order.index("2-"))  # "b" ran alongside
    held = locks("ns", "y")
    assert locks("ns", "y") is held
    del held
    gc.collect()
    assert len(locks) == 0


def test_plain_copies_a_body_with_defaults():
    body = {"metadata": {"name": "x"}, "spec": {"a": 1}, "status": None}
    out = plain(body, "Evaluation")
    assert out == {"apiVersion": "llmforge.dev/v1alpha1", "kind": "Evaluation", "metadata": {"name": "x"},
                   "spec": {"a": 1}, "status": {}}
    out["spec"]["a"] = 2
    assert body["spec"]["a"] == 1

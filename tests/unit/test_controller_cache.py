"""The operator's watch cache: newest resourceVersion wins, lists heal lost deletions, tombstones hold."""

from __future__ import annotations

from llmforge.controllers.cache import Children, Latest, slim

KEY = ("ns", "job-a")


def pod(uid: str, rv: int, phase: str = "Running") -> dict:
    return {"metadata": {"uid": uid, "name": f"p-{uid}", "resourceVersion": str(rv),
                         "managedFields": [{"manager": "kubelet"}]},
            "status": {"phase": phase}}


def test_latest_keeps_the_newest_resource_version():
    cache = Latest()
    cache.put(KEY, pod("a", 10, "Running"))
    stale = cache.put(KEY, pod("a", 7, "Pending"))  # a watch event older than our write's response
    assert stale["status"]["phase"] == "Running"
    cache.put(KEY, pod("a", 12, "Succeeded"))
    assert cache.get(KEY)["status"]["phase"] == "Succeeded"
    cache.drop(KEY)
    assert cache.get(KEY) is None


def test_slim_drops_managed_fields_without_touching_the_source():
    src = pod("a", 1)
    out = slim(src)
    assert "managedFields" not in out["metadata"]
    assert "managedFields" in src["metadata"]


def test_children_are_untrusted_until_seeded_and_then_for_ttl_only(monkeypatch):
    kids = Children()
    kids.put(KEY, pod("a", 5))
    assert not kids.fresh(KEY, ttl=60)
    kids.seed(KEY, [pod("a", 5)], "6")
    assert kids.fresh(KEY, ttl=60)
    import llmforge.controllers.cache as mod

    now = mod.time.monotonic()
    monkeypatch.setattr(mod.time, "monotonic", lambda: now + 61)
    assert not kids.fresh(KEY, ttl=60)


def test_seed_removes_pods_the_list_no_longer_shows_but_keeps_newer_watch_additions():
    kids = Children()
    kids.put(KEY, pod("gone", 3))      # deleted while the watch was down: no DELETED event ever came
    kids.put(KEY, pod("new", 20))      # created after the list was taken: the list cannot show it yet
    merged = kids.seed(KEY, [pod("kept", 8)], "10")
    assert sorted(p["metadata"]["uid"] for p in merged) == ["kept", "new"]


def test_a_deleted_pod_is_not_brought_back_by_a_list_that_raced_the_deletion():
    kids = Children()
    kids.put(KEY, pod("a", 5))
    kids.delete(KEY, pod("a", 9))
    kids.seed(KEY, [pod("a", 5)], "8")
    assert kids.items(KEY) == []
    kids.put(KEY, pod("a", 11))        # nor by a late watch event
    assert kids.items(KEY) == []


def test_vouching_for_a_new_jobs_view_keeps_pods_its_watch_already_brought():
    # The Job controller's pod (and the scheduler's Unschedulable verdict on it) can arrive by watch before
    # the operator's create call returns; trusting the view must not drop it (it would stay unseen until
    # the next list, a minute later).
    kids = Children()
    kids.put(KEY, pod("early", 4, "Pending"))
    kids.vouch(KEY)
    assert kids.fresh(KEY, ttl=60)
    assert [p["metadata"]["uid"] for p in kids.items(KEY)] == ["early"]


def test_forget_drops_pods_and_trust():
    kids = Children()
    kids.seed(KEY, [pod("a", 1)], "1")
    kids.forget(KEY)
    assert kids.items(KEY) == [] and not kids.fresh(KEY, ttl=60)


def test_slim_keeps_only_the_spec_fields_asked_for_and_drops_kopfs_spec_copy():
    body = {"metadata": {"uid": "u", "annotations": {"llmforge.dev/last-handled-configuration": "{...}",
                                                     "team": "ml"}},
            "spec": {"nodeName": "gke-l4-0", "containers": [{"name": "trainer"}], "volumes": []}}
    out = slim(body, ("nodeName",))
    assert out["spec"] == {"nodeName": "gke-l4-0"}
    assert out["metadata"]["annotations"] == {"team": "ml"}
    assert slim(body)["spec"] == body["spec"]

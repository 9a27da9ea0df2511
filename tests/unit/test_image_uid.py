"""One non-root UID everywhere (issue #4): each image's final USER, the user its Dockerfile creates, the pod
securityContext the operator's builders set, and the chart's operator podSecurityContext must all agree.

A mismatch is not cosmetic: a pod running as a UID the image did not create has no home directory and no
write access to the directories the image chowns, so caches and weight downloads fail at run time.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from llmforge.builders.common import RUN_AS_USER, container_security_context, pod_security_context

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / d / "Dockerfile" for d in ("operator", "trainer-image", "server-image")]


def final_user(dockerfile: Path) -> tuple[int, int | None]:
    """(uid, gid or None) of the last USER instruction; a name instead of a number fails (runAsNonRoot needs
    a numeric USER to verify the image is non-root)."""
    users = re.findall(r"^USER\s+(\S+)\s*$", dockerfile.read_text(), re.M)
    assert users, f"{dockerfile}: no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"{dockerfile}: USER {users[-1]} is not numeric"
    return int(uid), int(gid) if gid else None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_user_is_the_pods_uid(dockerfile):
    uid, gid = final_user(dockerfile)
    assert uid == RUN_AS_USER != 0
    assert gid == RUN_AS_USER
    text = dockerfile.read_text()
    # The user and group the image creates carry the same ids, so the UID has a passwd entry and a home.
    assert re.search(rf"useradd\b[^\n]*--uid {uid}\b[^\n]*--gid {gid}\b", text), "useradd with that uid/gid"
    assert re.search(rf"groupadd\b[^\n]*--gid {gid}\b", text), "groupadd with that gid"


def test_builders_run_pods_as_that_uid():
    pod, ctr = pod_security_context(), container_security_context()
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"], ctr["runAsUser"]) == (RUN_AS_USER,) * 4


def test_chart_operator_pod_runs_as_the_operator_images_uid():
    values = yaml.safe_load((ROOT / "charts" / "llmforge" / "values.yaml").read_text())
    sc = values["operator"]["podSecurityContext"]
    uid, gid = final_user(ROOT / "operator" / "Dockerfile")
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (uid, gid, gid)

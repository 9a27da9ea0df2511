"""Every Prometheus metric the operator exports is in the metrics table of docs/finetunejob-controller.md, and
the table lists nothing the operator does not export (a drift test between the code and its documentation)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

# Importing the controllers registers every metric the operator process exports.
import llmforge.controllers.evaluation  # noqa: F401
import llmforge.controllers.finetunejob  # noqa: F401
import llmforge.controllers.handlers  # noqa: F401
import llmforge.controllers.modeldeployment  # noqa: F401
import llmforge.kube  # noqa: F401

DOC = Path(__file__).resolve().parents[2] / "docs" / "finetunejob-controller.md"


def test_every_exported_metric_is_documented_and_nothing_else():
    exported = {m.name for m in REGISTRY.collect() if m.name.startswith("llmforge_")}
    documented = set(re.findall(r"^\| `(llmforge_[a-z_]+)[{`]", DOC.read_text(), flags=re.M))
    # prometheus_client drops a counter's `_total` from the family name
    documented = {n.removesuffix("_total") for n in documented}
    assert exported, "no llmforge_ metric registered"
    assert exported == documented, f"undocumented: {exported - documented}; documented only: {documented - exported}"

"""docs/benchmarks.md's GPU memory plan is what `bench/qlora_memory_plan.py` prints today, and the bench prints
the operator's own estimate and admission check, so the page shows what admission decides. A change to the
estimate, the catalogue or the API's defaults that moves a figure fails here until the page is regenerated:

    ~/.cache/llmforge/venv/bin/python bench/qlora_memory_plan.py   # paste over the tables in docs/benchmarks.md
"""

from __future__ import annotations

import difflib
import runpy
from pathlib import Path

import pytest

from llmforge import estimate

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_page_shows_the_bench_output(capsys):
    bench = runpy.run_path(str(ROOT / "bench" / "qlora_memory_plan.py"))
    assert bench["check_fit"] is estimate.check_fit and bench["estimate_for_spec"] is estimate.estimate_for_spec
    assert bench["main"]() == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n| ") >= 12, "the bench printed fewer table rows than expected"
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    if out not in doc:
        section = doc[doc.index("## GPU memory plan"):doc.index("## Operator")]
        diff = difflib.unified_diff(section.splitlines(keepends=True), (out + "\n").splitlines(keepends=True),
                                    "docs/benchmarks.md", "bench/qlora_memory_plan.py", n=0)
        pytest.fail("docs/benchmarks.md no longer shows bench/qlora_memory_plan.py's output:\n" + "".join(diff),
                    pytrace=False)


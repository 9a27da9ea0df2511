"""Every example renders byte-identical to its golden file: what `llmforge render -f examples/<x>.yaml` prints
is what the operator would apply, so a refactoring of the builders, the estimate or the catalogue that changes
one byte of it changes behaviour and must say so.

The goldens in tests/unit/golden/render/<example>.yaml were taken with default settings (no LLMFORGE_*
variables) and namespace `default`. To change them deliberately, after a change that is meant to alter the
children, regenerate and review the diff:

    UPDATE_GOLDEN=1 ~/.cache/llmforge/venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_render_golden.py
    git diff tests/unit/golden/render/
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from llmforge.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).parent / "golden" / "render"
#: Examples that are not llmforge resources, so `render` has nothing to print for them.
NOT_RENDERED = {"06-argocd-application.yaml": "an Argo CD Application that installs the chart"}
RENDERED = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name not in NOT_RENDERED)
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def render(example: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    for key in [k for k in os.environ if k.startswith("LLMFORGE_")]:
        monkeypatch.delenv(key)  # the goldens are for the default Settings
    capsys.readouterr()
    assert main(["render", "-f", str(example)]) == 0
    return capsys.readouterr().out


def test_every_example_has_a_golden_and_every_golden_an_example():
    goldens = sorted(p.name for p in GOLDEN.glob("*.yaml"))
    assert len(RENDERED) >= 6
    assert all((EXAMPLES / name).exists() for name in NOT_RENDERED)
    assert goldens == RENDERED, "add (UPDATE_GOLDEN=1) or delete the golden of an added or removed example"


@pytest.mark.parametrize("name", RENDERED)
def test_example_renders_as_its_golden(name, capsys, monkeypatch):
    out = render(EXAMPLES / name, capsys, monkeypatch)
    assert "\nkind: " in out, f"render printed no objects for examples/{name}"
    golden = GOLDEN / name
    if UPDATE:
        golden.write_text(out)
    want = golden.read_text()
    if out != want:
        diff = list(difflib.unified_diff(want.splitlines(keepends=True), out.splitlines(keepends=True),
                                         f"golden/render/{name}", f"render -f examples/{name}", n=2))
        shown = "".join(diff[:120]) + (f"... {len(diff) - 120} more diff lines\n" if len(diff) > 120 else "")
        pytest.fail(f"examples/{name} no longer renders as its golden (UPDATE_GOLDEN=1 if intended):\n{shown}",
                    pytrace=False)

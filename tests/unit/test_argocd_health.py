"""Argo CD health checks (charts/llmforge/argocd/<Kind>/health.lua) run in a real Lua 5.1, as Argo CD runs them.

Argo CD evaluates health.lua in gopher-lua (Lua 5.1) with a fresh state per call, the resource as the global
`obj` (maps -> tables, arrays -> 1-based tables, every number a float, nulls absent) and, for scripts from
argocd-cm, only the base, table, package and a cut-down os library: no `string`, no `math`, no string methods.
`lupa.lua51` with that sandbox reproduces it, so a script that leans on `string.format` fails here as it would
in Argo CD. Each check keeps Argo CD's own test layout: health_test.yaml + testdata/*.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from llmforge.api import Evaluation, FineTuneJob, ModelDeployment

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "charts" / "llmforge" / "argocd"
MODELS = {"FineTuneJob": FineTuneJob, "Evaluation": Evaluation, "ModelDeployment": ModelDeployment}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# What gopher-lua leaves for an argocd-cm script (useOpenLibs off): base, table, package, os.time/os.date.
_SANDBOX = """
local keep_time, keep_date = os.time, os.date
debug.getmetatable("").__index = nil   -- no ("x"):sub(...) without the string library
string, math, io, coroutine, debug = nil, nil, nil, nil, nil
os = { time = keep_time, date = keep_date }
"""


def to_lua(rt: Any, value: Any) -> Any:
    """Argo CD's decodeValue: dicts and lists become tables (lists 1-based), numbers floats, nulls absent."""
    if isinstance(value, dict):
        table = rt.table()
        for k, v in value.items():
            if v is not None:
                table[k] = to_lua(rt, v)
        return table
    if isinstance(value, list):
        table = rt.table()
        for i, v in enumerate(value, start=1):
            table[i] = to_lua(rt, v)
        return table
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"not JSON: {value!r}")


def run_health(script: str, resource: dict[str, Any]) -> dict[str, Any]:
    """One call = one fresh Lua state, as in Argo CD. Returns the table the script returned, as a dict."""
    rt = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    rt.execute(_SANDBOX)
    rt.globals()["obj"] = to_lua(rt, resource)
    result = rt.execute(script)
    assert lua51.lua_type(result) == "table", f"health.lua must return a table, got {result!r}"
    return {k: result[k] for k in ("status", "message")}


def _cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for test_file in sorted(CHECKS.glob("*/health_test.yaml")):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            out.append((test_file.parent.name, case))
    return out


CASES = _cases()


def _load(kind: str, case: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load((CHECKS / kind / case["inputPath"]).read_text())


def test_every_kind_has_a_check_and_cases():
    assert sorted(p.parent.name for p in CHECKS.glob("*/health.lua")) == sorted(MODELS)
    for kind in MODELS:
        assert sum(1 for k, _ in CASES if k == kind) >= 8, kind


@pytest.mark.parametrize(("kind", "case"), CASES, ids=lambda x: x if isinstance(x, str) else Path(x["inputPath"]).stem)
def test_health_case(kind, case):
    script = (CHECKS / kind / "health.lua").read_text()
    got = run_health(script, _load(kind, case))
    assert got["status"] in ARGO_STATUSES
    assert got == case["healthStatus"]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_testdata_file_is_used(kind):
    used = {c["inputPath"] for k, c in CASES if k == kind}
    on_disk = {f"testdata/{p.name}" for p in (CHECKS / kind / "testdata").glob("*.yaml")}
    assert used == on_disk


@pytest.mark.parametrize(("kind", "case"), CASES, ids=lambda x: x if isinstance(x, str) else Path(x["inputPath"]).stem)
def test_fixture_is_a_shape_the_operator_writes(kind, case):
    """Spec and status parse with the API models, and status round-trips without losing a field."""
    resource = _load(kind, case)
    assert resource["kind"] == kind
    model = MODELS[kind].model_validate(resource)
    if "status" in resource:
        dumped = model.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        assert _normalise(dumped) == _normalise(resource["status"])


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if v not in (None, [], {}) or k == "conditions"}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_cases_cover_every_phase_and_argo_status(kind):
    phases = set(MODELS[kind].model_fields["status"].annotation.__args__[0].model_fields["phase"]
                 .annotation.__args__[0].__args__)
    seen_phases, seen_status, names = set(), set(), set()
    for k, case in CASES:
        if k != kind:
            continue
        seen_phases.add((_load(kind, case).get("status") or {}).get("phase"))
        seen_status.add(case["healthStatus"]["status"])
        names.add(Path(case["inputPath"]).stem)
    assert phases <= seen_phases, phases - seen_phases
    assert {"Healthy", "Progressing", "Degraded"} <= seen_status
    assert {"no_status", "stale", "stale_condition", "terminating"} <= names


def test_sandbox_has_no_string_library():
    """The harness must reject what Argo CD rejects, or the cases above prove nothing."""
    for script in ('return {status = string.upper("healthy")}', 'return {status = ("Healthy"):sub(1)}',
                   'return {status = tostring(math.floor(1))}'):
        with pytest.raises(lua51.LuaError):
            run_health(script, {})


def test_numbers_arrive_as_floats_and_arrays_one_based():
    script = 'return {status = "Healthy", message = obj.a .. "," .. obj.l[1] .. "," .. tostring(obj.l[0])}'
    assert run_health(script, {"a": 2, "l": ["x"], "n": None})["message"] == "2,x,nil"


def test_generation_mismatch_beats_terminal_state():
    """A stale Succeeded must not be reported Healthy: flip observedGeneration and the verdict changes."""
    kind = "FineTuneJob"
    script = (CHECKS / kind / "health.lua").read_text()
    resource = yaml.safe_load((CHECKS / kind / "testdata" / "succeeded.yaml").read_text())
    assert run_health(script, resource)["status"] == "Healthy"
    resource["metadata"]["generation"] = 2
    assert run_health(script, resource)["status"] == "Progressing"

"""Shared pytest wiring: each area keeps its fixtures in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.ml",
    "tests.fixtures.realnode",
    "tests.fixtures.services",
    "tests.fixtures.vllm",
]

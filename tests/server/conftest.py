"""Fixtures local to the server tests (the fake-gcs-server itself is the shared ``fake_gcs`` fixture)."""

from __future__ import annotations

import pytest


@pytest.fixture
def gcs_client(fake_gcs, monkeypatch):
    """A google-cloud-storage client on fake-gcs-server, made the way the server makes one
    (fetch.make_client: anonymous against STORAGE_EMULATOR_HOST)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.endpoint)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    from llmforge_server.fetch import make_client

    return make_client()

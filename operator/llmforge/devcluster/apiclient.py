"""A tiny stdlib HTTPS client for the few API calls the harness makes itself.

The harness only needs readiness probes, node creation and a couple of GETs; using urllib keeps
`python -m llmforge.devcluster up` working without the kubernetes client installed.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Api:
    def __init__(self, server: str, token: str | None = None, ca_file: str | None = None,
                 verify: bool = True):
        self.server = server.rstrip("/")
        self.token = token
        self.ca_file = ca_file
        self.verify = verify
        self._ctx: ssl.SSLContext | None = None

    @property
    def ctx(self) -> ssl.SSLContext:
        # Built on first use: the apiserver writes its self-signed CA only once it starts serving.
        if self._ctx is None:
            if self.verify:
                self._ctx = ssl.create_default_context(cafile=self.ca_file)
            else:
                # Scheduler and controller-manager health ports serve in-memory self-signed certs.
                self._ctx = ssl._create_unverified_context()
        return self._ctx

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 10,
                content_type: str = "application/json") -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ctx) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def get_json(self, path: str) -> dict:
        status, text = self.request("GET", path)
        if status != 200:
            raise ApiError(status, text)
        return json.loads(text)

    def create(self, path: str, body: dict) -> dict:
        """POST; an object that already exists is fine (start-up may be retried)."""
        status, text = self.request("POST", path, body)
        if status not in (200, 201, 409):
            raise ApiError(status, text)
        return json.loads(text)

    def ok(self, path: str) -> bool:
        """True when GET answers 200; any connection or TLS error means "not yet"."""
        try:
            return self.request("GET", path, timeout=3)[0] == 200
        except (OSError, ssl.SSLError):
            return False

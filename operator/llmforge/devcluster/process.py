"""Start and stop the control-plane processes we own, by PID and process group only.

Every component runs in its own session (so its process group id is its PID) with output going to
`<work_dir>/<name>.log`. Stopping sends SIGTERM to that group, waits, then SIGKILLs what is left:
we never look processes up by name, so nothing we did not start can be hit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies (even by SIGKILL), the
    # kernel kills this component too, so a crashed pytest cannot leave an apiserver behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Proc:
    """A component we started: enough to find it again from another process (see persistent.py)."""

    name: str
    pid: int
    exe: str
    log: str
    popen: subprocess.Popen | None = None  # only in the process that started it

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "exe": self.exe, "log": self.log}

    @classmethod
    def from_json(cls, d: dict) -> Proc:
        return cls(d["name"], int(d["pid"]), d["exe"], d["log"])

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_ours(self.pid, self.exe)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = Path(self.log).read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text[-lines:])


def spawn(name: str, argv: list[str], work_dir: Path, env: dict | None = None,
          die_with_parent: bool = True) -> Proc:
    log_path = work_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    return Proc(name, popen.pid, argv[0], str(log_path), popen)


def is_ours(pid: int, exe: str) -> bool:
    """True if `pid` is alive and still runs `exe` (guards against PID reuse after a reboot)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, IndexError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and argv0 == exe


def stop_all(procs: list[Proc], grace: float = 10.0) -> None:
    """SIGTERM every group at once (teardown is then one grace period, not one per component).

    Groups are signalled only while their leader is verifiably ours, so a recycled PID is never hit.
    """
    for p in procs:
        if p.alive():
            _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        while p.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if p.alive():
            _signal_group(p.pid, signal.SIGKILL)
    for p in procs:
        if p.popen is not None:
            try:
                p.popen.wait(timeout=5)  # reap, so no zombie outlives the cluster object
            except subprocess.TimeoutExpired:
                pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

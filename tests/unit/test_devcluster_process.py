"""Process handling of the dev cluster: stop by PID/group, escalate to SIGKILL, refuse foreign PIDs."""

import shutil
import time

from llmforge.devcluster.process import Proc, is_ours, spawn, stop_all

SLEEP = shutil.which("sleep")
BASH = shutil.which("bash")


def test_spawn_logs_and_stop_terminates(tmp_path):
    p = spawn("echoer", [BASH, "-c", f"echo hello-from-child; {SLEEP} 60; true"], tmp_path)
    try:
        deadline = time.monotonic() + 5
        while "hello-from-child" not in p.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "hello-from-child" in p.log_tail()
        assert p.alive() and is_ours(p.pid, BASH)
    finally:
        stop_all([p], grace=5)
    assert not p.alive()
    assert p.popen.returncode == -15  # SIGTERM was enough


def test_sigterm_ignored_escalates_to_sigkill_of_the_whole_group(tmp_path):
    # The child ignores SIGTERM and has a grandchild: both must be gone afterwards.
    script = f"trap '' TERM; {SLEEP} 300 & echo $! > {tmp_path}/grandchild; wait"
    p = spawn("stubborn", [BASH, "-c", script], tmp_path)
    deadline = time.monotonic() + 5
    while not (tmp_path / "grandchild").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "grandchild").read_text())
    while not is_ours(grandchild, SLEEP) and time.monotonic() < deadline:
        time.sleep(0.05)  # $! is known before the forked child has exec'd sleep
    assert is_ours(grandchild, SLEEP)
    start = time.monotonic()
    stop_all([p], grace=0.5)
    assert time.monotonic() - start < 5
    assert p.popen.returncode == -9
    deadline = time.monotonic() + 5
    while is_ours(grandchild, SLEEP) and time.monotonic() < deadline:
        time.sleep(0.05)  # reparented to init, which reaps it
    assert not is_ours(grandchild, SLEEP)


def test_recorded_process_found_again_by_pid_and_exe(tmp_path):
    p = spawn("sleeper", [SLEEP, "60"], tmp_path)
    try:
        again = Proc.from_json(p.to_json())
        assert again.popen is None and again.alive()
        # A PID that now runs something else is not ours: never signal it.
        assert not Proc("x", p.pid, "/bin/not-sleep", p.log).alive()
    finally:
        stop_all([p], grace=5)
    assert not is_ours(p.pid, SLEEP)

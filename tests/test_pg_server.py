"""The tests' own PostgreSQL server (tests/pg.py) does not outlive the process that
started it, however that process ends: a SIGKILLed test run leaves no server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent

_STARTER = """
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pg import start_server
server = start_server()
pid = (server.data / "postmaster.pid").read_text().split()[0]
print(server.root, pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_test_run_leaves_no_server_behind(pg_server: Any) -> None:
    """(`pg_server`: only so that this skips, or fails in CI, where PostgreSQL is missing.)"""
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(TESTS.parent), str(TESTS)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        root, pid = starter.stdout.readline().split()
        assert _alive(int(pid)) and Path(root).is_dir()
        starter.send_signal(signal.SIGKILL)  # no finally, no atexit: the kernel closes its pipe
        assert starter.wait(30) == -signal.SIGKILL
        deadline = time.monotonic() + 60
        while _alive(int(pid)) or Path(root).exists():
            assert time.monotonic() < deadline, "the server outlived its starter"
            time.sleep(0.1)
    finally:
        starter.kill()
        starter.wait(30)

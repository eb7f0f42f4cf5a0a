"""`foblab demo` as a newcomer runs it: exit status, every step, nothing left behind; broken
on purpose it fails; interrupted it still cleans up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-c", "from tools.cli import main; main()", "demo"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _run(env: dict[str, str] | None = None) -> tuple[int, Any]:
    proc = subprocess.run([*CMD, "--json"], capture_output=True, text=True, timeout=90,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    return proc.returncode, json.loads(proc.stdout)


def test_the_demo_tells_the_whole_story_and_exits_0() -> None:
    status, doc = _run()
    steps = doc["steps"]
    assert status == 0, steps
    assert doc["ok"] is True
    assert [s["key"] for s in steps] == [
        "fleet", "daemon", "import", "enable", "login", "replay", "wrong", "drifted",
        "resync", "login-again", "radius", "station", "bob"]
    assert all(s["ok"] for s in steps)
    assert doc["seconds"] < 60
    assert not Path(str(doc["workdir"])).exists()
    pid = steps[1]["detail"]["pid"]
    assert not _alive(pid)
    drift = steps[9]["detail"]["drift"]["offset_seconds"]
    assert 1200 < drift < 1500  # a year at +40 ppm is 1262 s, plus the QA steps
    # the web console and the token panel were served, and their URLs told
    console, panel = steps[1]["detail"]["console"], steps[0]["detail"]["panel"]
    assert console == steps[1]["detail"]["url"] + "/ui/" and console in steps[1]["title"]
    assert panel.startswith("http://127.0.0.1:") and panel in steps[0]["title"]


def test_a_broken_expectation_makes_the_demo_fail() -> None:
    status, doc = _run({"FOBLAB_DEMO_BREAK": "replay"})
    assert status == 1
    bad = [s for s in doc["steps"] if not s["ok"]]
    assert [s["key"] for s in bad] == ["replay"]
    assert bad[0]["expected"] == "not refused (replayed)"
    assert bad[0]["actual"] == "refused (replayed)"
    assert not Path(str(doc["workdir"])).exists()


def _default_sigint() -> None:
    # A process inherits an ignored SIGINT (pytest started from a background job, as CI
    # may do), and Python then installs no KeyboardInterrupt handler: restore the default
    # in the child, so the signal below is the Ctrl-C a person at a terminal would send.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_leaves_nothing_behind() -> None:
    proc = subprocess.Popen(CMD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=_default_sigint)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    found = re.search(r"\(in (\S+)\)", first)
    assert found, first
    work = Path(found.group(1))
    pid = None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if m := re.search(r"daemon \(pid (\d+)\)", line):
            pid = int(m.group(1))
            break
        assert time.monotonic() < deadline
    assert pid is not None and _alive(pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err
    time.sleep(0.2)
    assert not _alive(pid)
    assert not work.exists()

"""The pytest plugin as an application's test suite uses it: the example project under
examples/mfa-app, run by pytest (in two xdist workers), and a run interrupted by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mfa-app"


def _pytest(cwd: Path, *args: str, env: dict[str, str] | None = None,
            **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                            cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_the_example_project_passes_in_two_workers(tmp_path: Path) -> None:
    proc = _pytest(EXAMPLE, "-q", "-n", "2", env={"TMPDIR": str(tmp_path)})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "6 passed" in out, out
    # every lab removed its folder; no token port or daemon outlived the run
    assert not list(tmp_path.glob("foblab-lab-*")), out


def test_ctrl_c_during_a_test_leaves_nothing_behind(tmp_path: Path) -> None:
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "test_hang.py").write_text(
        "import time\n"
        "def test_hang(foblab_validator, foblab_token):\n"
        "    foblab_token(port='pty')\n"
        "    print('READY', flush=True)\n"
        "    time.sleep(300)\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = _pytest(tests, "-s", "-q", "--import-mode=importlib", env={"TMPDIR": str(temp)},
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "READY" in line:
            break
        assert time.monotonic() < deadline
    assert list(temp.glob("foblab-lab-*")), "the lab was not where expected"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in out, out
    assert not list(temp.glob("foblab-lab-*")), out

"""Progress on long work shows on a terminal only (docs/cli.md, "Output"): the commands run
as subprocesses with stderr on a real PTY, then on a pipe and with --json. A bar is click's:
`[####----]` after its label; on a pipe or with --json stderr carries no label at all."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import ROOT, Daemon, Port, init_dir
from ptys import stderr_on_pty  # type: ignore[import-not-found]

from firmware_sim.background import serve_token

PYTHON = sys.executable


def on_pty(*args: str) -> tuple[int, str, str]:
    """`foblab ARGS` with stderr on a PTY (stdout in a file): status, stderr, stdout."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"foblab-pty-{os.getpid()}.out"
    with open(out_path, "wb") as out:
        status, seen = stderr_on_pty([PYTHON, "-m", "tools.cli", *args], ROOT, out)
    stdout = out_path.read_text()
    out_path.unlink()
    return status, seen.decode(errors="replace"), stdout


def on_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tools.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def stations(tmp_path: Path, spawn: Any) -> Iterator[tuple[Daemon, list[Any]]]:
    """A daemon with three stations, s0..s2, each holding a blank QA token."""
    with serve_token(model="keyfob", qa=True, pty_link=tmp_path / "t0", state_dir=tmp_path / "st0",
                     serial="GAHT91000000") as t0, \
         serve_token(model="keyfob", qa=True, pty_link=tmp_path / "t1",
                     state_dir=tmp_path / "st1", serial="GAHT91000001") as t1, \
         serve_token(model="keyfob", qa=True, pty_link=tmp_path / "t2",
                     state_dir=tmp_path / "st2", serial="GAHT91000002") as t2:
        home = tmp_path / "home"
        init_dir(home)
        tokens = [t0, t1, t2]
        args = [a for i, t in enumerate(tokens) for a in ("--station", f"s{i}={t.url}")]
        yield spawn(home, *args), tokens


def _near_boundary(token: Any, lead: float) -> None:
    port = Port(token.url)
    try:
        port.near_boundary(lead=lead)  # the station's wait for the next code is short
    finally:
        port.close()


def test_station_enroll_shows_a_bar_on_a_terminal_only(
        stations: tuple[Daemon, list[Any]]) -> None:
    daemon, tokens = stations
    where = ["--url", daemon.url, "--key", daemon.admin]
    label = "reading two codes (up to 30 s)"

    _near_boundary(tokens[0], 3.0)  # the command starts, then waits a few seconds
    code, err, out = on_pty("validator", "station", "enroll", "s0", "ada", "--provision",
                            *where)
    assert code == 0, err
    assert out.startswith("enrolled GAHT91000000 for ada (provisioned")
    assert f"station s0: {label}" in err and "[" in err and "#" in err, err

    # event tokens: two presses, no wait (the bar's choice is made before the call)
    code, err, out = on_pty("validator", "station", "enroll", "s1", "bob", "--provision",
                            "--kind", "hotp", "--json", *where)
    assert code == 0 and '"provisioned": true' in out
    assert label not in err and "[" not in err, err

    piped = on_pipe("validator", "station", "enroll", "s2", "cy", "--provision", "--kind",
                    "hotp", *where)
    assert piped.returncode == 0 and piped.stdout.startswith("enrolled GAHT91000002")
    assert piped.stderr == ""


def _csv(n: int, start: int) -> str:
    return "serial,secret_hex,kind,digits,period_or_counter,hash\n" + "".join(
        f"PROG{start + i:08d},{(start + i) % 256:02x}{'ab' * 19},totp,6,30,sha1\n"
        for i in range(n))


def test_a_large_import_shows_a_bar_on_a_terminal_only(spawn: Any, tmp_path: Path) -> None:
    init_dir(tmp_path / "home")
    daemon = spawn(tmp_path / "home")
    where = ["--url", daemon.url, "--key", daemon.admin]
    big = tmp_path / "big.csv"
    big.write_text(_csv(310, 0))
    code, err, out = on_pty("validator", "token", "import", str(big), *where)
    assert code == 0 and out.startswith("imported 310 token(s)"), (err, out)
    assert "importing 310 keys from big.csv" in err and "[" in err, err

    for extra in (["--json"], []):
        other = tmp_path / f"other{len(extra)}.csv"
        other.write_text(_csv(310, 1000 + 1000 * len(extra)))
        if extra:  # on a terminal, but --json
            code, err, out = on_pty("validator", "token", "import", str(other), *where, *extra)
            assert code == 0 and '"imported": 310' in out
            assert "importing" not in err and "[" not in err, err
        else:  # on a pipe
            piped = on_pipe("validator", "token", "import", str(other), *where)
            assert piped.returncode == 0 and piped.stderr == "", piped.stderr

    small = tmp_path / "small.csv"
    small.write_text(_csv(20, 5000))
    code, err, out = on_pty("validator", "token", "import", str(small), *where)
    assert code == 0 and "importing" not in err  # a few keys: nothing to watch


def test_scenario_runs_over_several_files_show_a_bar_on_a_terminal_only() -> None:
    files = [str(p) for p in sorted((ROOT / "scenarios").glob("*.toml"))
             if p.name in ("replay-attempt.toml", "brute-force.toml")]
    assert len(files) == 2
    code, err, out = on_pty("scenario", "run", *files)
    assert code == 0, (err, out)
    assert "2 scenario files" in err and "2/2" in err and "#" in err, err
    assert "PASS" in out or "passed" in out.lower()
    code, err, _ = on_pty("scenario", "run", *files, "--json")
    assert code == 0 and "scenario files" not in err, err
    code, err, _ = on_pty("scenario", "run", *files, "-q")
    assert code == 0 and "scenario files" not in err, err
    code, err, _ = on_pty("scenario", "run", files[0])
    assert code == 0 and "scenario files" not in err, err  # one file: no bar
    piped = on_pipe("scenario", "run", *files)
    assert piped.returncode == 0 and piped.stderr == ""


def _fleet_stderr(directory: Path, *extra: str, tty: bool) -> tuple[str, str]:
    """`sim fleet --count 30` until its ready line, then SIGTERM: (stderr, ready line)."""
    import signal

    master, slave = pty.openpty() if tty else (None, None)
    proc = subprocess.Popen([PYTHON, "-m", "tools.cli", "sim", "fleet", "--count", "30",
                             "--dir", str(directory), *extra], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave if tty else subprocess.PIPE, text=True)
    seen = b""
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        if tty:
            assert master is not None and slave is not None
            os.close(slave)
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            proc.wait(timeout=60)
            return seen.decode(errors="replace"), ready
        _, err = proc.communicate(timeout=60)
        return err, ready
    finally:
        if master is not None:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_fleet_start_shows_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    err, ready = _fleet_stderr(tmp_path / "a", tty=True)
    assert ready.startswith("30 tokens ready")
    assert "starting 30 tokens" in err and "30/30" in err, err
    err, ready = _fleet_stderr(tmp_path / "b", "--json", tty=True)
    assert '"count": 30' in ready and "starting" not in err, err
    err, ready = _fleet_stderr(tmp_path / "c", tty=False)
    assert ready.startswith("30 tokens ready") and err == "", err

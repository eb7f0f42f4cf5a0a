"""`foblab validator serve --workers N`: N processes on one port, on SQLite (WAL) or
PostgreSQL; one winner per code across them; a worker that dies is replaced; SIGTERM
ends them all cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_helpers import Daemon, init_dir, wait_for_lines
from test_postgresql_daemons import SEED, _burst, _hotp_user

from validator.otp import hotp


def _workers(d: Daemon) -> list[int]:
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_share_a_port_and_a_database(tmp_path: Path, spawn: Any, backend: str,
                                             request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    init_dir(tmp_path / "v", database_url=url)
    d = spawn(tmp_path / "v", "--workers", "2")
    pids = _workers(d)
    assert len(pids) == 2
    _hotp_user(d, d, "alice", "W-1")
    for counter in range(2, 5):
        responses = asyncio.run(_burst([d], "alice", hotp(SEED, counter), 50))
        assert {r.status_code for r in responses} == {200}
        assert sum(r.json()["ok"] for r in responses) == 1
    os.kill(pids[0], signal.SIGKILL)  # a worker dies: another takes its place
    deadline = time.monotonic() + 30
    while len([p for p in _workers(d) if p != pids[0]]) < 2:
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    with d.client("verifier") as c:
        for counter in range(5, 9):
            r = c.post("/v1/verify", json={"user": "alice", "code": hotp(SEED, counter)})
            assert r.status_code == 200 and r.json()["ok"], r.text
    workers = _workers(d)
    assert d.stop(signal.SIGTERM) == 0, "".join(d.lines[-20:])
    assert not any(_alive(p) for p in workers)


def test_workers_stop_when_their_parent_is_killed(tmp_path: Path, spawn: Any) -> None:
    """SIGKILL leaves the parent no chance to stop its workers: they notice it is gone
    and stop themselves, instead of holding the port with nobody to stop them."""
    init_dir(tmp_path / "v")
    d = spawn(tmp_path / "v", "--workers", "2")
    workers = _workers(d)
    assert len(workers) == 2
    with d.client() as c:
        assert c.get("/healthz").status_code == 200
    d.proc.kill()
    d.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):  # and nothing holds the port any more
        httpx.get(f"{d.url}/healthz", timeout=5)


def test_workers_check_radius_before_forking(tmp_path: Path, spawn: Any) -> None:
    """A [radius] client whose secret file others can read stops `--workers` at start-up,
    with the reason, as it stops one daemon: no worker is forked to fail on its own."""
    from daemon_helpers import set_config
    init_dir(tmp_path / "v")
    secret = tmp_path / "v" / "vpn.secret"
    secret.write_text("s" * 16 + "\n")
    secret.chmod(0o644)
    set_config(tmp_path / "v", "radius", listen="127.0.0.1:0",
               clients=[{"name": "vpn", "address": "127.0.0.1/32",
                         "secret_file": str(secret)}])
    with pytest.raises(AssertionError, match="vpn.*secret file") as failed:
        spawn(tmp_path / "v", "--workers", "2")
    assert "workers started" not in str(failed.value) and "worker 0" not in str(failed.value)


def test_sighup_reaches_every_worker(tmp_path: Path, spawn: Any) -> None:
    """`systemctl reload` signals the parent: every worker then knows a key created since,
    whichever worker a new connection lands on."""
    from click.testing import CliRunner

    from tools.cli import main

    init_dir(tmp_path / "v")
    d = spawn(tmp_path / "v", "--workers", "2")
    pids = _workers(d)
    made = CliRunner().invoke(main, ["validator", "api-keys", "create", "gw", "--role",
                                     "admin", "--dir", str(tmp_path / "v")])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()

    def statuses() -> set[int]:  # a fresh connection each time: both workers get some
        out = set()
        for _ in range(20):
            with d.client(key) as c:
                out.add(c.get("/v1/tokens").status_code)
        return out

    assert statuses() == {401}
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_lines(d, "reloaded", mark, count=2)
    assert statuses() == {200}
    assert _workers(d) == pids  # reloaded, not restarted

    # the API's reload, answered by one worker, reaches the other too
    made = CliRunner().invoke(main, ["validator", "api-keys", "create", "gw2", "--role",
                                     "admin", "--dir", str(tmp_path / "v")])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert statuses() == {401}
    mark = len(d.lines)
    with d.client("admin") as c:
        assert c.post("/v1/admin/reload").status_code == 200
    wait_for_lines(d, "reloaded", mark, count=3)  # 1, then both
    assert statuses() == {200}
    assert _workers(d) == pids
    assert d.stop(signal.SIGTERM) == 0


def test_every_scrape_shows_every_workers_series(tmp_path: Path, spawn: Any) -> None:
    """With `--workers 2` a Prometheus scrape lands on one worker, and still holds both
    workers' series (`worker` label; the other's as it wrote them at most a second ago),
    so counters never jump between two processes' values; the store's gauges come once.
    A replaced worker's series start again from zero, as a restarted daemon's would."""
    from daemon_helpers import metric
    from prometheus_client.parser import text_string_to_metric_families

    init_dir(tmp_path / "v")
    scratch = tmp_path / "tmp"  # the daemon's temporary directory
    scratch.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = scratch / f"foblab-metrics-{gone.pid}-x1"  # a SIGKILLed parent's, a while ago
    left.mkdir()
    (left / "worker-0.prom").write_text("# old\n")
    for path in (left / "worker-0.prom", left):
        os.utime(path, (time.time() - 3600,) * 2)
    d = spawn(tmp_path / "v", "--workers", "2", env={**os.environ, "TMPDIR": str(scratch)})
    assert [p.name.split("-")[2] for p in scratch.iterdir()] == [str(d.proc.pid)]
    _hotp_user(d, d, "alice", "W-1")

    def scrape() -> str:
        with d.client() as c:  # a new connection: either worker answers
            return c.get("/metrics", headers={"Connection": "close"}).text

    def verifies(text: str) -> dict[str, float]:
        return {s.labels["worker"]: s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "foblab_http_requests_total"
                and s.labels.get("route") == "/v1/verify"}

    with d.client("verifier") as c:
        for counter in range(2, 22):
            r = c.post("/v1/verify", json={"user": "alice", "code": hotp(SEED, counter)},
                       headers={"Connection": "close"})
            assert r.json()["ok"], r.text
    time.sleep(1.5)  # each worker has written its counts since

    def starts(text: str) -> dict[str, float]:
        return {s.labels["worker"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "foblab_start_time_seconds"}

    for _ in range(12):
        text = scrape()
        assert set(starts(text)) == {"0", "1"}, text
        assert sum(verifies(text).values()) == 20
        assert metric(text, "foblab_tokens") == 1  # once, without a worker label
        assert text.count("# TYPE foblab_http_requests_total counter") == 1
    text = scrape()
    started, counted = starts(text), verifies(text)
    victim = _workers(d)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len([p for p in _workers(d) if p != victim]) < 2:
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    time.sleep(1.5)
    text = scrape()
    restarted = [w for w, t in starts(text).items() if t != started[w]]
    assert len(restarted) == 1, text
    other = "1" if restarted == ["0"] else "0"
    assert verifies(text).get(restarted[0], 0) == 0  # from zero, as a restarted daemon's
    assert verifies(text).get(other, 0) == counted.get(other, 0)  # the other's all there
    assert d.stop(signal.SIGTERM) == 0
    assert list(scratch.iterdir()) == []  # its own folder removed at the end

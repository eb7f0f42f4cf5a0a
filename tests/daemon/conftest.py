"""Fixtures for the daemon tests: a real `foblab validator serve` subprocess on an ephemeral
loopback port (it binds port 0 and reports the URL), real SQLite files, emulated tokens on
real PTYs (in-process, on a loop thread), and silent / garbage-spewing fake ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.background import serve_fleet, serve_token

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_helpers import Daemon, FakePort, init_dir, set_config, start  # noqa: E402


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start daemons in a test; every one is stopped (SIGKILL if need be) afterwards."""
    started: list[Daemon] = []

    def _spawn(directory: Path, *args: str, **popen: Any) -> Daemon:
        d = start(directory, *args, **popen)
        started.append(d)
        return d

    yield _spawn
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serve_fleet(directory=tmp_path_factory.mktemp("fleet"), count=3, qa=True,
                     seed=7) as running:
        yield running


@pytest.fixture(scope="session")
def blank_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("blank")
    with serve_token(model="keyfob", qa=True, pty_link=root / "blank",
                     state_dir=root / "state", serial="GAHT90000001") as running:
        yield running


@pytest.fixture(scope="session")
def fake_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FakePort]]:
    root = tmp_path_factory.mktemp("fake")
    ports = {"silent": FakePort(root, "silent", False), "garbage": FakePort(root, "garbage", True)}
    yield ports
    for p in ports.values():
        p.close()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, blank_token: Any,
           fake_ports: dict[str, FakePort]) -> Iterator[Daemon]:
    """One daemon for the tests that share state carefully (distinct users and serials)."""
    directory = tmp_path_factory.mktemp("vd") / "home"
    init_dir(directory, station_timeout=0.5)
    set_config(directory, "stations", silent=str(fake_ports["silent"].link),
               garbage=str(fake_ports["garbage"].link))
    d = start(directory, "--station", f"bench={blank_token.url}",
              "--station", "nowhere=/nonexistent/ttyUSB9")
    try:
        yield d
    finally:
        d.stop()
        if d.proc.poll() is None:
            d.proc.kill()

"""Fixtures for the emulated token: a fixed clock, in-memory and PTY clients, a leak check."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from protocol.connection import TokenClient, pyserial_reader

RFC_SEED_SHA1 = b"12345678901234567890"
RFC_SEED_SHA256 = RFC_SEED_SHA1 + b"123456789012"
RFC_SEED_SHA512 = RFC_SEED_SHA1 * 3 + b"1234"
T0 = 1_700_000_000_000


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread or a child process behind."""
    threads = set(threading.enumerate())
    children = _children()
    yield
    extra_threads = [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    extra_children = _children() - children
    assert not extra_threads, f"threads left behind: {extra_threads}"
    assert not extra_children, f"child processes left behind: {extra_children}"


class FakeClock:
    """True time for the pure parts, moved by hand."""

    def __init__(self, start_ms: int = T0) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_client() -> Iterator[Callable[..., TokenClient]]:
    """open_client(url) -> a TokenClient over a real pyserial port, closed after the test."""
    ports: list[serial.SerialBase] = []

    def opener(url: str, timeout: float = 2.0) -> TokenClient:
        port = serial.serial_for_url(url, timeout=timeout)
        ports.append(port)
        return TokenClient(pyserial_reader(port), port.write)

    yield opener
    for port in ports:
        port.close()

"""Helpers of the RADIUS tests against the real daemon (importable, unlike conftest.py)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_helpers import Daemon, init_dir, metric, start  # noqa: E402

__all__ = ["Daemon", "init_dir", "metric", "start", "need", "radius_address", "radclient", "Answer",
           "hotp", "totp_at", "DropFirstReply", "write_radius_config", "PAM_WRAPPER"]

PAM_WRAPPER = "libpam_wrapper.so"


def need(what: str, present: bool) -> None:
    """A Debian package the test drives: must be there under CI, else the test skips."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing and CI is set: install it (scripts/debian-deps.sh)")
    pytest.skip(f"{what} is not installed (scripts/debian-deps.sh installs it)")


def have_library(name: str) -> bool:
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True)
    return name in out.stdout


def have_pam_module(name: str) -> bool:
    return any(Path(d, name).is_file() for d in ("/lib/x86_64-linux-gnu/security",
                                                 "/usr/lib/x86_64-linux-gnu/security",
                                                 "/lib/security", "/usr/lib/security"))


def need_binary(name: str, package: str) -> None:
    need(f"{name} ({package})", shutil.which(name) is not None)


def hotp(key: bytes, counter: int) -> str:
    return pyotp.HOTP(base64.b32encode(key).decode()).at(counter)


def totp_at(key: bytes, step: int) -> str:
    return pyotp.HOTP(base64.b32encode(key).decode()).at(step)


def write_radius_config(home: Path, clients: str, secret_files: dict[str, bytes]) -> None:
    for name, secret in secret_files.items():
        path = home / name
        path.write_bytes(secret + b"\n")
        path.chmod(0o600)
    with (home / "foblab.toml").open("a") as f:
        f.write(f'\n[radius]\nlisten = "127.0.0.1:0"\n{clients}')


def radius_address(daemon: Daemon, timeout: float = 10) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(daemon.lines):
            m = re.search(r"answering RADIUS on udp ([^\s\"]+):(\d+)", line)
            if m:
                return m.group(1), int(m.group(2))
        time.sleep(0.05)
    raise AssertionError("no radius line:\n" + "".join(daemon.lines))


@dataclass
class Answer:
    code: str | None  # "Access-Accept", ... or None: no reply
    message: str | None
    state: str | None  # hex, without 0x
    output: str


def radclient(server: tuple[str, int], secret: str, attributes: dict[str, str], *,
              message_authenticator: bool = True, retries: int = 1,
              timeout: float = 1.0) -> Answer:
    """One request through FreeRADIUS's radclient; its -x output parsed."""
    pairs = [f'{k} = "{v}"' if not v.startswith("0x") else f"{k} = {v}"
             for k, v in attributes.items()]
    if message_authenticator:
        pairs.append("Message-Authenticator = 0x00")
    out = subprocess.run(
        ["radclient", "-x", "-r", str(retries), "-t", str(timeout),
         f"{server[0]}:{server[1]}", "auth", secret],
        input=",".join(pairs) + "\n", capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    code = re.search(r"Received (Access-\w+)", text)
    message = re.search(r'Reply-Message = "([^"]*)"', text)
    state = re.search(r"State = 0x([0-9a-fA-F]+)", text)
    return Answer(code.group(1) if code else None, message.group(1) if message else None,
                  state.group(1) if state else None, text)


class DropFirstReply:
    """A UDP relay between a client and the daemon that loses the daemon's first answer,
    so the client's own timeout makes it retransmit the request unchanged."""

    def __init__(self, daemon: tuple[str, int]) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(daemon)
        self.address = self.front.getsockname()
        self.requests = 0
        self.dropped = 0
        self._peer: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._up, daemon=True),
                         threading.Thread(target=self._down, daemon=True)]
        for s in (self.front, self.back):
            s.settimeout(0.1)
        for t in self._threads:
            t.start()

    def _up(self) -> None:
        while not self._stop.is_set():
            try:
                data, self._peer = self.front.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            self.requests += 1
            self.back.send(data)

    def _down(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.back.recv(4096)
            except (TimeoutError, OSError):
                continue
            if self.dropped == 0:
                self.dropped += 1
                continue
            if self._peer is not None:
                self.front.sendto(data, self._peer)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.front.close()
        self.back.close()

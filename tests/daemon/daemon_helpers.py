"""Helpers of the daemon tests (importable: conftest.py is not, under importlib mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import serial
import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from protocol import TokenClient, pyserial_reader
from protocol.messages import AdjustOffsetRequest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    url: str
    dir: Path
    admin: str
    verifier: str
    lines: list[str] = field(default_factory=list)

    def client(self, key: str | None = "admin", **kw: Any) -> httpx.Client:
        token = {"admin": self.admin, "verifier": self.verifier}.get(key or "", key)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def init_dir(directory: Path, *, database_url: str | None = None,
             **validator_settings: Any) -> tuple[str, str]:
    url = [] if database_url is None else ["--database-url", database_url]
    out = subprocess.run([PYTHON, "-m", "tools.cli", "validator", "init", str(directory),
                          *url], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if validator_settings:
        set_config(directory, **validator_settings)
    return ((directory / "admin.key").read_text().strip(),
            (directory / "verifier.key").read_text().strip())


def set_config(directory: Path, section: str = "validator", **values: Any) -> None:
    path = directory / "foblab.toml"
    doc = tomllib.loads(path.read_text())
    doc.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps(doc))


def start(directory: Path, *args: str, timeout: float = 30, **popen: Any) -> Daemon:
    """`foblab validator serve --dir DIR --port 0 ARGS`; waits for its ready line."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "tools.cli", "validator", "serve", "--dir", str(directory),
         "--port", "0", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, **popen)
    lines: list[str] = []
    ready = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on " in line and not url:
                url.append(re.findall(r"listening on (https?://[^\s\"]+)", line)[0])
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not url:
        proc.kill()
        proc.wait(5)
        raise AssertionError("daemon did not start:\n" + "".join(lines))
    admin = (directory / "admin.key").read_text().strip()
    verifier = (directory / "verifier.key").read_text().strip()
    return Daemon(proc, url[0], directory, admin, verifier, lines)


# -- tokens on serial ports ----------------------------------------------------------------

class Port:
    """A test's own connection to a token over its PTY."""

    def __init__(self, url: str) -> None:
        self.serial = serial.serial_for_url(url, timeout=2)
        self.client = TokenClient(pyserial_reader(self.serial), self.serial.write)

    def close(self) -> None:
        self.serial.close()

    def near_boundary(self, lead: float = 0.8, period: int = 30) -> None:
        """Jump the token's clock (QA) so its step ends `lead` seconds from now: a drifted
        token, which is the validator's business, and a short wait for the next code."""
        clock = self.client.clock()
        into = (clock.token_time_ms / 1000) % period
        delta = (period - lead) - into
        self.client.clock_command(AdjustOffsetRequest(delta_ms=int(delta * 1000)))

    def jump(self, seconds: float) -> None:
        self.client.clock_command(AdjustOffsetRequest(delta_ms=int(seconds * 1000)))

    def two_codes(self) -> tuple[str, str]:
        """Two consecutive codes as a person reads them: press, wait for the display to
        change, press; the second is current."""
        self.near_boundary()
        first = self.client.press().code
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            second = self.client.press().code
            if second != first:
                return first, second
            time.sleep(0.05)
        raise AssertionError("the token's code did not change")

    def next_code(self) -> str:
        """A code one step later than anything read so far (jump the clock a step)."""
        self.jump(30)
        return self.client.press().code


class FakePort:
    """A PTY with a fake token on the far side: silent, or answering garbage."""

    def __init__(self, directory: Path, name: str, garbage: bool) -> None:
        self.master, slave = os.openpty()
        import tty

        tty.setraw(slave)
        self.link = directory / name
        self.link.symlink_to(os.ttyname(slave))
        self._slave = slave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(garbage,), daemon=True)
        self._thread.start()

    def _run(self, garbage: bool) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    os.read(self.master, 4096)
                except OSError:
                    continue
                if garbage:
                    os.write(self.master, b"\x02\xff\x13garbage\x00" * 4)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self._slave)


class InProcessServer:
    """An ASGI app served by a real uvicorn on a loopback port, in a thread of this process
    (so that what it runs is visible to the test: mutation testing, store spies)."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                                    lifespan="off", http="httptools"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


SECRET_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
"""The seed `enabled_token` registers (RFC 6238's, base32)."""


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name` with exactly `labels` in a /metrics scrape (0 if none)."""
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == name and s.labels == labels)


def wait_for_lines(d: Daemon, words: str, after: int, count: int = 1,
                   timeout: float = 30) -> list[str]:
    """The daemon's log lines since line `after` that hold `words`, once there are `count`
    of them (AssertionError, with those lines, after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in d.lines[after:] if words in line]
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{len(found)} of {count} {words!r} in the log:\n"
                                 + "".join(d.lines[after:]))
        time.sleep(0.05)


def clear_of_step_edge(margin: float = 6.0, period: int = 30) -> float:
    """The time now, after waiting out the end of the current step if fewer than `margin`
    seconds of it are left: a pair of codes read at this time and the request after it
    then reach the daemon in the step they were read in (a request crossing the edge
    teaches the daemon a step of drift the test did not mean)."""
    left = period - time.time() % period
    if left < margin:
        time.sleep(left + 0.05)
    return time.time()


def enable_pair(http: httpx.Client, serial: str, user: str,
                secret_b32: str = SECRET_B32) -> pyotp.TOTP:
    """Register `serial` (SECRET_B32 unless told) through the admin client `http` and
    enable it for `user` with two consecutive codes, as a person would; returns the
    token's TOTP. The next step's code is the one the daemon accepts next."""
    r = http.post("/v1/tokens", json={"serial": serial, "secret_b32": secret_b32})
    assert r.status_code == 201, r.text
    totp = pyotp.TOTP(secret_b32)
    now = clear_of_step_edge()
    r = http.post(f"/v1/users/{user}/devices", json={
        "serial": serial, "code1": totp.at(now - 30), "code2": totp.at(now)})
    assert r.status_code == 201, r.text
    return totp


def enabled_token(daemon: Daemon, serial: str, user: str) -> pyotp.TOTP:
    """`enable_pair` on a spawned daemon."""
    with daemon.client() as http:
        return enable_pair(http, serial, user)

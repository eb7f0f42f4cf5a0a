"""Hostile connections against the real daemon: thousands of silent sockets, a head that
never ends, every connection busy, the descriptor limit, an oversized body written whole
before the answer is read, and X-Forwarded-For from untrusted peers.

The one-second bounds below are functional, not benchmarks: without the connection guard
a silent socket is held for ever and a client behind the cap waits for ever."""

from __future__ import annotations

import json
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import Daemon, enable_pair, init_dir, metric, set_config  # noqa: E402

SILENT = 3000


def _addr(d: Daemon) -> tuple[str, int]:
    host, port = d.url.removeprefix("http://").split(":")
    return host, int(port)


def _metric(d: Daemon, name: str, **labels: str) -> float:
    text = httpx.get(d.url + "/metrics", timeout=10).text
    assert f"\n{name}" in text, f"{name} not in /metrics"
    return metric(text, name, **labels)


def _enable(d: Daemon, serial: str, user: str) -> Any:
    """Register and enable a TOTP token; returns a function giving a code the daemon
    accepts next (the step after the enabling pair's, or the current one if later)."""
    with d.client() as http:
        totp = enable_pair(http, serial, user)
    now = time.time()
    after = (int(now) // 30 + 1) * 30
    return lambda: totp.at(max(time.time(), after))


def _wait_accepted(d: Daemon, count: int) -> None:
    """Until the daemon has taken `count` more connections off its listen queue (held or
    shed), so the figures below are measured with them open, not still queued."""
    deadline = time.monotonic() + 60
    while True:
        got = _metric(d, "foblab_connections_open") + \
            _metric(d, "foblab_connections_limited_total", reason="shed")
        if got >= count:
            return
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@pytest.mark.parametrize(("max_connections", "fd_limits"), [
    (None, (2048, 2048)),   # descriptors for fewer than 3,000: the cap sheds idle ones
    (4096, (1024, None)),   # soft 1024 raised to the hard limit: all 3,000 held
], ids=["default-cap-2048-fds", "cap-4096-soft-1024"])
def test_silent_connections_do_not_starve_real_clients(
        tmp_path: Path, spawn: Any, max_connections: int | None,
        fd_limits: tuple[int, int | None]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * SILENT + 500:
        pytest.skip(f"hard descriptor limit {hard} is too low for this test")
    if soft < SILENT + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SILENT + 500, hard))
    init_dir(tmp_path, **({} if max_connections is None else
                          {"max_connections": max_connections}))
    daemon_soft, daemon_hard = fd_limits[0], fd_limits[1] or hard

    def limit() -> None:  # without the fixes, 3,000 silent sockets exhaust these
        resource.setrlimit(resource.RLIMIT_NOFILE, (daemon_soft, daemon_hard))

    d = spawn(tmp_path, preexec_fn=limit)
    code = _enable(d, "CONN-0001", "connie")
    silent = []
    try:
        for _ in range(SILENT):
            silent.append(socket.create_connection(_addr(d), timeout=10))
        _wait_accepted(d, SILENT)
        # a new client, a new connection each (raw, so the client's own start-up is not
        # timed): health, then an accepted code
        answer, took = _timed(lambda: _raw(d, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                              b"Connection: close\r\n\r\n"))
        assert answer.startswith(b"HTTP/1.1 200 ") and took < 1.0, (answer[:100], took)
        body = json.dumps({"user": "connie", "code": code()}).encode()
        answer, took = _timed(lambda: _raw(d, (
            b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
            b"application/json\r\nAuthorization: Bearer " + d.verifier.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)))
        assert b'"ok":true' in answer and took < 1.0, (answer[-100:], took)
        print(f"with {SILENT} silent connections: verify answered in {took * 1000:.0f} ms")
        opened = _metric(d, "foblab_connections_open")
        shed = _metric(d, "foblab_connections_limited_total", reason="shed")
        if max_connections is None:  # the default cap (1024): the oldest silent ones shed
            assert opened <= 1024 + 5 and shed >= SILENT - 1024
            assert sum("idle connections closed to admit new ones" in line
                       for line in d.lines) == 1  # once per interval, not per connection
        else:  # all held, and still answered at once
            assert opened >= SILENT and shed == 0
    finally:
        for s in silent:
            s.close()


def test_a_head_that_never_ends_is_closed(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path, head_timeout=0.5)
    d = spawn(tmp_path)
    socks = [socket.create_connection(_addr(d), timeout=10) for _ in range(5)]
    socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
    for s in socks:  # without the deadline recv() waits for ever (here: the 10 s timeout)
        assert s.recv(100) == b""
        s.close()
    # a kept-alive connection gets the deadline again for its next head
    with socket.create_connection(_addr(d), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += s.recv(1000)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert s.recv(1000) == b""
    assert _metric(d, "foblab_connections_limited_total", reason="head_timeout") >= 6
    logged = [line for line in d.lines if "no complete request head" in line]
    assert len(logged) == 1, logged


def test_when_every_connection_is_busy_the_next_gets_a_503(tmp_path: Path,
                                                           spawn: Any) -> None:
    init_dir(tmp_path, max_connections=2)
    d = spawn(tmp_path)
    busy = []
    for _ in range(2):  # a head, then a body that stalls: busy in a request, not idle
        s = socket.create_connection(_addr(d), timeout=10)
        s.sendall(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nAuthorization: Bearer " + d.verifier.encode() +
                  b"\r\nContent-Length: 40\r\n\r\n{")
        busy.append(s)
    time.sleep(0.3)  # let the daemon read both heads
    with socket.create_connection(_addr(d), timeout=10) as s:
        answer = s.recv(1000)
    assert answer.startswith(b"HTTP/1.1 503 ") and b'"overloaded"' in answer
    for s in busy:
        s.close()
    deadline = time.monotonic() + 10
    while True:  # the busy ones close; then there is room again
        try:
            refused = _metric(d, "foblab_connections_limited_total", reason="refused")
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert refused >= 1
    assert any("connections refused (every connection busy)" in line for line in d.lines)


def test_the_descriptor_soft_limit_is_raised_to_the_hard_limit(tmp_path: Path,
                                                                spawn: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 1024:
        pytest.skip(f"hard descriptor limit {hard}: nothing to raise to")
    init_dir(tmp_path)

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    d = spawn(tmp_path, preexec_fn=low)
    limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert row.split()[3:5] == [str(hard), str(hard)], row
    assert any("file-descriptor limit raised from 256" in line for line in d.lines)


# -- bodies and proxies --------------------------------------------------------------------

def _raw(d: Daemon, request: bytes) -> bytes:
    """Send the whole request first, then read the whole answer (as urllib does)."""
    with socket.create_connection(_addr(d), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("size", [20_000, 200_000, 900_000])
def test_an_oversized_body_sent_whole_still_gets_its_413(daemon: Daemon, size: int) -> None:
    body = b'{"user": "a", "code": "' + b"1" * size + b'"}'
    for length in (b"Content-Length: " + str(len(body)).encode(), b""):
        if length:
            request = (b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/json\r\nAuthorization: Bearer " + daemon.verifier.encode()
                       + b"\r\n" + length + b"\r\n\r\n" + body)
        else:  # chunked: no length to refuse on up front
            request = (b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/json\r\nAuthorization: Bearer " + daemon.verifier.encode()
                       + b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
                       f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n")
        answer = _raw(daemon, request)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"connection: close" in answer.lower() and b"body_too_large" in answer


def test_urllib_sees_the_413(daemon: Daemon) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(daemon.url + "/v1/verify", data=b"[" + b"1," * 100_000 + b"1]",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {daemon.verifier}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["error"] == "body_too_large"


def _access_client(d: Daemon, marker: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        for line in reversed(d.lines):
            if line.startswith("{") and marker in line:
                return str(json.loads(line)["remote_addr"])
        assert time.monotonic() < deadline, f"no access-log line for {marker}"
        time.sleep(0.05)


def test_x_forwarded_for_is_ignored_from_untrusted_peers(daemon: Daemon) -> None:
    # the shared daemon trusts no proxy (the default): its loopback peer is logged
    marker = "/v1/nothing-xff-untrusted"
    httpx.get(daemon.url + marker, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert _access_client(daemon, marker) == "127.0.0.1"


def test_x_forwarded_for_is_honoured_from_trusted_proxies(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path)
    set_config(tmp_path, trusted_proxies=["127.0.0.0/8"])
    d = spawn(tmp_path)
    marker = "/v1/nothing-xff-trusted"
    httpx.get(d.url + marker, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert _access_client(d, marker) == "203.0.113.9"


def test_trusted_proxies_are_checked(tmp_path: Path) -> None:
    from validator.config import ConfigError, parse

    with pytest.raises(ConfigError, match="not an IP address"):
        parse({"validator": {"trusted_proxies": ["proxy.example"]}}, tmp_path)
    with pytest.raises(ConfigError, match="must be a list"):
        parse({"validator": {"trusted_proxies": "127.0.0.1"}}, tmp_path)
    s = parse({"validator": {"trusted_proxies": ["::1", "10.0.0.0/8"], "head_timeout": 2,
                             "max_connections": 10}}, tmp_path)
    assert (s.trusted_proxies, s.head_timeout, s.max_connections) == (
        ("::1", "10.0.0.0/8"), 2.0, 10)
    with pytest.raises(ConfigError, match="head_timeout"):
        parse({"validator": {"head_timeout": 0}}, tmp_path)


def test_the_aws_endpoint_answers_an_oversized_body_sent_whole(daemon: Daemon) -> None:
    body = b"Action=GetSessionToken&Version=2011-06-15&Pad=" + b"x" * 600_000
    answer = _raw(daemon, b"POST /aws HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                  b"x-www-form-urlencoded\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"RequestEntityTooLarge" in answer

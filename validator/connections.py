"""Connection limits of the daemon: a request-head deadline, a cap on open connections,
the file-descriptor soft limit raised to the hard one, and a log line per interval.

uvicorn arms its keep-alive timer only after a response (`on_response_complete`), and its
`limit_concurrency` is checked only once a request head is complete, so a peer that
connects and sends nothing holds a file descriptor for ever and is never counted. These
limits therefore live in the HTTP protocol object itself, the one place that sees a
connection from `connection_made` on: `guarded_protocol(guard)` is uvicorn's httptools
protocol with three hooks.

- Head deadline: a connection must deliver a complete request head within `head_timeout`
  seconds of connecting (and, on a kept-alive connection, of the first byte of the next
  head), else it is closed. Between requests uvicorn's keep-alive timer applies.
- Cap: at most `max_connections` are open. When a new one arrives at the cap, the oldest
  *idle* connection (one waiting for a request head: silent, slow, or kept alive) is closed
  to make room, as nginx reuses idle connections; silent peers therefore can never lock
  out a real client. Only when every open connection is busy answering a request is the
  newcomer refused: a 503 with `Connection: close`, then closed.
- The counts (open, refused, shed, timed out) are on /metrics; a warning is logged at most
  once per `log_interval` seconds per kind of event, with the count since the last line.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("foblab.validator")

# Descriptors kept free for the database, key files, stations and logging.
FD_RESERVE = 64

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
           b"connection: close\r\ncontent-length: 72\r\nretry-after: 1\r\n\r\n"
           b'{"error":"overloaded","message":"too many connections; try again later"}')
assert len(REFUSED.split(b"\r\n\r\n", 1)[1]) == 72


# An oversized body is read and thrown away up to this many bytes (and for at most
# DISCARD_SECONDS) before its 413 is sent, so a client that writes its whole body before
# reading (urllib does) hears the answer instead of a connection reset.
DISCARD_BYTES = 1024 * 1024
DISCARD_SECONDS = 5.0


async def discard_body(receive: Callable[[], Awaitable[Any]], declared: int | None) -> None:
    """Read and drop the rest of a refused request body, within the bounds above; a
    declared length past the bound is not waited for (the connection is closed instead)."""
    if declared is not None and declared > DISCARD_BYTES:
        return
    seen = 0
    try:
        async with asyncio.timeout(DISCARD_SECONDS):
            while seen <= DISCARD_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


def raise_fd_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


class ConnectionGuard:
    """The shared state of every connection of one server: the settings, the idle
    connections in arrival order, and the counters /metrics shows."""

    def __init__(self, max_connections: int, head_timeout: float,
                 log_interval: float = 60.0) -> None:
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.log_interval = log_interval
        self.open = 0
        self.peak = 0
        self.events: Counter[str] = Counter()  # refused, shed, head_timeout: lifetime
        self._unlogged: Counter[str] = Counter()
        self._last_log: dict[str, float] = {}
        # dicts keep insertion order: the first key is the connection idle the longest
        self.idle: dict[Any, None] = {}

    def crowded(self) -> bool:
        """Whether more than one connection is answering a request (between its head and
        its response): another request is in progress beside the caller's."""
        return self.open - len(self.idle) > 1

    def fit_fd_limit(self) -> None:
        """Lower the cap to what the process's descriptor limit can hold (logged)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else self.max_connections
        if room < self.max_connections:
            log.warning("max_connections %d lowered to %d: the file-descriptor limit is %d",
                        self.max_connections, max(room, 1), soft)
            self.max_connections = max(room, 1)

    def count(self, event: str, now: float | None = None) -> None:
        """Count an event; log a summary line at most once per interval per event."""
        self.events[event] += 1
        self._unlogged[event] += 1
        now = time.monotonic() if now is None else now
        last = self._last_log.get(event)
        if last is None or now - last >= self.log_interval:
            n = self._unlogged.pop(event)
            self._last_log[event] = now
            what = {"refused": "connections refused (every connection busy)",
                    "shed": "idle connections closed to admit new ones",
                    "head_timeout": f"connections closed for sending no complete request "
                                    f"head within {self.head_timeout:g} s"}[event]
            log.warning("connection limit: %d %s (max_connections %d, %d open)%s", n, what,
                        self.max_connections, self.open,
                        "" if last is None else f" in the last {now - last:.0f} s")

    def render(self) -> list[str]:
        out = ["# HELP foblab_connections_open HTTP connections open now.",
               "# TYPE foblab_connections_open gauge",
               f"foblab_connections_open {self.open}",
               "# HELP foblab_connections_max The connection cap in force.",
               "# TYPE foblab_connections_max gauge",
               f"foblab_connections_max {self.max_connections}",
               "# HELP foblab_connections_limited_total Connections closed or refused by a "
               "limit: refused (503, all busy), shed (idle, to admit a new one), "
               "head_timeout.",
               "# TYPE foblab_connections_limited_total counter"]
        for event in ("refused", "shed", "head_timeout"):
            out.append(f'foblab_connections_limited_total{{reason="{event}"}} '
                       f"{self.events[event]}")
        return out


def guarded_protocol(guard: ConnectionGuard) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with `guard`'s limits."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _counted = False
        _in_head = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if guard.open >= guard.max_connections:
                if guard.idle:
                    oldest = next(iter(guard.idle))
                    guard.idle.pop(oldest)
                    oldest.transport.close()
                    guard.count("shed")
                else:
                    guard.count("refused")
                    self.transport = transport
                    transport.write(REFUSED)
                    transport.close()
                    return
            self._counted = True
            guard.open += 1
            guard.peak = max(guard.peak, guard.open)
            super().connection_made(transport)
            self._waiting_for_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._counted:
                return
            self._counted = False
            guard.open -= 1
            guard.idle.pop(self, None)
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._counted:
                return
            super().data_received(data)
            # A kept-alive connection's next head usually arrives whole, in one read: only
            # a head left incomplete by this read needs a deadline (no timer per request).
            if self._in_head and self._head_timer is None and self.parser is not None:
                self._head_timer = self.loop.call_later(guard.head_timeout, self._head_late)

        def _waiting_for_head(self) -> None:
            guard.idle[self] = None
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(guard.head_timeout, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                guard.count("head_timeout")
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            guard.idle.pop(self, None)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline:
                guard.idle[self] = None  # kept alive, waiting: first to go at the cap

    return GuardedHttpToolsProtocol


__all__ = ["DISCARD_BYTES", "ConnectionGuard", "discard_body", "guarded_protocol", "raise_fd_limit"]

"""The I/O side of a token: byte pipes between a port and a `Session`.

A session is the sans-I/O half (a protocol `DeviceConnection` in front of the firmware):
bytes in, bytes out. The ports here only move bytes, on one asyncio loop:

- `PtyPort`: a pseudo-terminal in raw mode with a stable symlink that any pyserial client
  opens as if it were a USB token.
- `TcpPort`: a TCP listener, reached with pyserial's `socket://HOST:PORT`; each connection
  gets its own session on the same token.
- `Pacer`: optional line pacing, as if the bytes crossed a UART at a chosen baud rate.

PTY hang-up. When the last client closes the slave side of a pty, every read on the master
fails with EIO and poll reports POLLHUP for as long as no slave is open, so a naive reader
spins. We keep our own descriptor on the slave open for the port's whole life: the master
never sees a hang-up, and an idle port costs nothing. The price is that we cannot see a client
go away, so two things keep sessions apart: pyserial flushes the input queue when it opens a
port (stale replies from an earlier client are dropped), and a partial frame left by a client
that closed mid-frame is discarded after an inter-frame gap (`gap_s`), like a UART device's
receive timeout, so it cannot swallow the next client's first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

READ_CHUNK = 4096
MAX_PENDING_OUT = 64 * 1024
"""Replies a client does not read are dropped past this, as a UART would overrun."""


class Session(Protocol):
    """The sans-I/O device side of one connection."""

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return the bytes to send back (possibly empty)."""
        ...


SessionFactory = Callable[[], Session]


class Pacer:
    """Delays writes so bytes leave no faster than `baud` (10 bits a byte: 8N1)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, baud: int | None) -> None:
        if baud is not None and baud <= 0:
            raise ValueError("baud must be positive")
        self._loop = loop
        self._baud = baud
        self._free_at = 0.0

    def send(self, data: bytes, write: Callable[[bytes], None]) -> None:
        if not data:
            return
        if self._baud is None:
            write(data)
            return
        now = self._loop.time()
        start = max(now, self._free_at)
        self._free_at = start + len(data) * 10 / self._baud
        self._loop.call_at(self._free_at, write, data)


def publish_symlink(link: Path, target: str) -> None:
    """Point `link` at `target`, replacing any old link atomically (symlink + rename)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{id(link)}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def remove_symlink(link: Path, target: str) -> None:
    """Remove `link` if it still points at `target` (never someone else's newer link)."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            os.unlink(link)


class _GapSession:
    """A session that is replaced by a fresh one after `gap_s` of silence mid-stream."""

    def __init__(self, factory: SessionFactory, gap_s: float) -> None:
        self._factory = factory
        self._gap = gap_s
        self._session = factory()
        self._last = 0.0
        self._dirty = False

    def feed(self, data: bytes) -> bytes:
        now = time.monotonic()
        if self._dirty and now - self._last > self._gap:
            self._session = self._factory()  # drop a partial frame left by a gone client
        self._last = now
        # cheap test for "a frame is in progress": the last byte was not a delimiter
        self._dirty = not data.endswith(b"\x00")
        return self._session.feed(data)


class PtyPort:
    """A token on a pseudo-terminal. `path` is the slave device; `link` the stable symlink."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        session_factory: SessionFactory,
        *,
        link: Path | None = None,
        baud: int | None = None,
        gap_s: float = 0.25,
    ) -> None:
        self._loop = loop
        self._session = _GapSession(session_factory, gap_s)
        self._pacer = Pacer(loop, baud)
        self._pending = bytearray()
        self._writing = False
        self.link = link
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.path = os.ttyname(slave)
            if link is not None:
                publish_symlink(link, self.path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master: int | None = master
        self._slave: int | None = slave  # held open on purpose: see the module docstring
        loop.add_reader(master, self._on_readable)

    @property
    def url(self) -> str:
        """What a client opens: the symlink if there is one, else the slave device."""
        return str(self.link) if self.link is not None else self.path

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # cannot happen while we hold the slave; never spin
                self._loop.remove_reader(self._master)
                self._loop.call_later(0.1, self._rearm)
                return
            raise
        if data:
            self._pacer.send(self._session.feed(data), self._write)

    def _rearm(self) -> None:
        if self._master is not None:
            self._loop.add_reader(self._master, self._on_readable)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        if self._pending:
            if len(self._pending) + len(data) <= MAX_PENDING_OUT:
                self._pending += data
            return
        try:
            sent = os.write(self._master, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        if sent < len(data):
            self._pending += data[sent:][:MAX_PENDING_OUT]
            self._loop.add_writer(self._master, self._drain)

    def _drain(self) -> None:
        assert self._master is not None
        try:
            sent = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._pending)
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self._master)

    def close(self) -> None:
        """Remove the symlink and close both ends. Idempotent."""
        if self._master is None:
            return
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        if self.link is not None:
            remove_symlink(self.link, self.path)
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, session: Session, pacer: Pacer, live: set[_TcpProtocol]) -> None:
        self._session = session
        self._pacer = pacer
        self._live = live
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._live.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._pacer.send(self._session.feed(data), self._write)

    def _write(self, data: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > MAX_PENDING_OUT:
            return  # a client that does not read loses replies, as on a UART
        t.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._live.discard(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class TcpPort:
    """A token on a TCP listener; pyserial reaches it as `socket://HOST:PORT`."""

    def __init__(
        self, server: asyncio.Server, host: str, port: int, live: set[_TcpProtocol]
    ) -> None:
        self._server = server
        self._live = live
        self.host = host
        self.port = port

    @classmethod
    async def start(
        cls,
        session_factory: SessionFactory,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        baud: int | None = None,
    ) -> TcpPort:
        loop = asyncio.get_running_loop()
        live: set[_TcpProtocol] = set()
        server = await loop.create_server(
            lambda: _TcpProtocol(session_factory(), Pacer(loop, baud), live), host, port,
            reuse_address=True,
        )
        bound = server.sockets[0].getsockname()[1]
        return cls(server, host, int(bound), live)

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    async def close(self) -> None:
        self._server.close()
        for proto in list(self._live):  # 3.11's Server.close() leaves connections open
            proto.abort()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run

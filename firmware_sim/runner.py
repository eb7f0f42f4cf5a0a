"""A running token: firmware + state file + clock, and the ports that expose it.

From Python (tests, the demo) the simplest way in is `firmware_sim.background`:

    with serve_token(model="keyfob", seed=b"...", qa=True) as running:
        port = serial.serial_for_url(running.url, timeout=1)

Here are the building blocks: `open_token()` makes a `Token` (loading or creating its state
file), `Token.session()` is the sans-I/O device side of one connection, `MemoryPort` is an
in-process pyserial-like port on a token (no OS resources), and `TokenRunner` puts a token on
a PTY and/or a TCP port on the running asyncio loop.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from firmware_sim import device
from firmware_sim.clock import Crystal
from firmware_sim.models import DEFAULT_MODEL, PRESETS, Model, build_model
from firmware_sim.ports import PtyPort, TcpPort
from firmware_sim.storage import StateDir, StorageError, TokenFile
from firmware_sim.token import FirmwareState, check_serial, new_token
from protocol import (
    BadRequest,
    DeviceConnection,
    ErrorCode,
    ErrorReply,
    Hash,
    Kind,
    NeedData,
    Reply,
    Request,
)

Now = Callable[[], int]
log = logging.getLogger(__name__)


def wall_ms() -> int:
    """True time, Unix milliseconds: the only clock the emulator reads."""
    return time.time_ns() // 1_000_000


def default_link(serial: str) -> Path:
    """Where a token's PTY symlink goes unless told otherwise: /tmp/foblab/<SERIAL>."""
    return Path(tempfile.gettempdir()) / "foblab" / serial


class Token:
    """One token: its state, its model, its (locked) state file and the source of true time."""

    def __init__(
        self,
        state: FirmwareState,
        model: Model,
        *,
        file: TokenFile | None = None,
        now: Now = wall_ms,
        restored: bool = False,
    ) -> None:
        self.state = state
        self.model = model
        self.file = file
        self.now = now
        self.restored = restored
        """True when the state came from an existing state file (options were ignored)."""

    @property
    def serial(self) -> str:
        return self.state.serial

    def handle(self, request: Request) -> Reply:
        """Run the firmware; persist before replying when it says so."""
        outcome = device.handle(self.state, self.model, request, self.now())
        if outcome.persist and self.file is not None and outcome.state is not self.state:
            try:
                self.file.save(outcome.state.to_dict())
            except (OSError, StorageError) as exc:
                # nothing was shown: the old state stands, so no code is ever lost or reused
                return device.error_reply(ErrorCode.BUSY, f"cannot save state: {exc}")
        self.state = outcome.state
        return outcome.reply

    def session(self) -> TokenSession:
        return TokenSession(self)

    def close(self) -> None:
        """Release the state file's lock."""
        if self.file is not None:
            self.file.close()


class TokenSession:
    """The device side of one connection to a token: bytes in, reply bytes out."""

    def __init__(self, token: Token) -> None:
        self._token = token
        self.connection = DeviceConnection()

    def feed(self, data: bytes) -> bytes:
        conn = self.connection
        conn.receive_data(data)
        out = bytearray()
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                return bytes(out)
            if isinstance(event, BadRequest):
                out += conn.send(event, event.error_reply())
                continue
            try:
                out += conn.send(event, self._token.handle(event.request))
            except Exception:  # a firmware bug, or a reply it cannot encode: the port stays up
                log.exception("token %s failed on %r", self._token.serial, event.request)
                out += conn.send(event, ErrorReply(ErrorCode.BUSY, "internal error"))


def open_token(
    model: str | Model = DEFAULT_MODEL,
    *,
    serial: str | None = None,
    seed: bytes | None = None,
    kind: Kind | str | None = None,
    hash: Hash | str | None = None,
    digits: int | None = None,
    period: int | None = None,
    counter: int = 0,
    crystal: Crystal | None = None,
    qa: bool = False,
    state_dir: str | Path | None = None,
    durable: bool = True,
    now: Now = wall_ms,
    rng: random.Random | None = None,
) -> Token:
    """A token, from its state file in `state_dir` if it has one, else new from the factory.

    Without `seed` a new token is blank (provision it with PROVISION). With `state_dir`, the
    token's file is locked for as long as the token lives (`Token.close()`): a second
    emulator of the same serial gets `TokenBusyError`. An existing state file wins over the
    options (a real token cannot be reseeded by restarting it); `qa` always applies.
    """
    if isinstance(model, Model):
        base = model
        if any(v is not None for v in (kind, hash, digits, period)):
            raise ValueError("overrides need a model name")
    else:
        base = build_model(model, kind=kind, hash=hash, digits=digits, period=period)
    serial = serial or base.make_serial(rng or random.Random())
    check_serial(serial)  # before its state file is named after it
    file = StateDir(state_dir, durable=durable).open(serial) if state_dir is not None else None
    try:
        if file is not None and file.exists():
            try:
                state = FirmwareState.from_dict(file.load(), qa_mode=qa)
            except (KeyError, TypeError, ValueError) as exc:  # edited by hand, or not ours
                raise StorageError(f"token state {file.path} is damaged: {exc!r}") from None
            stored_model = PRESETS.get(state.model, base)
            return Token(state, stored_model, file=file, now=now, restored=True)
        state = new_token(base, now(), serial=serial, seed=seed, counter=counter, crystal=crystal,
                          qa_mode=qa)
        if file is not None:
            file.save(state.to_dict())
    except BaseException:
        if file is not None:
            file.close()
        raise
    return Token(state, base, file=file, now=now)


class MemoryPort:
    """An in-process, pyserial-like port on a token: `write()` runs the firmware at once,
    `read()` returns its reply bytes. For tests; no threads, no OS resources."""

    def __init__(self, token: Token) -> None:
        self._session = token.session()
        self._rx = bytearray()
        self.timeout: float | None = 0.0

    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def write(self, data: bytes) -> int:
        self._rx += self._session.feed(bytes(data))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        data = bytes(self._rx[:size])
        del self._rx[:size]
        return data

    def close(self) -> None:
        self._rx.clear()


class TokenRunner:
    """A token on a PTY (with a stable symlink) and/or a TCP port, on the running loop."""

    def __init__(
        self,
        token: Token,
        *,
        pty: bool = True,
        pty_link: Path | None = None,
        tcp: tuple[str, int] | None = None,
        baud: int | None = None,
    ) -> None:
        self.token = token
        self._want_pty = pty
        self._link = pty_link if pty_link is not None else default_link(token.serial)
        self._tcp_addr = tcp
        self._baud = baud
        self.pty: PtyPort | None = None
        self.tcp: TcpPort | None = None

    async def start(self) -> TokenRunner:
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            if self._want_pty:
                self.pty = PtyPort(loop, self.token.session, link=self._link, baud=self._baud)
            if self._tcp_addr is not None:
                host, port = self._tcp_addr
                self.tcp = await TcpPort.start(self.token.session, host, port, baud=self._baud)
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def url(self) -> str:
        """The port a client opens: the PTY symlink, else `socket://HOST:PORT`."""
        if self.pty is not None:
            return self.pty.url
        if self.tcp is not None:
            return self.tcp.url
        raise RuntimeError("the runner has no port open")

    async def close(self) -> None:
        """Close the ports, remove the symlink, release the state file. Idempotent."""
        if self.pty is not None:
            self.pty.close()
        if self.tcp is not None:
            await self.tcp.close()
        self.token.close()

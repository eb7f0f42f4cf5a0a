"""Host and device connections: messages in, bytes out, and back (sans-I/O, after h11).

Neither side touches a port, a socket, a thread or a clock. The caller moves bytes:

    device = DeviceConnection()
    device.receive_data(chunk)
    while not isinstance(event := device.next_event(), NeedData):
        reply = firmware.handle(event.request) if isinstance(event, RequestReceived) else ...
        port.write(device.send(event, reply))

`TokenClient` at the bottom is the one blocking helper: it takes the I/O as two callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from protocol.codec import Frame, decode_reply, decode_request, encode_reply, encode_request
from protocol.errors import LocalProtocolError, PayloadError, ProtocolError, RemoteProtocolError
from protocol.framing import DropStats, FrameBuffer, encode_frame
from protocol.messages import (
    ClockReply,
    ClockRequest,
    Command,
    DisplayReply,
    DisplayRequest,
    ErrorCode,
    ErrorReply,
    InfoReply,
    InfoRequest,
    PeekReply,
    PeekRequest,
    PressReply,
    PressRequest,
    Reply,
    Request,
)


class NeedData:
    """Marker event: no complete message yet; feed more bytes."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


# ------------------------------------------------------------------ device side


@dataclass(frozen=True, slots=True)
class RequestReceived:
    seq: int
    command: Command
    request: Request


@dataclass(frozen=True, slots=True)
class BadRequest:
    """An intact frame whose request cannot be understood: answer it with an ErrorReply."""

    seq: int
    command: int
    error: ErrorCode
    detail: str

    def error_reply(self) -> ErrorReply:
        return ErrorReply(code=self.error, detail=self.detail)


DeviceEvent = RequestReceived | BadRequest | NeedData


class DeviceConnection:
    """The token's side: bytes in, requests out; replies in, bytes out."""

    def __init__(self) -> None:
        self._buffer = FrameBuffer()
        self.ignored_replies = 0  # frames with the reply bit: a host never sends those

    @property
    def dropped(self) -> DropStats:
        return self._buffer.dropped

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer.feed(data)

    def next_event(self) -> DeviceEvent:
        while (frame := self._buffer.next_frame()) is not None:
            if frame.is_reply:
                self.ignored_replies += 1
                continue
            try:
                request = decode_request(frame.command, frame.payload)
            except PayloadError as exc:
                return BadRequest(frame.seq, frame.command, ErrorCode(exc.error_code), exc.detail)
            return RequestReceived(frame.seq, Command(frame.command), request)
        return NEED_DATA

    def send(self, event: RequestReceived | BadRequest, reply: Reply) -> bytes:
        """The bytes that answer `event` with `reply` (echoing its sequence number)."""
        if isinstance(event, BadRequest):
            if not isinstance(reply, ErrorReply):
                raise LocalProtocolError("a bad request can only be answered with an ErrorReply")
            command, payload = encode_reply(Command.ERROR, reply)
        else:
            command, payload = encode_reply(event.command, reply)
        return encode_frame(Frame(seq=event.seq, command=command, payload=payload))


# ------------------------------------------------------------------ host side


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    seq: int
    command: Command  # the request command this answers
    reply: Reply  # an ErrorReply when the token refused


@dataclass(frozen=True, slots=True)
class UnexpectedReply:
    """An intact frame that answers nothing we are waiting for (stale, foreign or malformed)."""

    seq: int
    command: int
    reason: str


HostEvent = ReplyReceived | UnexpectedReply | NeedData


class HostConnection:
    """The client's side: requests in, bytes out; bytes in, replies out.

    Sequence numbers count up from `first_seq` modulo 256. Each request stays outstanding
    until its reply arrives or the caller `abandon`s it (after a timeout); a reply whose
    sequence number matches no outstanding request is reported as UnexpectedReply.
    """

    def __init__(self, first_seq: int = 0) -> None:
        self._buffer = FrameBuffer()
        self._next_seq = first_seq & 0xFF
        self._outstanding: dict[int, Command] = {}

    @property
    def dropped(self) -> DropStats:
        return self._buffer.dropped

    @property
    def outstanding(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    def send(self, request: Request) -> tuple[int, bytes]:
        """Assign the next sequence number; return it and the bytes to write."""
        command, payload = encode_request(request)
        if len(self._outstanding) >= 256:
            raise LocalProtocolError("256 requests outstanding: abandon some first")
        while self._next_seq in self._outstanding:
            self._next_seq = (self._next_seq + 1) & 0xFF
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFF
        self._outstanding[seq] = command
        return seq, encode_frame(Frame(seq=seq, command=command, payload=payload))

    def abandon(self, seq: int) -> None:
        """Stop waiting for `seq`: a late reply to it becomes an UnexpectedReply."""
        self._outstanding.pop(seq, None)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer.feed(data)

    def next_event(self) -> HostEvent:
        frame = self._buffer.next_frame()
        if frame is None:
            return NEED_DATA
        if not frame.is_reply:
            return UnexpectedReply(frame.seq, frame.command, "not a reply")
        request_command = self._outstanding.get(frame.seq)
        if request_command is None:
            return UnexpectedReply(
                frame.seq, frame.command, f"no request with sequence number {frame.seq}"
            )
        try:
            reply = decode_reply(frame.command, frame.payload, request_command)
        except PayloadError as exc:
            return UnexpectedReply(frame.seq, frame.command, exc.detail)
        del self._outstanding[frame.seq]
        return ReplyReceived(frame.seq, request_command, reply)


# ------------------------------------------------------------------ a blocking client


class TokenRefused(ProtocolError):
    """The token answered with ERROR."""

    def __init__(self, reply: ErrorReply, command: Command) -> None:
        detail = f": {reply.detail}" if reply.detail else ""
        super().__init__(f"token refused {command.name}: {reply.code.name.lower()}{detail}")
        self.reply = reply
        self.code = reply.code
        self.command = command


class NoReply(ProtocolError):
    """Nothing valid came back before the port's read timeout."""


_R = TypeVar("_R")


class TokenClient:
    """Request/reply over any byte pipe, one request at a time.

    `read()` returns the bytes available (waiting up to the port's timeout) or b"" when that
    timeout passed with nothing; `write(data)` sends. For pyserial:
    `TokenClient(pyserial_reader(port), port.write)` with `port.timeout` set.
    Stale replies (to requests that timed out) are skipped; `max_bytes` of junk without the
    reply we wait for is a RemoteProtocolError, so a chattering line cannot hold us forever.
    """

    def __init__(
        self,
        read: Callable[[], bytes],
        write: Callable[[bytes], object],
        *,
        max_bytes: int = 65536,
    ) -> None:
        self._read = read
        self._write = write
        self._max_bytes = max_bytes
        self.connection = HostConnection()

    def call(self, request: Request) -> Reply:
        """Send `request`, return its reply. Raises TokenRefused, NoReply, RemoteProtocolError."""
        seq, data = self.connection.send(request)
        self._write(data)
        received = 0
        last_problem = ""
        try:
            while True:
                event = self.connection.next_event()
                if isinstance(event, ReplyReceived):
                    if event.seq != seq:  # a late answer to an earlier, abandoned request
                        continue
                    if isinstance(event.reply, ErrorReply):
                        raise TokenRefused(event.reply, event.command)
                    return event.reply
                if isinstance(event, UnexpectedReply):
                    last_problem = event.reason
                    continue
                chunk = self._read()
                if not chunk:
                    hint = f" (last bad frame: {last_problem})" if last_problem else ""
                    raise NoReply(f"no reply to {type(request).__name__}{hint}")
                received += len(chunk)
                if received > self._max_bytes:
                    raise RemoteProtocolError(f"no valid reply in {received} bytes")
                self.connection.receive_data(chunk)
        finally:
            self.connection.abandon(seq)

    def _expect(self, request: Request, cls: type[_R]) -> _R:
        reply = self.call(request)
        if not isinstance(reply, cls):  # the codec guarantees this; kept for type narrowing
            raise RemoteProtocolError(f"expected {cls.__name__}, got {type(reply).__name__}")
        return reply

    def info(self) -> InfoReply:
        return self._expect(InfoRequest(), InfoReply)

    def press(self) -> PressReply:
        return self._expect(PressRequest(), PressReply)

    def display(self) -> DisplayReply:
        return self._expect(DisplayRequest(), DisplayReply)

    def clock(self) -> ClockReply:
        return self._expect(ClockRequest(), ClockReply)

    def peek(self, count: int = 1) -> PeekReply:
        return self._expect(PeekRequest(count), PeekReply)

    def clock_command(self, request: Request) -> ClockReply:
        """Any QA command answered with the clock's new state (SET_DRIFT, AGE, ...)."""
        return self._expect(request, ClockReply)

    def info_command(self, request: Request) -> InfoReply:
        """PROVISION, BATTERY or FACTORY_RESET: answered with INFO."""
        return self._expect(request, InfoReply)


def pyserial_reader(port: Any) -> Callable[[], bytes]:
    """A `read` for TokenClient from a pyserial-like port: what is waiting, or one byte by timeout.

    Duck-typed (needs `.read(n)` and `.in_waiting`), so this module imports no I/O library.
    """

    def read() -> bytes:
        data: bytes = port.read(max(1, port.in_waiting))
        return data

    return read

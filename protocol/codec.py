"""Bytes <-> messages: the frame layout and every payload, declared with `construct`.

This is the only module that imports `construct`. Every struct is compiled once at import
(construct's compiler turns a declaration into straight-line Python, several times faster
than the interpreted form). The layout is documented byte by byte in docs/protocol.md.

Decoded frame (before COBS):

    version:u8  seq:u8  command:u8  length:u16be  payload[length]  crc:u16be

The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR)
over every byte before it; `binascii.crc_hqx(data, 0xFFFF)` computes exactly that in C.
"""

from __future__ import annotations

import binascii
import struct as _struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from construct import (
    Compiled,
    ConstructError,
    ExprAdapter,
    GreedyBytes,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32sb,
    Int64sb,
    Int64ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
)

from protocol.errors import LocalProtocolError, PayloadError, RemoteProtocolError
from protocol.messages import (
    COMMAND_OF,
    PROTOCOL_VERSION,
    REPLY_BIT,
    REPLY_TYPES,
    REQUEST_TYPES,
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    ClockReply,
    ClockRequest,
    Command,
    DisplayReply,
    DisplayRequest,
    DriftSettings,
    ErrorCode,
    ErrorReply,
    FactoryResetRequest,
    FreezeRequest,
    InfoReply,
    InfoRequest,
    PeekReply,
    PeekRequest,
    PressReply,
    PressRequest,
    ProvisionRequest,
    Reply,
    Request,
    SetDriftRequest,
    SetTimeRequest,
    UnfreezeRequest,
)
from protocol.vocabulary import Hash, Kind, TemperatureMode

MAX_FRAME: Final = 512  # decoded bytes: header + payload + CRC
HEADER_SIZE: Final = 5
CRC_SIZE: Final = 2
MAX_PAYLOAD: Final = MAX_FRAME - HEADER_SIZE - CRC_SIZE


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE. Check value: crc16(b"123456789") == 0x29B1."""
    return binascii.crc_hqx(data, 0xFFFF)


# ------------------------------------------------------------------ the frame

FRAME_BODY: Final = Struct(
    "version" / Int8ub,
    "seq" / Int8ub,
    "command" / Int8ub,
    "payload" / Prefixed(Int16ub, GreedyBytes),
)
# The whole decoded frame, for documentation and the doc-vector tests; the hot path builds
# FRAME_BODY and appends the CRC itself, which is three times faster than construct's
# RawCopy+Checksum pair.
FRAME: Final = Struct(*FRAME_BODY.subcons, "crc" / Int16ub, Terminated)

_FRAME_BODY = FRAME_BODY.compile()


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. `command` has `REPLY_BIT` set on replies."""

    seq: int
    command: int
    payload: bytes
    version: int = PROTOCOL_VERSION

    @property
    def is_reply(self) -> bool:
        return bool(self.command & REPLY_BIT)


class FrameError(RemoteProtocolError):
    """A decoded frame that must be dropped. `reason` is one of the FrameBuffer counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def encode_frame_body(frame: Frame) -> bytes:
    """The decoded frame: header, payload, CRC (no COBS, no delimiter)."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    if not (0 <= frame.seq <= 255 and 0 <= frame.command <= 255):
        raise LocalProtocolError("sequence number and command must fit in a byte")
    body: bytes = _FRAME_BODY.build(
        {
            "version": frame.version,
            "seq": frame.seq,
            "command": frame.command,
            "payload": frame.payload,
        }
    )
    return body + crc16(body).to_bytes(2, "big")


def decode_frame_body(data: bytes) -> Frame:
    """Check and split a decoded frame. Raises FrameError (never anything else)."""
    if len(data) > MAX_FRAME:
        raise FrameError("oversize", f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    if len(data) < HEADER_SIZE + CRC_SIZE:
        raise FrameError("truncated", f"frame of {len(data)} bytes is shorter than a header")
    if crc16(data[:-CRC_SIZE]) != int.from_bytes(data[-CRC_SIZE:], "big"):
        raise FrameError("bad_crc", "CRC mismatch")
    if data[0] != PROTOCOL_VERSION:
        raise FrameError("bad_version", f"unknown protocol version {data[0]}")
    length = int.from_bytes(data[3:5], "big")
    if length != len(data) - HEADER_SIZE - CRC_SIZE:
        raise FrameError("bad_length", f"length field {length} disagrees with the frame")
    body = _FRAME_BODY.parse(data[:-CRC_SIZE])
    return Frame(seq=body.seq, command=body.command, payload=body.payload, version=body.version)


# ------------------------------------------------------------------ payloads


def _fixed(wire: Any, scale: int) -> ExprAdapter:
    """A signed decimal carried as an integer in units of 1/scale."""
    return ExprAdapter(wire, lambda obj, ctx: obj / scale, lambda obj, ctx: round(obj * scale))


ASCII = PascalString(Int8ub, "ascii")

EMPTY: Final = Struct(Terminated)
DRIFT: Final = Struct(
    "ppm" / _fixed(Int32sb, 1000),  # milli-ppm
    "aging_ppm_per_year" / _fixed(Int32sb, 1000),  # milli-ppm per year
    "temperature_mode" / Int8ub,
    "temperature_c" / _fixed(Int16sb, 100),  # centi-degrees Celsius
    "temperature_swing_c" / _fixed(Int16ub, 100),
)
PROVISION: Final = Struct(
    "kind" / Int8ub,
    "hash" / Int8ub,
    "digits" / Int8ub,
    "period" / Int16ub,
    "counter" / Int64ub,
    "seed" / Prefixed(Int8ub, GreedyBytes),
    Terminated,
)
SET_DRIFT: Final = Struct("drift" / DRIFT, Terminated)
ADJUST_OFFSET: Final = Struct("delta_ms" / Int64sb, Terminated)
AGE: Final = Struct("span_ms" / Int64ub, Terminated)
SET_TIME: Final = Struct("time_ms" / Int64sb, Terminated)
PEEK: Final = Struct("count" / Int8ub, Terminated)
BATTERY: Final = Struct("dead" / Int8ub, Terminated)

INFO_REPLY: Final = Struct(
    "serial" / ASCII,
    "model" / ASCII,
    "firmware" / ASCII,
    "protocol_version" / Int8ub,
    "kind" / Int8ub,
    "hash" / Int8ub,
    "digits" / Int8ub,
    "period" / Int16ub,
    "flags" / Int8ub,  # bit 0 provisioned, 1 locked, 2 QA mode, 3 battery ok
    Terminated,
)
CODE_REPLY: Final = Struct("code" / ASCII, "seconds_left" / Int16ub, Terminated)
CLOCK_REPLY: Final = Struct(
    "token_time_ms" / Int64sb,
    "offset_ms" / Int64sb,
    "drift" / DRIFT,
    "frozen" / Int8ub,
    Terminated,
)
PEEK_REPLY: Final = Struct(
    "step" / Int64ub,
    "seconds_left" / Int16ub,
    "codes" / PrefixedArray(Int8ub, ASCII),
    Terminated,
)
ERROR_REPLY: Final = Struct("code" / Int8ub, "detail" / PascalString(Int8ub, "utf8"), Terminated)

FLAG_PROVISIONED: Final = 0x01
FLAG_LOCKED: Final = 0x02
FLAG_QA_MODE: Final = 0x04
FLAG_BATTERY_OK: Final = 0x08

_T = TypeVar("_T")


def _enum(enum: Callable[[int], _T], value: int, what: str) -> _T:
    try:
        return enum(value)
    except ValueError:
        raise PayloadError(ErrorCode.BAD_ARGUMENT, f"unknown {what} {value}") from None


def _drift_in(c: Any) -> DriftSettings:
    return DriftSettings(
        ppm=c.ppm,
        aging_ppm_per_year=c.aging_ppm_per_year,
        temperature_mode=_enum(TemperatureMode.from_wire, c.temperature_mode,
                               "temperature mode"),
        temperature_c=c.temperature_c,
        temperature_swing_c=c.temperature_swing_c,
    )


def _drift_out(d: DriftSettings) -> dict[str, Any]:
    return {
        "ppm": d.ppm,
        "aging_ppm_per_year": d.aging_ppm_per_year,
        "temperature_mode": d.temperature_mode.wire,
        "temperature_c": d.temperature_c,
        "temperature_swing_c": d.temperature_swing_c,
    }


def _bool(value: int, what: str) -> bool:
    if value not in (0, 1):
        raise PayloadError(ErrorCode.BAD_ARGUMENT, f"{what} must be 0 or 1, not {value}")
    return bool(value)


# (struct, message -> build dict, parsed container -> message) for every request and reply type.
_Codec = tuple[Compiled, Callable[[Any], dict[str, Any]], Callable[[Any], Any]]


def _empty(cls: type[_T]) -> tuple[Compiled, Callable[[Any], dict[str, Any]], Callable[[Any], _T]]:
    return EMPTY.compile(), lambda m: {}, lambda c: cls()


_REQUEST_CODECS: Final[dict[type[Any], _Codec]] = {
    InfoRequest: _empty(InfoRequest),
    PressRequest: _empty(PressRequest),
    DisplayRequest: _empty(DisplayRequest),
    ClockRequest: _empty(ClockRequest),
    FreezeRequest: _empty(FreezeRequest),
    UnfreezeRequest: _empty(UnfreezeRequest),
    FactoryResetRequest: _empty(FactoryResetRequest),
    ProvisionRequest: (
        PROVISION.compile(),
        lambda m: {
            "kind": m.kind.wire,
            "hash": m.hash.wire,
            "digits": m.digits,
            "period": m.period,
            "counter": m.counter,
            "seed": m.seed,
        },
        lambda c: ProvisionRequest(
            seed=c.seed,
            kind=_enum(Kind.from_wire, c.kind, "kind"),
            hash=_enum(Hash.from_wire, c.hash, "hash"),
            digits=c.digits,
            period=c.period,
            counter=c.counter,
        ),
    ),
    SetDriftRequest: (
        SET_DRIFT.compile(),
        lambda m: {"drift": _drift_out(m.drift)},
        lambda c: SetDriftRequest(drift=_drift_in(c.drift)),
    ),
    AdjustOffsetRequest: (
        ADJUST_OFFSET.compile(),
        lambda m: {"delta_ms": m.delta_ms},
        lambda c: AdjustOffsetRequest(delta_ms=c.delta_ms),
    ),
    AgeRequest: (
        AGE.compile(),
        lambda m: {"span_ms": m.span_ms},
        lambda c: AgeRequest(span_ms=c.span_ms),
    ),
    SetTimeRequest: (
        SET_TIME.compile(),
        lambda m: {"time_ms": m.time_ms},
        lambda c: SetTimeRequest(time_ms=c.time_ms),
    ),
    PeekRequest: (
        PEEK.compile(),
        lambda m: {"count": m.count},
        lambda c: PeekRequest(count=c.count),
    ),
    BatteryRequest: (
        BATTERY.compile(),
        lambda m: {"dead": int(m.dead)},
        lambda c: BatteryRequest(dead=_bool(c.dead, "dead")),
    ),
}

_CODE_REPLY = CODE_REPLY.compile()
_REPLY_CODECS: Final[dict[type[Any], _Codec]] = {
    InfoReply: (
        INFO_REPLY.compile(),
        lambda m: {
            "serial": m.serial,
            "model": m.model,
            "firmware": m.firmware,
            "protocol_version": m.protocol_version,
            "kind": m.kind.wire,
            "hash": m.hash.wire,
            "digits": m.digits,
            "period": m.period,
            "flags": (FLAG_PROVISIONED if m.provisioned else 0)
            | (FLAG_LOCKED if m.locked else 0)
            | (FLAG_QA_MODE if m.qa_mode else 0)
            | (FLAG_BATTERY_OK if m.battery_ok else 0),
        },
        lambda c: InfoReply(
            serial=c.serial,
            model=c.model,
            firmware=c.firmware,
            protocol_version=c.protocol_version,
            kind=_enum(Kind.from_wire, c.kind, "kind"),
            hash=_enum(Hash.from_wire, c.hash, "hash"),
            digits=c.digits,
            period=c.period,
            provisioned=bool(c.flags & FLAG_PROVISIONED),
            locked=bool(c.flags & FLAG_LOCKED),
            qa_mode=bool(c.flags & FLAG_QA_MODE),
            battery_ok=bool(c.flags & FLAG_BATTERY_OK),
        ),
    ),
    PressReply: (
        _CODE_REPLY,
        lambda m: {"code": m.code, "seconds_left": m.seconds_left},
        lambda c: PressReply(code=c.code, seconds_left=c.seconds_left),
    ),
    DisplayReply: (
        _CODE_REPLY,
        lambda m: {"code": m.code, "seconds_left": m.seconds_left},
        lambda c: DisplayReply(code=c.code, seconds_left=c.seconds_left),
    ),
    ClockReply: (
        CLOCK_REPLY.compile(),
        lambda m: {
            "token_time_ms": m.token_time_ms,
            "offset_ms": m.offset_ms,
            "drift": _drift_out(m.drift),
            "frozen": int(m.frozen),
        },
        lambda c: ClockReply(
            token_time_ms=c.token_time_ms,
            offset_ms=c.offset_ms,
            drift=_drift_in(c.drift),
            frozen=_bool(c.frozen, "frozen"),
        ),
    ),
    PeekReply: (
        PEEK_REPLY.compile(),
        lambda m: {"step": m.step, "seconds_left": m.seconds_left, "codes": list(m.codes)},
        lambda c: PeekReply(step=c.step, seconds_left=c.seconds_left, codes=tuple(c.codes)),
    ),
    ErrorReply: (
        ERROR_REPLY.compile(),
        lambda m: {"code": int(m.code), "detail": m.detail},
        lambda c: ErrorReply(code=_enum(ErrorCode, c.code, "error code"), detail=c.detail),
    ),
}


def _build(codec: _Codec, message: Any) -> bytes:
    struct, out, _ = codec
    try:
        data: bytes = struct.build(out(message))
    except (
        ConstructError,
        _struct.error,
        ValueError,
        TypeError,
        OverflowError,
        UnicodeError,
    ) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    if len(data) > MAX_PAYLOAD:
        raise LocalProtocolError(f"{type(message).__name__} payload exceeds {MAX_PAYLOAD} bytes")
    return data


# Structs without length-prefixed fields: a short payload already fails to parse.
_FIXED_SIZE: Final = frozenset(
    codec[0] for cls, codec in _REQUEST_CODECS.items() if cls not in (ProvisionRequest,)
)


def _parse(codec: _Codec, payload: bytes, what: str) -> Any:
    struct, _, into = codec
    try:
        container = struct.parse(payload)
        # construct's compiled parsers read length-prefixed fields without checking that the
        # bytes were there; building the result again and comparing catches a short payload.
        exact = struct in _FIXED_SIZE or struct.build(container) == payload
    except UnicodeError:
        raise PayloadError(ErrorCode.BAD_ARGUMENT, f"{what}: text is not valid") from None
    except (ConstructError, _struct.error, IndexError) as exc:
        raise PayloadError(
            ErrorCode.BAD_LENGTH, f"{what}: payload of {len(payload)} bytes does not fit"
        ) from exc
    if not exact:
        raise PayloadError(
            ErrorCode.BAD_LENGTH, f"{what}: payload of {len(payload)} bytes is short"
        )
    return into(container)


def encode_request(request: Request) -> tuple[Command, bytes]:
    """The command byte and payload that carry `request`."""
    codec = _REQUEST_CODECS.get(type(request))
    if codec is None:
        raise LocalProtocolError(f"{type(request).__name__} is not a request")
    return COMMAND_OF[type(request)], _build(codec, request)


def decode_request(command: int, payload: bytes) -> Request:
    """Parse a request payload. Raises PayloadError carrying the ErrorCode to answer with."""
    try:
        cmd = Command(command)
        cls = REQUEST_TYPES[cmd]
    except (ValueError, KeyError):
        raise PayloadError(ErrorCode.UNKNOWN_COMMAND, f"unknown command 0x{command:02x}") from None
    result: Request = _parse(_REQUEST_CODECS[cls], payload, cmd.name)
    return result


def encode_reply(command: Command, reply: Reply) -> tuple[int, bytes]:
    """The reply's command byte (request command | 0x80, or 0xFF for ERROR) and payload."""
    if isinstance(reply, ErrorReply):
        return Command.ERROR | REPLY_BIT, _build(_REPLY_CODECS[ErrorReply], reply)
    expected = REPLY_TYPES.get(command)
    if expected is None or not isinstance(reply, expected):
        raise LocalProtocolError(f"{type(reply).__name__} does not answer {command!r}")
    return command | REPLY_BIT, _build(_REPLY_CODECS[expected], reply)


def decode_reply(command: int, payload: bytes, request_command: Command) -> Reply:
    """Parse a reply payload that answers `request_command`. Raises PayloadError."""
    if command == Command.ERROR | REPLY_BIT:
        error: ErrorReply = _parse(_REPLY_CODECS[ErrorReply], payload, "ERROR")
        return error
    if command != request_command | REPLY_BIT:
        raise PayloadError(
            ErrorCode.UNKNOWN_COMMAND,
            f"reply command 0x{command:02x} does not answer {request_command.name}",
        )
    cls = REPLY_TYPES[request_command]
    reply: Reply = _parse(_REPLY_CODECS[cls], payload, f"{request_command.name} reply")
    return reply

"""Shared command-line helpers: argument types (durations, times, hex bytes, host:port) and
the one-line failure every command ends with.

Generic on purpose (no token or validator knowledge), so every `foblab` command parses the
same way:

- durations: `90s`, `15m`, `12h`, `365d`, `250ms`, `1.5h`, or plain seconds; signed where
  the command allows it (`-90s`);
- times: Unix seconds (`1700000000`, `1700000000.25`) or ISO 8601 (`2033-05-18T03:33:20Z`;
  without a zone it is UTC);
- hex: `3132...`, `0x3132...`, spaces and colons ignored;
- host:port: `127.0.0.1:7001`, `[::1]:7001`.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import click


def fail(message: object, status: int = 1) -> NoReturn:
    """`foblab: error: MESSAGE` on one line of stderr, then exit with `status`."""
    click.echo(f"foblab: error: {' '.join(str(message).split())}", err=True)
    sys.exit(status)


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?$")


def parse_duration_ms(text: str, *, signed: bool = False) -> int:
    """`90s` -> 90000. Raises ValueError."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 12h, 365d)")
    sign, number, unit = m.groups()
    if sign == "-" and not signed:
        raise ValueError(f"duration must not be negative: {text!r}")
    ms = Decimal(number) * _UNITS_MS[unit or "s"]
    value = int(ms.to_integral_value())
    return -value if sign == "-" else value


def parse_time_ms(text: str) -> int:
    """Unix seconds or ISO 8601 -> Unix milliseconds. Raises ValueError."""
    text = text.strip()
    try:
        return int((Decimal(text) * 1000).to_integral_value())
    except InvalidOperation:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use Unix seconds or ISO 8601, e.g. 2033-05-18T03:33:20Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_time_ms(ms: int) -> str:
    """Unix milliseconds -> ISO 8601 UTC with milliseconds, e.g. 2033-05-18T03:33:20.000Z."""
    when = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_hex(text: str) -> bytes:
    """Hex digits -> bytes. Raises ValueError."""
    cleaned = re.sub(r"[\s:]", "", text)
    cleaned = cleaned[2:] if cleaned.lower().startswith("0x") else cleaned
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"not hex: {text!r}") from None
    if not data:
        raise ValueError("empty hex value")
    return data


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class _Type(click.ParamType[Any, Any]):
    def __init__(self, name: str, parse: Any) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Type("duration", parse_duration_ms)
"""A non-negative duration, converted to milliseconds."""
SIGNED_DURATION = _Type("duration", lambda s: parse_duration_ms(s, signed=True))
"""A duration that may be negative (`-90s`), in milliseconds."""
TIME = _Type("time", parse_time_ms)
"""A Unix time or ISO 8601 timestamp, in Unix milliseconds."""
HEX = _Type("hex", parse_hex)
HOST_PORT = _Type("host:port", parse_host_port)

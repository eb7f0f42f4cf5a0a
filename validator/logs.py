"""The daemon's log: one format for every line on stderr, and a request id per request.

    from validator.logs import configure
    configure("json", "info")     # or "text"; "auto": JSON unless stderr is a terminal

Every record, from foblab's loggers, uvicorn's and Python's warnings alike, goes through one
handler and one formatter. A JSON line is one object:

    {"ts": "2026-11-30T17:39:32.123Z", "level": "info", "logger": "foblab.access",
     "msg": "request", "request_id": "5f0c...", "method": "POST", "route": "/v1/verify", ...}

A text line holds the same fields, `key=value` after the message, one record per line
(a newline in a message is written as `\\n`). The structured fields a record carries come
from `extra={"fields": {...}}`, and share their names with the audit log's export
(`ts`, `user`, `serial`, `action`, `result`, `reason`, `via`, `client`): see FIELDS.

The request id: the HTTP middleware and the RADIUS door set REQUEST_ID for the duration of
one request, so every line logged while it is handled carries the same `request_id`
(contextvars follow the request into worker threads). The HTTP answer carries it in
`X-Request-Id`; an incoming `X-Request-Id` is kept only from a trusted proxy and only if it
is `incoming_request_id`-sane (1-64 characters of `A-Za-z0-9._:-`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("foblab_request_id", default=None)
"""The id of the request being handled in this context, or None outside any request."""

FORMATS = ("json", "text", "auto")

FIELDS = {
    "ts": "when (ISO 8601, UTC, milliseconds)",
    "level": "debug, info, warning, error, critical",
    "logger": "foblab.validator, foblab.access, foblab.radius, foblab.aws, uvicorn.error, ...",
    "msg": "the message",
    "request_id": "the request the line belongs to (X-Request-Id; audit entries carry it "
                  "too)",
    "method": "HTTP method", "path": "HTTP path (no query string)",
    "route": "the route template, e.g. /v1/tokens/{serial}", "status": "HTTP status",
    "ms": "milliseconds to answer", "role": "the API key's role", "outcome": "what the "
    "request came to (accepted, invalid_code, enrolled, ...)",
    "remote_addr": "the peer's address (the forwarded one from a trusted proxy)",
    "via": "the door when not the HTTP API (radius)", "client": "the RADIUS client's name",
    "user": "the user", "serial": "the token", "action": "audit: what was done",
    "result": "audit: ok or refused", "reason": "audit: why",
}
"""The field names shared by the access log, the application log and the audit export."""

_RESERVED = ("ts", "level", "logger", "msg", "request_id")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_BARE = re.compile(r"[^\s\"=\\]+")


_ID_PREFIX = ""  # this process's random prefix; then a counter: unique, and no syscall
_ID_COUNTER = itertools.count()


def _fresh_ids() -> None:
    """This process's own prefix and counter. Run again in every forked child: the
    workers of `serve --workers` would otherwise share their parent's, and number their
    requests with the same ids."""
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = secrets.token_hex(4)
    _ID_COUNTER = itertools.count()


_fresh_ids()
os.register_at_fork(after_in_child=_fresh_ids)


def new_request_id() -> str:
    """A fresh request id: 16 hex digits (this process's random prefix and a counter)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


def incoming_request_id(value: bytes | str | None) -> str | None:
    """`value` (an X-Request-Id header) if it is a sane id, else None."""
    if value is None or len(value) > 64:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE_ID.fullmatch(value) else None


_last_second: list[Any] = [None, ""]  # the last second formatted: one strftime a second


def timestamp(seconds: float) -> str:
    """`seconds` (Unix) as the logs and the audit export write it: ISO 8601 UTC, ms."""
    whole = int(seconds)
    cached = _last_second
    if cached[0] != whole:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        cached[0] = whole
    return f"{cached[1]}.{int((seconds - whole) * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": timestamp(record.created),
                           "level": record.levelname.lower(), "logger": record.name,
                           "msg": record.getMessage()}
    request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
    if request_id:
        out["request_id"] = request_id
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            if key not in _RESERVED:
                out[key] = value
    return out


# one encoder: json.dumps with `default` builds a new one per call
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = _fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TS LEVEL LOGGER MESSAGE key=value ...`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = _fields(record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        head = (f"{out.pop('ts')} {out.pop('level').upper()} {out.pop('logger')} "
                f"{out.pop('msg')}").replace("\n", "\\n")
        return " ".join([head, *(f"{k}={_text_value(v)}" for k, v in out.items())])


def resolve(fmt: str, stream: TextIO | None = None) -> str:
    """"json" or "text" for `fmt`; "auto" is text on a terminal, JSON otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> str:
    """Send every log record (and Python's warnings) to `stream` (stderr) in one format;
    returns the format chosen."""
    chosen = resolve(fmt, stream)
    # Neither format shows where a call was made, nor the thread or process: skip gathering
    # them (the logging HOWTO's "Optimization"); a third of the cost of an access line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("foblab.access", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    for name in ("foblab.access", "foblab.ready"):  # whatever the level: one per request,
        logging.getLogger(name).setLevel(logging.INFO)  # and the daemon's ready lines
    logging.captureWarnings(True)
    return chosen


__all__ = ["FIELDS", "FORMATS", "REQUEST_ID", "JsonFormatter", "TextFormatter", "configure",
           "incoming_request_id", "new_request_id", "resolve", "timestamp"]

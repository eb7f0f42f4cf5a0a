"""The outermost ASGI middleware: counts every request for /metrics, writes one access-log
line (JSON: method, path, route, status, milliseconds, role, the API key's name, outcome;
never a body, a code, a key or a query string), and answers a JSON 500 for a bug that
escaped everything else."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from validator.errors import InvalidAuthenticationCode, ValidatorError
from validator.http.metrics import Metrics

log = logging.getLogger("foblab.validator")
access_log = logging.getLogger("foblab.access")

ROLE = "foblab.role"
KEY = "foblab.key"  # the API key's name: never its value
OUTCOME = "foblab.outcome"
"""Scope keys a request's handling leaves for the access log."""


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    """Every error the API answers: `{"error": CODE, "message": TEXT, ...}`."""
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers=dict(headers) if headers else None)


def refusal_response(exc: ValidatorError) -> JSONResponse:
    """A refusal as the API answers it: the class's status and code, the instance's message
    (and, for refused codes, why and how long to wait)."""
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidAuthenticationCode):
        extra["reason"] = exc.reason
        if exc.retry_after:
            extra["retry_after"] = round(exc.retry_after, 3)
    return error_response(exc.status, exc.code, exc.message, exc.headers, **extra)


class Observe:
    """Outermost middleware: metrics, one access-log line, and a JSON 500 for a bug."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
            await send(message)

        metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Starlette has already answered with our JSON 500 if it could; record the bug
            # (type and frames, not locals: never a secret) and make sure the client hears.
            log.error("unhandled %s on %s %s\n%s", type(exc).__name__, scope["method"],
                      scope["path"][:200], "".join(traceback.format_tb(exc.__traceback__)))
            if not started:
                await error_response(500, "internal_error", "internal error")(
                    scope, receive, send_wrapper)
        finally:
            metrics.in_flight -= 1
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.observe(scope["method"], template, status, elapsed)
            if self.log_requests:
                client = scope.get("client")
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "method": scope["method"],
                    "path": scope["path"][:200], "route": template, "status": status,
                    "ms": round(elapsed * 1000, 3), "role": scope.get(ROLE), "key": scope.get(KEY),
                    "outcome": scope.get(OUTCOME),
                    "client": client[0] if client else None,
                }, separators=(",", ":")))

"""The outermost ASGI middleware: gives every request an id (REQUEST_ID, and the
X-Request-Id header of the answer), counts it for /metrics, writes one access-log record
(method, path, route, status, ms, role, the API key's name, outcome, remote_addr; never a
body, a code, a key or a query string) and answers a JSON 500 for a bug that escaped
everything else.

It runs outside the X-Forwarded-For handling (which it calls for a trusted proxy's
request), so it sees the real peer: an incoming X-Request-Id is kept only from a trusted
proxy."""

from __future__ import annotations

import ipaddress
import logging
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, cast

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from validator.errors import InvalidAuthenticationCode, ValidatorError
from validator.http.metrics import Metrics, route_template
from validator.logs import REQUEST_ID, incoming_request_id, new_request_id

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


class TrustedProxies:
    """The peers whose X-Forwarded-For, X-Forwarded-Proto and X-Request-Id are believed
    (`trusted_proxies`: addresses or networks). A reload replaces them whole (`set`); the
    next request sees the new ones."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.set(entries)

    def set(self, entries: Iterable[str]) -> None:
        given = tuple(entries)
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in given)
        self.entries = given


class Observe:
    """Outermost middleware: request id, metrics, one access-log record, a JSON 500.
    Inside it, for a request from a trusted proxy, uvicorn's ProxyHeadersMiddleware takes
    the client's address and scheme from X-Forwarded-For and X-Forwarded-Proto."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool,
                 proxies: TrustedProxies | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.proxies = proxies or TrustedProxies()
        self._forwarded: tuple[tuple[str, ...], ASGIApp] = ((), app)

    def _inner(self) -> ASGIApp:
        """The app behind this middleware: with X-Forwarded-For handling for the proxies
        trusted now (remade when a reload changed them), or without any."""
        entries = self.proxies.entries
        if not entries:
            return self.app
        made_for, forwarded = self._forwarded
        if made_for is not entries:
            forwarded = cast(ASGIApp, ProxyHeadersMiddleware(
                cast(Any, self.app), trusted_hosts=list(entries)))
            self._forwarded = (entries, forwarded)
        return forwarded

    def _request_id(self, scope: Scope) -> str:
        """The proxy's X-Request-Id when the peer is a trusted proxy and the id is sane;
        else a new one."""
        trusted = self.proxies.networks
        if trusted:
            client = scope.get("client")
            try:
                peer = ipaddress.ip_address(client[0]) if client else None
            except ValueError:
                peer = None
            if peer is not None and any(peer in net for net in trusted):
                for name, value in scope["headers"]:
                    if name == b"x-request-id":
                        found = incoming_request_id(value)
                        if found is not None:
                            return found
                        break
        return new_request_id()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        start = time.perf_counter()
        status = 500
        started = False
        request_id = self._request_id(scope)
        header = (b"x-request-id", request_id.encode())
        token = REQUEST_ID.set(request_id)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        metrics.in_flight += 1
        try:
            await self._inner()(scope, receive, send_wrapper)
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
            path = getattr(route, "path", "unmatched")
            metrics.observe(scope["method"], path, status, elapsed)
            if self.log_requests:
                client = scope.get("client")
                access_log.info("request", extra={"fields": {
                    "method": scope["method"], "path": scope["path"][:200],
                    "route": route_template(path), "status": status,
                    "ms": round(elapsed * 1000, 3), "role": scope.get(ROLE),
                    "key": scope.get(KEY),
                    "outcome": scope.get(OUTCOME),
                    "remote_addr": client[0] if client else None,
                }})
            REQUEST_ID.reset(token)

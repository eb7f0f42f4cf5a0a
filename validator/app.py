"""The HTTP API, version 1: a Starlette application over `validator.service.Validator`.

One table (`_operations`) lists every operation with its roles, body schema and query
parameters; from it come both the routes and /openapi.json, so the document cannot drift
from what the server enforces. Each operation is a small ASGI endpoint that checks the
Bearer key, reads a size-limited body, checks it against its schema and calls a handler;
every refusal is `{"error": CODE, "message": TEXT}` with a 4xx (a 5xx only for a station
whose token fails, or a bug).

Database calls run on the event loop: each is a few hundred microseconds (one indexed
read, one compare-and-set in WAL mode; see docs/benchmarks.md), less than a hop to a worker
thread costs. Seed-file imports and serial stations, which can take long, run in threads.

An outer ASGI middleware counts every request for /metrics and writes one access-log line
(JSON: method, path, route, status, milliseconds, role, outcome; never a body, a code, a
key or a query string).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from validator import api_schema as S
from validator.api_schema import OpDoc, Param, RequestError
from validator.apikeys import KeyRing, Role
from validator.config import Settings
from validator.connections import ConnectionGuard, discard_body
from validator.errors import InvalidAuthenticationCode, ValidatorError
from validator.service import TokenInfo, Validator
from validator.station import Station, StationError

log = logging.getLogger("foblab.validator")
access_log = logging.getLogger("foblab.access")

API_VERSION = "1"
ADMIN = (Role.ADMIN,)
VERIFY = (Role.ADMIN, Role.VERIFIER)

# The HTTP status of each core refusal.
STATUS = {
    "invalid_parameter": 400, "invalid_user": 400, "invalid_seed_file": 400,
    "seed_file_limit": 400, "bad_secret": 400,
    "invalid_authentication_code": 400, "unknown_serial": 404, "not_assigned": 404,
    "duplicate_serial": 409, "already_assigned": 409, "device_limit": 409,
    "delete_conflict": 409, "conflict": 503,
}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers=dict(headers) if headers else None)


# -- metrics -----------------------------------------------------------------------------

class Metrics:
    """Prometheus text exposition, hand-rolled: a few counters, a gauge, one histogram."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0)
    WINDOW_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24)

    def __init__(self, connections: ConnectionGuard | None = None) -> None:
        self.connections = connections
        self.started = time.time()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.verify: Counter[str] = Counter()
        self.stations: Counter[tuple[str, str, str]] = Counter()
        self.in_flight = 0
        self.extra: list[Callable[[], str]] = []  # other doors' metrics (RADIUS)
        self.buckets = [0] * len(self.BUCKETS)
        self.count = 0
        self.total = 0.0
        self.window_buckets = [0] * len(self.WINDOW_BUCKETS)
        self.window_count = 0
        self.window_total = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                break

    def observe_window(self, steps: int) -> None:
        """One verification's guessing surface (`VerifyResult.window`)."""
        self.window_count += 1
        self.window_total += steps
        for i, bound in enumerate(self.WINDOW_BUCKETS):
            if steps <= bound:
                self.window_buckets[i] += 1
                break

    def render(self) -> str:
        out = [
            "# HELP foblab_http_requests_total HTTP requests by method, route and status.",
            "# TYPE foblab_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(f'foblab_http_requests_total{{method="{method}",route="{route}",'
                       f'status="{status}"}} {n}')
        out += ["# HELP foblab_http_request_duration_seconds Time to answer a request.",
                "# TYPE foblab_http_request_duration_seconds histogram"]
        running = 0
        for bound, n in zip(self.BUCKETS, self.buckets, strict=True):
            running += n
            out.append(f'foblab_http_request_duration_seconds_bucket{{le="{bound}"}} {running}')
        out += [f'foblab_http_request_duration_seconds_bucket{{le="+Inf"}} {self.count}',
                f"foblab_http_request_duration_seconds_sum {self.total:.6f}",
                f"foblab_http_request_duration_seconds_count {self.count}",
                "# HELP foblab_http_requests_in_flight Requests being answered now.",
                "# TYPE foblab_http_requests_in_flight gauge",
                f"foblab_http_requests_in_flight {self.in_flight}",
                "# HELP foblab_verify_total Verifications by outcome.",
                "# TYPE foblab_verify_total counter"]
        for reason, n in sorted(self.verify.items()):
            out.append(f'foblab_verify_total{{reason="{reason}"}} {n}')
        out += ["# HELP foblab_verify_window_steps Guessing surface of a verification: the "
                "steps or counters a code would have been accepted at.",
                "# TYPE foblab_verify_window_steps histogram"]
        running = 0
        for bound, n in zip(self.WINDOW_BUCKETS, self.window_buckets, strict=True):
            running += n
            out.append(f'foblab_verify_window_steps_bucket{{le="{bound}"}} {running}')
        out += [f'foblab_verify_window_steps_bucket{{le="+Inf"}} {self.window_count}',
                f"foblab_verify_window_steps_sum {self.window_total}",
                f"foblab_verify_window_steps_count {self.window_count}"]
        out += ["# HELP foblab_station_operations_total Station operations by result.",
                "# TYPE foblab_station_operations_total counter"]
        for (name, op, result), n in sorted(self.stations.items()):
            out.append(f'foblab_station_operations_total{{station="{name}",op="{op}",'
                       f'result="{result}"}} {n}')
        out += ["# HELP foblab_start_time_seconds When the daemon started (Unix seconds).",
                "# TYPE foblab_start_time_seconds gauge",
                f"foblab_start_time_seconds {self.started:.3f}"]
        if self.connections is not None:
            out += self.connections.render()
        out.append("")
        return "\n".join(out) + "".join(render() for render in self.extra)


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
                    "ms": round(elapsed * 1000, 3), "role": scope.get("foblab.role"),
                    "outcome": scope.get("foblab.outcome"),
                    "client": client[0] if client else None,
                }, separators=(",", ":")))


# -- the operations ------------------------------------------------------------------------

@dataclass
class Call:
    """One authenticated, validated request as a handler sees it."""

    api: Api
    scope: Scope
    role: Role | None
    params: dict[str, str]
    query: dict[str, Any]
    body: Any

    def outcome(self, value: str) -> None:
        self.scope["foblab.outcome"] = value


Handler = Callable[[Call], Awaitable[Response]]

_USER_RE = S._regex(S.USER_PATTERN)
_SERIAL_RE = S._regex(S.SERIAL_PATTERN)
_STATION_RE = S._regex(S.STATION_PATTERN)
_PATH_CHECKS = {
    "user": (_USER_RE, "invalid_user", "user names are 1-64 letters, digits and +=,.@_-"),
    "serial": (_SERIAL_RE, "invalid_request",
               "serials are 1-256 printable ASCII characters without spaces"),
    "name": (_STATION_RE, "invalid_request", "station names are 1-64 of A-Z a-z 0-9 _ . -"),
}
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {"user": S.USER, "serial": S.SERIAL,
                 "name": {"type": "string", "pattern": S.STATION_PATTERN}}


@dataclass(frozen=True)
class Op:
    doc: OpDoc
    route: str  # Starlette path, e.g. /v1/tokens/{serial:path}
    handler: Handler
    large_body: bool = False


class Endpoint:
    """The ASGI app of one operation: key, body, schema, handler, error mapping."""

    def __init__(self, api: Api, op: Op) -> None:
        self.api = api
        self.op = op
        self.roles = frozenset(op.doc.roles)
        self.schema = S.SCHEMAS[op.doc.body] if op.doc.body else None
        self.limit = api.settings.max_import_bytes if op.large_body \
            else api.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._respond(scope, receive)
        except RequestError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except StationError as exc:
            self.api.metrics.stations[(scope["path_params"].get("name", "?"),
                                       self.op.doc.path.rsplit("/", 1)[-1], exc.code)] += 1
            response = error_response(exc.status, exc.code, exc.message)
        except InvalidAuthenticationCode as exc:
            extra: dict[str, Any] = {"reason": exc.reason}
            if exc.retry_after:
                extra["retry_after"] = round(exc.retry_after, 3)
            response = error_response(400, exc.code, exc.message, **extra)
        except ValidatorError as exc:
            response = error_response(STATUS.get(exc.code, 400), exc.code, exc.message)
        await response(scope, receive, send)

    def _auth(self, scope: Scope) -> Role | None:
        if not self.roles:
            return None
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        challenge = {"WWW-Authenticate": "Bearer"}
        if header is None or header[:7].lower() != b"bearer " or len(header) > 512:
            raise RequestError(401, "unauthorized", "send an API key as Authorization: "
                               "Bearer KEY", challenge)
        role = self.api.keys.role_of(header[7:].strip())
        if role is None:
            raise RequestError(401, "unauthorized", "unknown API key", challenge)
        scope["foblab.role"] = role.value
        if role not in self.roles:
            raise RequestError(403, "forbidden", f"the {role.value} key may not call this")
        return role

    async def _body(self, scope: Scope, receive: Receive) -> Any:
        length = None
        ctype = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                ctype = value
        media = ctype.split(b";", 1)[0].strip().lower()
        if media and media != b"application/json" and not media.endswith(b"+json"):
            raise RequestError(415, "unsupported_media_type",
                               "send the body as Content-Type: application/json")
        too_large = RequestError(413, "body_too_large",
                                 f"the body may be at most {self.limit} bytes",
                                 {"Connection": "close"})
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            # drain first: a client that writes its whole body before reading must hear it
            await discard_body(receive, int(length) if length.isdigit() else 1 << 62)
            raise too_large
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "disconnected", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                if message.get("more_body", False):
                    await discard_body(receive, None)
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size == 0:
            raise RequestError(400, "invalid_request", "a JSON body is required")
        return S.parse_json(b"".join(chunks))

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        role = self._auth(scope)
        params: dict[str, str] = scope.get("path_params", {})
        for name, value in params.items():
            regex, code, message = _PATH_CHECKS[name]
            if not regex.search(value):
                raise RequestError(400, code, message)
        query: dict[str, Any] = {}
        if scope["query_string"] or self.op.doc.query:
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            query = S.parse_query(pairs, self.op.doc.query)
        body = None
        if self.schema is not None:
            body = await self._body(scope, receive)
            S.check(self.schema, body)
        return await self.op.handler(Call(self.api, scope, role, params, query, body))


# -- JSON shapes -------------------------------------------------------------------------

def token_json(t: TokenInfo) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {
        "serial": t.serial, "kind": t.kind, "hash": t.algorithm, "digits": t.digits,
        "user": t.user, "assigned_at": t.assigned_at, "created": t.created,
        "failures": t.failures,
        "locked_until": t.locked_until if t.locked_until > now else None,
        "last_accepted": t.watermark, "expires": t.expires,
    }
    if t.kind == "totp":
        out.update(period=t.period, t0=t.t0, window=t.window, drift={
            "offset_seconds": round(t.offset_seconds, 3), "rate_ppm": round(t.rate_ppm, 3)})
        # the true time at which the last accepted step began on the token, by the estimate
        out["last_used"] = (None if t.watermark is None else
                            round(t.t0 + t.watermark * t.period - t.offset_seconds, 3))
    else:
        out["next_counter"] = 0 if t.watermark is None else t.watermark + 1
    return out


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status)


def _decode_secret(body: dict[str, Any]) -> bytes:
    b32, hexa = body.get("secret_b32"), body.get("secret_hex")
    if (b32 is None) == (hexa is None):
        raise RequestError(400, "invalid_request", "give exactly one of secret_b32 and "
                           "secret_hex")
    try:
        if b32 is not None:
            text = b32.rstrip("=").upper()
            secret = base64.b32decode(text + "=" * (-len(text) % 8))
        else:
            secret = bytes.fromhex(str(hexa))
    except (binascii.Error, ValueError):
        which = "secret_b32 is not valid base32" if b32 is not None \
            else "secret_hex is not valid hex"
        raise RequestError(400, "bad_secret", which) from None
    return secret  # its length: the service's one rule for every way in


# -- handlers ------------------------------------------------------------------------------

async def create_token(c: Call) -> Response:
    b = c.body
    kind = b.get("kind", "totp")
    if kind == "totp" and "counter" in b:
        raise RequestError(400, "invalid_request", "counter is for HOTP tokens")
    if kind == "hotp" and ("period" in b or "t0" in b):
        raise RequestError(400, "invalid_request", "period and t0 are for TOTP tokens")
    info = c.api.validator.register_token(
        b["serial"], _decode_secret(b), kind=kind, digits=b.get("digits", 6),
        algorithm=b.get("hash", "sha1"), period=b.get("period", 30), t0=b.get("t0", 0),
        counter=b.get("counter", 0))
    return _json(token_json(info), 201)


async def import_tokens(c: Call) -> Response:
    b = c.body
    if "passphrase" in b and "key_hex" in b:
        raise RequestError(400, "invalid_request", "give passphrase or key_hex, not both")
    result = await run_in_threadpool(
        c.api.validator.import_seed_file, b["content"], b["format"],
        passphrase=b.get("passphrase"), key_hex=b.get("key_hex"),
        skip_duplicates=b.get("skip_duplicates", False), dry_run=b.get("dry_run", False))
    return _json({"imported": len(result.imported), "serials": result.imported,
                  "skipped": [s.to_json() for s in result.skipped],
                  "dry_run": result.dry_run})


async def rotate_key(c: Call) -> Response:
    v = c.api.validator
    if c.query.get("master", False):
        rewrapped = await run_in_threadpool(v.rotate_key, master=True)
        body = {"scope": "master", "rewrapped": rewrapped, "resealed": 0}
    else:
        resealed = await run_in_threadpool(v.rotate_key)
        body = {"scope": "data", "rewrapped": 0, "resealed": resealed}
    return _json({**body, "key_id": v.box.key_id, "data_key_id": v.box.data_key_id,
                  "healthy": v.key_problem is None})


def _page(c: Call) -> tuple[int, int]:
    return c.query.get("limit", 100), c.query.get("offset", 0)


def _next(items: Sequence[Any], limit: int, offset: int) -> int | None:
    return offset + limit if len(items) == limit else None


async def list_tokens(c: Call) -> Response:
    limit, offset = _page(c)
    unassigned = c.query.get("unassigned")
    filters: dict[str, Any] = dict(user=c.query.get("user"), kind=c.query.get("kind"),
                                   assigned=None if unassigned is None else not unassigned)
    tokens = c.api.validator.list_tokens(**filters, limit=limit, offset=offset)
    return _json({"tokens": [token_json(t) for t in tokens], "limit": limit, "offset": offset,
                  "next_offset": _next(tokens, limit, offset),
                  "total": c.api.validator.count_tokens(**filters)})


async def show_token(c: Call) -> Response:
    return _json(token_json(c.api.validator.get_token(c.params["serial"])))


async def delete_token(c: Call) -> Response:
    c.api.validator.delete_token(c.params["serial"])
    return Response(status_code=204)


async def unlock_token(c: Call) -> Response:
    return _json(token_json(c.api.validator.unlock(c.params["serial"])))


async def enable_device(c: Call) -> Response:
    b = c.body
    info = c.api.validator.enable(c.params["user"], b["serial"], b["code1"], b["code2"])
    c.outcome("enabled")
    return _json(token_json(info), 201)


async def list_devices(c: Call) -> Response:
    user = c.params["user"]
    return _json({"user": user,
                  "devices": [token_json(t) for t in c.api.validator.list_devices(user)]})


async def deactivate_device(c: Call) -> Response:
    c.api.validator.deactivate(c.params["user"], c.params["serial"])
    return Response(status_code=204)


async def resync_device(c: Call) -> Response:
    b = c.body
    info = c.api.validator.resync(c.params["user"], c.params["serial"], b["code1"], b["code2"])
    c.outcome("resynced")
    out = token_json(info)
    return _json({"ok": True, "serial": info.serial, "user": info.user,
                  "drift": out.get("drift"), "token": out})


async def verify(c: Call) -> Response:
    b = c.body
    result = c.api.validator.verify(b["user"], b["code"], serial=b.get("serial"))
    reason = result.reason.value
    c.api.metrics.verify[reason] += 1
    if result.window is not None:
        c.api.metrics.observe_window(result.window)
    c.outcome(reason)
    out: dict[str, Any] = {"ok": result.accepted, "reason": reason, "user": b["user"],
                           "serial": result.serial}
    if result.retry_after:
        out["retry_after"] = round(result.retry_after, 3)
    return _json(out)


async def audit(c: Call) -> Response:
    limit, offset = _page(c)
    q = c.query
    filters: dict[str, Any] = dict(serial=q.get("serial"), user=q.get("user"),
                                   action=q.get("action"), result=q.get("result"),
                                   since=q.get("since"), until=q.get("until"))
    entries = c.api.validator.audit(**filters, limit=limit, offset=offset,
                                    newest_first=q.get("order") == "newest")
    return _json({"entries": [{"id": e.id, "time": e.time, "action": e.action,
                               "result": e.result, "reason": e.reason, "serial": e.serial,
                               "user": e.user, "via": e.via, "client": e.client,
                               "window": e.window}
                              for e in entries],
                  "limit": limit, "offset": offset,
                  "next_offset": _next(entries, limit, offset),
                  "total": c.api.validator.count_audit(**filters)})


def _station(c: Call) -> Station:
    name = c.params["name"]
    station = c.api.stations.get(name)
    if station is None:
        raise RequestError(404, "unknown_station", f"no station named {name!r} is configured")
    return station


async def list_stations(c: Call) -> Response:
    return _json({"stations": [{"name": s.name, "port": s.url}
                               for s in c.api.stations.values()]})


def _locked_call(station: Station, fn: Callable[[], Any]) -> Any:
    with station.lock:
        return fn()


async def station_info(c: Call) -> Response:
    station = _station(c)
    info = await run_in_threadpool(_locked_call, station, station.info)
    c.api.metrics.stations[(station.name, "info", "ok")] += 1
    return _json({"station": station.name, "token": info})


async def station_enroll(c: Call) -> Response:
    station = _station(c)
    b = c.body
    validator = c.api.validator

    def run() -> Any:
        return station.enroll(validator, b["user"], provision=b.get("provision", False),
                              kind=b.get("kind"), hash=b.get("hash"), digits=b.get("digits"),
                              period=b.get("period"))

    enrolled = await run_in_threadpool(_locked_call, station, run)
    c.api.metrics.stations[(station.name, "enroll", "ok")] += 1
    c.outcome("enrolled")
    return _json({"station": station.name, "serial": enrolled.serial, "user": enrolled.user,
                  "provisioned": enrolled.provisioned, "token": token_json(enrolled.token)},
                 201)


async def healthz(c: Call) -> Response:
    problem = await run_in_threadpool(c.api.validator.health)
    if problem is not None:
        log.warning("health check failed: %s", problem)
        return error_response(503, "unhealthy", problem)
    return _json({"status": "ok"})


async def metrics(c: Call) -> Response:
    return Response(c.api.metrics.render(), media_type="text/plain; version=0.0.4")


def _operations() -> list[Op]:
    u, s, n = ({k: _PATH_SCHEMAS[k]} for k in ("user", "serial", "name"))
    page = (S.LIMIT, S.OFFSET)
    string = {"type": "string", "maxLength": 128}
    return [
        Op(OpDoc("GET", "/healthz", "Health: the database answers and a sample of the "
                 "sealed secrets opens", (), errors=(503,)),
           "/healthz", healthz),
        Op(OpDoc("GET", "/metrics", "Prometheus metrics", ()), "/metrics", metrics),
        Op(OpDoc("POST", "/v1/tokens/import", "Import a PSKC or CSV seed file: every "
                 "usable key or none; the others listed with why",
                 ADMIN, body="TokenImport", errors=(409, 413, 415)),
           "/v1/tokens/import", import_tokens, large_body=True),
        Op(OpDoc("POST", "/v1/tokens", "Register one token", ADMIN, body="TokenCreate",
                 status=201, errors=(409, 413, 415)), "/v1/tokens", create_token),
        Op(OpDoc("GET", "/v1/tokens", "List tokens (metadata and state, never secrets)", ADMIN,
                 query=(Param("user", S.USER), Param("unassigned", {"type": "boolean"}),
                        Param("kind", S.KIND), *page)), "/v1/tokens", list_tokens),
        Op(OpDoc("POST", "/v1/tokens/{serial}/unlock", "Clear a token's failures and lock",
                 ADMIN, path_params=s, errors=(404,)),
           "/v1/tokens/{serial:path}/unlock", unlock_token),
        Op(OpDoc("GET", "/v1/tokens/{serial}", "One token", ADMIN, path_params=s,
                 errors=(404,)), "/v1/tokens/{serial:path}", show_token),
        Op(OpDoc("DELETE", "/v1/tokens/{serial}", "Remove an unassigned token", ADMIN,
                 path_params=s, status=204, errors=(404, 409)),
           "/v1/tokens/{serial:path}", delete_token),
        Op(OpDoc("POST", "/v1/users/{user}/devices/{serial}/resync",
                 "Resynchronise with two consecutive codes", VERIFY, body="CodePair",
                 path_params={**u, **s}, errors=(404, 413, 415)),
           "/v1/users/{user}/devices/{serial:path}/resync", resync_device),
        Op(OpDoc("POST", "/v1/users/{user}/devices", "Enable a token with two consecutive "
                 "codes", ADMIN, body="DeviceEnable", path_params=u, status=201,
                 errors=(404, 409, 413, 415)), "/v1/users/{user}/devices", enable_device),
        Op(OpDoc("GET", "/v1/users/{user}/devices", "A user's devices", ADMIN, path_params=u),
           "/v1/users/{user}/devices", list_devices),
        Op(OpDoc("DELETE", "/v1/users/{user}/devices/{serial}", "Deactivate a device", ADMIN,
                 path_params={**u, **s}, status=204, errors=(404,)),
           "/v1/users/{user}/devices/{serial:path}", deactivate_device),
        Op(OpDoc("POST", "/v1/verify", "Verify a code", VERIFY, body="Verify",
                 errors=(413, 415)), "/v1/verify", verify),
        Op(OpDoc("GET", "/v1/audit", "Audit log, oldest first (order=newest: newest first)",
                 ADMIN, query=(
            Param("serial", S.SERIAL), Param("user", S.USER), Param("action", string),
            Param("result", string), Param("since", {"type": "number"}),
            Param("until", {"type": "number"}),
            Param("order", {"type": "string", "enum": ["oldest", "newest"]}), *page)),
           "/v1/audit", audit),
        Op(OpDoc("POST", "/v1/admin/rotate-key", "Reseal every stored secret under a new "
                 "data key, or (master=true) re-wrap the data keys under a new master key",
                 ADMIN, query=(Param("master", {"type": "boolean"}),)),
           "/v1/admin/rotate-key", rotate_key),
        Op(OpDoc("GET", "/v1/stations", "Configured enrollment stations", ADMIN),
           "/v1/stations", list_stations),
        Op(OpDoc("GET", "/v1/stations/{name}", "The attached token's INFO, read live", ADMIN,
                 path_params=n, errors=(404, 409, 502, 503, 504)),
           "/v1/stations/{name}", station_info),
        Op(OpDoc("POST", "/v1/stations/{name}/enroll", "Enroll the attached token for a user",
                 ADMIN, body="Enroll", path_params=n, status=201,
                 errors=(404, 409, 413, 415, 502, 503, 504)),
           "/v1/stations/{name}/enroll", station_enroll),
    ]


# -- the application -------------------------------------------------------------------------

@dataclass
class Api:
    """What the handlers share."""

    validator: Validator
    keys: KeyRing
    settings: Settings
    stations: dict[str, Station] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)


def load_aws_endpoint(validator: Validator, db_path: Path,
                      settings: Mapping[str, Any]) -> Any | None:
    """`validator.aws.AwsEndpoint`, when that package is installed; None when it is not."""
    try:
        from validator import aws  # type: ignore[attr-defined,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name == "validator.aws":
            return None
        raise
    return aws.AwsEndpoint(validator, db_path, settings)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: "no such endpoint", 405: "method not allowed here"}.get(
        exc.status_code, str(exc.detail))
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message,
                          exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal_error", "internal error")


def create_app(validator: Validator, keys: KeyRing, settings: Settings, *,
               stations: dict[str, Station] | None = None, aws: Any | None = None,
               on_shutdown: Callable[[], None] | None = None,
               connections: ConnectionGuard | None = None) -> Starlette:
    """The ASGI application. `aws`: an object with `async handle(request)` mounted at /aws
    (default: `validator.aws.AwsEndpoint` when that package exists)."""
    if stations is None:
        stations = {name: Station(name, url, timeout=settings.station_timeout)
                    for name, url in settings.stations.items()}
    api = Api(validator, keys, settings, stations, metrics=Metrics(connections))
    ops = _operations()
    routes: list[BaseRoute] = []
    for op in ops:
        routes.append(Route(op.route, Endpoint(api, op), methods=[op.doc.method],
                            include_in_schema=False))
    document = json.dumps(S.openapi((op.doc for op in ops), API_VERSION)).encode()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    routes.append(Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False))
    if aws is None:
        aws = load_aws_endpoint(validator, settings.database, settings.aws)
    if aws is not None:
        for path in ("/aws", "/aws/"):
            routes.append(Route(path, aws.handle, methods=["GET", "POST"],
                                include_in_schema=False))
    if settings.ui:  # the web console (validator/ui), a door over the same service
        from validator.ui import mount
        if (console := mount(validator, keys, settings, stations=stations, aws=aws)):
            routes.append(console)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        HTTPException: _http_error, Exception: _internal_error})
    app.state.api = api
    app.add_middleware(Observe, metrics=api.metrics, log_requests=settings.access_log)
    return app

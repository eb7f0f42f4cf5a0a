"""The API's handlers, one per operation, and the JSON shapes they answer with.

A handler gets a decoded, authenticated `Call`, calls `validator.service.Validator` (or a
station), and returns a response; a refusal is an exception of `validator.errors`.

Service calls go through `Api.call`: on a SQLite store they run on the event loop (each is
a few hundred microseconds, one indexed read and one compare-and-set in WAL mode, less than a
hop to a worker thread costs; see docs/benchmarks.md); on a PostgreSQL store, where each is
a network round trip or more, they run in a bounded pool of threads so requests overlap in
the database. Seed-file imports and serial stations, which can take long, always run in
threads.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from protocol import DEFAULT_PERIOD, Hash, Kind
from validator.errors import (
    BadSecret,
    InvalidRequest,
    ReloadFailed,
    UnknownStation,
    ValidatorError,
)
from validator.http.decoding import Call
from validator.http.metrics import CONTENT_TYPE
from validator.http.middleware import error_response
from validator.logs import REQUEST_ID, timestamp
from validator.service import AuditEntry, TokenInfo, VerifyRequest
from validator.station import Station

log = logging.getLogger("foblab.validator")


# -- JSON shapes -------------------------------------------------------------------------

def token_json(t: TokenInfo) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {
        "serial": t.serial, "kind": t.kind, "hash": t.hash, "digits": t.digits,
        "user": t.user, "assigned_at": t.assigned_at, "created": t.created,
        "failures": t.failures,
        "locked_until": t.locked_until if t.locked_until > now else None,
        "last_accepted": t.watermark, "expires": t.expires,
    }
    if t.kind is Kind.TOTP:
        out.update(period=t.period, t0=t.t0, window=t.window, drift={
            "offset_seconds": round(t.offset_seconds, 3), "rate_ppm": round(t.rate_ppm, 3)})
        # the true time at which the last accepted step began on the token, by the estimate
        out["last_used"] = (None if t.watermark is None else
                            round(t.t0 + t.watermark * t.period - t.offset_seconds, 3))
    else:
        out["next_counter"] = 0 if t.watermark is None else t.watermark + 1
    return out


class _OrJson(JSONResponse):
    """Starlette's JSONResponse, its body written by orjson (the same compact UTF-8 JSON,
    a few times faster)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _json(content: Any, status: int = 200) -> JSONResponse:
    return _OrJson(content, status_code=status)


def _decode_secret(body: dict[str, Any]) -> bytes:
    b32, hexa = body.get("secret_b32"), body.get("secret_hex")
    if (b32 is None) == (hexa is None):
        raise InvalidRequest("give exactly one of secret_b32 and secret_hex")
    try:
        if b32 is not None:
            text = b32.rstrip("=").upper()
            secret = base64.b32decode(text + "=" * (-len(text) % 8))
        else:
            secret = bytes.fromhex(str(hexa))
    except (binascii.Error, ValueError):
        which = "secret_b32 is not valid base32" if b32 is not None \
            else "secret_hex is not valid hex"
        raise BadSecret(which) from None
    return secret  # its length: the service's one rule for every way in


# -- handlers ------------------------------------------------------------------------------

async def create_token(c: Call) -> Response:
    b = c.body
    kind = Kind.from_label(b.get("kind", Kind.TOTP))
    if kind is Kind.TOTP and "counter" in b:
        raise InvalidRequest("counter is for HOTP tokens")
    if kind is Kind.HOTP and ("period" in b or "t0" in b):
        raise InvalidRequest("period and t0 are for TOTP tokens")
    info = await c.api.call(
        c.api.validator.register_token, b["serial"], _decode_secret(b), kind=kind,
        digits=b.get("digits", 6),
        hash=b.get("hash", Hash.SHA1), period=b.get("period", DEFAULT_PERIOD), t0=b.get("t0", 0),
        counter=b.get("counter", 0))
    return _json(token_json(info), 201)


async def import_tokens(c: Call) -> Response:
    b = c.body
    if "passphrase" in b and "key_hex" in b:
        raise InvalidRequest("give passphrase or key_hex, not both")
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


async def reload(c: Call) -> Response:
    """Re-read the config and the API keys (as SIGHUP does); in the event loop's thread,
    between requests, so a request sees the old settings or the new, never half."""
    if c.api.reload is None:
        raise ReloadFailed("this process cannot reload: it was not started by "
                           "`foblab validator serve`")
    return _json(c.api.reload())


def _page(c: Call) -> tuple[int, int]:
    return c.query.get("limit", 100), c.query.get("offset", 0)


def _next(items: Sequence[Any], limit: int, offset: int) -> int | None:
    return offset + limit if len(items) == limit else None


async def list_tokens(c: Call) -> Response:
    limit, offset = _page(c)
    unassigned = c.query.get("unassigned")
    filters: dict[str, Any] = dict(user=c.query.get("user"), kind=c.query.get("kind"),
                                   assigned=None if unassigned is None else not unassigned)
    tokens = await c.api.call(c.api.validator.list_tokens, **filters, limit=limit,
                              offset=offset)
    return _json({"tokens": [token_json(t) for t in tokens], "limit": limit, "offset": offset,
                  "next_offset": _next(tokens, limit, offset),
                  "total": await c.api.call(c.api.validator.count_tokens, **filters)})


async def show_token(c: Call) -> Response:
    return _json(token_json(await c.api.call(c.api.validator.get_token, c.params["serial"])))


async def delete_token(c: Call) -> Response:
    await c.api.call(c.api.validator.delete_token, c.params["serial"])
    return Response(status_code=204)


async def unlock_token(c: Call) -> Response:
    return _json(token_json(await c.api.call(c.api.validator.unlock, c.params["serial"])))


async def enable_device(c: Call) -> Response:
    b = c.body
    info = await c.api.call(c.api.validator.enable, c.params["user"], b["serial"],
                            b["code1"], b["code2"])
    c.outcome("enabled")
    return _json(token_json(info), 201)


async def list_devices(c: Call) -> Response:
    user = c.params["user"]
    devices = await c.api.call(c.api.validator.list_devices, user)
    return _json({"user": user, "devices": [token_json(t) for t in devices]})


async def deactivate_device(c: Call) -> Response:
    await c.api.call(c.api.validator.deactivate, c.params["user"], c.params["serial"])
    return Response(status_code=204)


async def resync_device(c: Call) -> Response:
    b = c.body
    info = await c.api.call(c.api.validator.resync, c.params["user"], c.params["serial"],
                            b["code1"], b["code2"])
    c.outcome("resynced")
    out = token_json(info)
    return _json({"ok": True, "serial": info.serial, "user": info.user,
                  "drift": out.get("drift"), "token": out})


async def verify(c: Call) -> Response:
    b = c.body
    if c.api.batcher is not None and c.api.batcher.joins():
        result = await c.api.batcher.verify(VerifyRequest(
            b["user"], b["code"], b.get("serial"), request_id=REQUEST_ID.get()))
    else:
        result = await c.api.call(c.api.validator.verify, b["user"], b["code"],
                                  serial=b.get("serial"))
    reason = result.reason.value
    c.api.metrics.verified(reason, result.window)
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
                                   since=q.get("since"), until=q.get("until"),
                                   request_id=q.get("request_id"))
    entries = await c.api.call(c.api.validator.audit, **filters, limit=limit, offset=offset,
                                    newest_first=q.get("order") == "newest")
    return _json({"entries": [{"id": e.id, "time": e.time, "action": e.action,
                               "result": e.result, "reason": e.reason, "serial": e.serial,
                               "user": e.user, "via": e.via, "client": e.client,
                               "window": e.window, "request_id": e.request_id}
                              for e in entries],
                  "limit": limit, "offset": offset,
                  "next_offset": _next(entries, limit, offset),
                  "total": await c.api.call(c.api.validator.count_audit, **filters)})


def audit_line(e: AuditEntry) -> bytes:
    """One audit entry as a JSONL line, with the field names of the daemon's log (`ts`
    ISO 8601 beside `time` in Unix seconds)."""
    return json.dumps({"id": e.id, "ts": timestamp(e.time), "time": e.time,
                       "action": e.action, "result": e.result, "reason": e.reason,
                       "serial": e.serial, "user": e.user, "via": e.via, "client": e.client,
                       "window": e.window, "request_id": e.request_id},
                      separators=(",", ":")).encode() + b"\n"


async def audit_export(c: Call) -> Response:
    """Every entry in [since, until) as JSON lines, streamed: one query per thousand rows,
    each in a worker thread."""
    q = c.query
    batches = c.api.validator.audit_export(since=q.get("since"), until=q.get("until"),
                                           newest_first=q.get("order") == "newest")

    def next_chunk() -> bytes:
        rows = next(batches, None)
        return b"" if rows is None else b"".join(audit_line(e) for e in rows)

    async def body() -> AsyncIterator[bytes]:
        while chunk := await run_in_threadpool(next_chunk):
            yield chunk

    return StreamingResponse(body(), media_type="application/x-ndjson")


def _station(c: Call) -> Station:
    name = c.params["name"]
    station = c.api.stations.get(name)
    if station is None:
        raise UnknownStation(f"no station named {name!r} is configured")
    return station


async def list_stations(c: Call) -> Response:
    return _json({"stations": [{"name": s.name, "port": s.url}
                               for s in c.api.stations.values()]})


async def _on_station(c: Call, station: Station, op: str, fn: Callable[[], Any]) -> Any:
    """`fn()` in a worker thread holding the station (one request at a time talks to a
    port), counted for /metrics by its result: ok, or the refusal's code."""

    def locked() -> Any:
        with station.lock:
            return fn()

    try:
        result = await run_in_threadpool(locked)
    except ValidatorError as exc:
        c.api.metrics.station(station.name, op, exc.code)
        raise
    c.api.metrics.station(station.name, op, "ok")
    return result


async def station_info(c: Call) -> Response:
    station = _station(c)
    info = await _on_station(c, station, "info", station.info)
    return _json({"station": station.name, "token": info})


async def station_enroll(c: Call) -> Response:
    station = _station(c)
    b = c.body
    validator = c.api.validator

    def run() -> Any:
        return station.enroll(validator, b["user"], provision=b.get("provision", False),
                              kind=b.get("kind"), hash=b.get("hash"), digits=b.get("digits"),
                              period=b.get("period"))

    enrolled = await _on_station(c, station, "enroll", run)
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
    # in a worker thread: the token gauges are a query of the store
    body = await run_in_threadpool(c.api.metrics.render)
    return Response(body, headers={"Content-Type": CONTENT_TYPE})



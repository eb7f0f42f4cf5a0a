"""Request decoding: from a Starlette request to a `Call` a handler can trust.

Each operation is one `Endpoint`, an ASGI app mounted by Starlette's router. It reads the
request through Starlette's own `Request` (headers, path and query parameters, the body
stream) and adds only what Starlette leaves to the application: the Bearer key and its
role, a body cap enforced while streaming (Content-Length may lie or be absent), the
content type, and the checks of the path and query parameters and of the JSON body against
the operation's schema. Every refusal is an exception of `validator.errors`, answered by
`refusal_response`.

Why an ASGI app per operation and not a Starlette function endpoint: a function endpoint
runs inside Starlette's per-request exception wrapper, which costs more per request than
the whole decoding here; the daemon's verify benchmark (docs/benchmarks.md) is what this
keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from validator import api_schema as S
from validator import rules
from validator.api_schema import OpDoc
from validator.apikeys import KeyRing, Role
from validator.batching import RUNNERS, VerifyBatcher
from validator.config import Settings
from validator.connections import discard_body
from validator.errors import (
    BodyTooLarge,
    Disconnected,
    Forbidden,
    InvalidRequest,
    InvalidUser,
    Unauthorized,
    UnsupportedMediaType,
    ValidatorError,
)
from validator.http.metrics import Metrics
from validator.http.middleware import KEY, OUTCOME, ROLE, TrustedProxies, refusal_response
from validator.offload import Offload
from validator.service import Validator

T = TypeVar("T")

if TYPE_CHECKING:
    from validator.station import Station

MAX_AUTHORIZATION = 512
"""The longest Authorization header looked at (a key is some 50 characters)."""


@dataclass
class Api:
    """What the handlers share."""

    validator: Validator
    keys: KeyRing
    settings: Settings
    stations: dict[str, Station] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    reload: Callable[[], dict[str, Any]] | None = None  # the daemon's, None elsewhere
    # trusted_proxies, which a reload replaces (the Observe middleware reads them)
    proxies: TrustedProxies = field(init=False)
    # Service calls on a store that waits on the network (PostgreSQL) run in threads, at
    # most as many at once as the store's pool has connections; None: inline.
    offload: Offload | None = None
    # verify: requests that would wait for a thread, or that the event loop read together
    # (SQLite), go together (one read, one write for all: validator.batching); None: each
    # request its own `call`.
    batcher: VerifyBatcher | None = None
    # whether other HTTP requests of this server are in progress (its ConnectionGuard's
    # busy connections; None: unknown, taken as no): a verification on the event loop then
    # waits for them, to go in one batch
    crowded: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        self.proxies = TrustedProxies(self.settings.trusted_proxies)
        if self.offload is None and getattr(self.validator.store, "remote", False):
            self.offload = Offload(int(getattr(self.validator.store, "max_connections", 8)),
                                   "foblab-store")
        if self.batcher is None:
            self.batcher = VerifyBatcher(
                self.validator.verify_many, None if self.offload is None else self.call,
                runners=RUNNERS if self.offload is None else min(RUNNERS, self.offload.size),
                on_batch=self.metrics.batched, crowded=self.crowded)
            self.metrics.count_batches()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`: on the event loop for a local store, else in a thread."""
        if self.offload is None:
            return fn(*args, **kwargs)
        if kwargs:
            return await self.offload.run(functools.partial(fn, *args, **kwargs))
        return await self.offload.run(fn, *args)

    def close(self) -> None:
        """At shutdown, before the store closes: wait for the calls under way."""
        if self.offload is not None:
            self.offload.close()


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
        """What the request came to, for the access log (`accepted`, `enrolled`, ...)."""
        self.scope[OUTCOME] = value


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Op:
    """One operation: what the OpenAPI document says, its Starlette route, its handler."""

    doc: OpDoc
    route: str  # Starlette path, e.g. /v1/tokens/{serial:path}
    handler: Handler
    large_body: bool = False


def _path_checks() -> dict[str, Callable[[str], ValidatorError | None]]:
    user, serial, station = rules.USER.regex(), rules.SERIAL.regex(), rules.STATION.regex()

    def check_user(value: str) -> ValidatorError | None:
        return None if user.fullmatch(value) else InvalidUser(rules.USER.describe("user names"))

    def check_serial(value: str) -> ValidatorError | None:
        return None if serial.fullmatch(value) else InvalidRequest(
            rules.SERIAL.describe("serials"))

    def check_station(value: str) -> ValidatorError | None:
        return None if station.fullmatch(value) else InvalidRequest(
            rules.STATION.describe("station names"))

    return {"user": check_user, "serial": check_serial, "name": check_station}


PATH_CHECKS = _path_checks()
"""The rule of every path parameter the routes have, by its name."""
PATH_SCHEMAS: dict[str, dict[str, Any]] = {"user": S.USER, "serial": S.SERIAL, "name": S.STATION}
"""The same rules as the OpenAPI document states them."""


class Endpoint:
    """The ASGI app of one operation: key, parameters, body, schema, handler, refusal."""

    def __init__(self, api: Api, op: Op) -> None:
        self.api = api
        self.op = op
        self.roles = frozenset(op.doc.roles)
        self.schema = S.SCHEMAS[op.doc.body] if op.doc.body else None
        self.limit = api.settings.max_import_bytes if op.large_body \
            else api.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._respond(request)
        except ValidatorError as exc:
            response = refusal_response(exc)
        await response(scope, receive, send)

    def _auth(self, request: Request, header: str | None) -> Role | None:
        """`header`: the request's Authorization header, if any."""
        if not self.roles:
            return None
        if header is None or header[:7].lower() != "bearer " or len(header) > MAX_AUTHORIZATION:
            raise Unauthorized("send an API key as Authorization: Bearer KEY")
        key = self.api.keys.lookup(header[7:].strip().encode("latin-1"))
        if key is None:
            raise Unauthorized("unknown API key")
        role = key.role
        request.scope[ROLE] = role.value
        request.scope[KEY] = key.name
        if role not in self.roles:
            raise Forbidden(f"the {role.value} key may not call this")
        return role

    def _too_large(self) -> BodyTooLarge:
        # A refused body is drained (bounded, validator.connections) and the connection
        # closed: a client that writes its whole body before reading must hear the 413.
        return BodyTooLarge(f"the body may be at most {self.limit} bytes",
                            headers={"Connection": "close"})

    async def _body(self, request: Request, content_type: str | None,
                    length: str | None) -> Any:
        """The JSON body; `content_type` and `length`: the request's Content-Type and
        Content-Length headers, if any."""
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media and media != "application/json" and not media.endswith("+json"):
                raise UnsupportedMediaType("send the body as Content-Type: application/json")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await discard_body(request.receive, int(length) if length.isdigit() else 1 << 62)
            raise self._too_large()
        # Message by message rather than `request.stream()`: a body past the limit is
        # drained only while the client says more is coming (`more_body`), which the
        # stream does not tell; draining a finished body would wait for nothing.
        chunks = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected("the client went away")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.limit:  # a lying or absent Content-Length: stop reading
                if more:
                    await discard_body(request.receive, None)
                raise self._too_large()
            chunks.append(chunk)
            if not more:
                break
        if size == 0:
            raise InvalidRequest("a JSON body is required")
        return S.parse_json(b"".join(chunks))

    async def _respond(self, request: Request) -> Response:
        # The three headers decoding needs, in one pass over the raw list (Starlette's
        # `Headers.get` scans it once per name). A repeated header: its first value.
        authorization = content_type = length = None
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-type":
                if content_type is None:
                    content_type = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value.decode("latin-1")
        role = self._auth(request, authorization)
        params: dict[str, str] = request.path_params
        for name, value in params.items():
            refused = PATH_CHECKS[name](value)
            if refused is not None:
                raise refused
        query: dict[str, Any] = {}
        if request.scope["query_string"] or self.op.doc.query:
            query = S.parse_query(request.query_params.multi_items(), self.op.doc.query)
        body = None
        if self.schema is not None:
            body = await self._body(request, content_type, length)
            S.check(self.schema, body)
        return await self.op.handler(Call(self.api, request.scope, role, params, query, body))

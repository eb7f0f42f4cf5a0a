"""The HTTP API, version 1: a Starlette application over `validator.service.Validator`.

The pieces live in `validator.http`, one job each: `operations` (the table of every
operation, from which come both the routes and /openapi.json), `decoding` (the Bearer key,
the parameters and the size-limited JSON body of a request, checked against the table),
`handlers` (one per operation, and the JSON shapes), `middleware` (metrics, the access log
and the JSON 500) and `metrics` (the Prometheus exposition). This module assembles them.
Every refusal is `{"error": CODE, "message": TEXT}` with the status its class in
`validator.errors` carries: a 4xx, a 5xx only for a station whose token fails, or a bug.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from validator import api_schema as S
from validator.apikeys import KeyRing
from validator.config import Settings
from validator.connections import ConnectionGuard
from validator.http.decoding import Api, Endpoint
from validator.http.metrics import Metrics
from validator.http.middleware import Observe, error_response
from validator.http.operations import operations
from validator.service import Validator
from validator.station import Station

__all__ = ["API_VERSION", "Api", "create_app", "load_aws_endpoint"]

API_VERSION = "1"


# -- the application -------------------------------------------------------------------------

def load_aws_endpoint(validator: Validator, settings: Mapping[str, Any]) -> Any | None:
    """`validator.aws.AwsEndpoint`, when that package is installed; None when it is not."""
    try:
        from validator import aws  # type: ignore[attr-defined,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name == "validator.aws":
            return None
        raise
    return aws.AwsEndpoint(validator, settings)


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
               connections: ConnectionGuard | None = None,
               reload: Callable[[], dict[str, Any]] | None = None) -> Starlette:
    """The ASGI application. `aws`: an object with `async handle(request)` mounted at /aws
    (default: `validator.aws.AwsEndpoint` when that package exists). `reload`: what
    POST /v1/admin/reload calls (the daemon's; without it that answers 409)."""
    if stations is None:
        stations = {name: Station(name, url, timeout=settings.station_timeout)
                    for name, url in settings.stations.items()}
    api = Api(validator, keys, settings, stations,
              metrics=Metrics(connections, gauges=validator.gauges), reload=reload,
              crowded=None if connections is None else connections.crowded)
    ops = operations()
    routes: list[BaseRoute] = []
    # Starlette tries the routes in order, a regular expression each: the verification,
    # which most requests are, goes first (no other path could match /v1/verify).
    for op in sorted(ops, key=lambda op: op.route != "/v1/verify"):
        routes.append(Route(op.route, Endpoint(api, op), methods=[op.doc.method],
                            include_in_schema=False))
    document = json.dumps(S.openapi((op.doc for op in ops), API_VERSION)).encode()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    routes.append(Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False))
    if aws is None:
        aws = load_aws_endpoint(validator, settings.aws)
    if aws is not None:
        if hasattr(aws, "collect_metrics"):
            api.metrics.add_collector(aws.collect_metrics)
        for path in ("/aws", "/aws/"):
            routes.append(Route(path, aws.handle, methods=["GET", "POST"],
                                include_in_schema=False))
    if settings.ui:  # the web console (validator/ui), a door over the same service
        from validator.ui import mount
        if (console := mount(validator, keys, settings, stations=stations, aws=aws)):
            routes.append(console)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        api.close()  # the store's calls under way end before the store closes
        if aws is not None and hasattr(aws, "close"):
            aws.close()  # so do the AWS endpoint's
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        HTTPException: _http_error, Exception: _internal_error})
    app.state.api = api
    # outermost: Observe sees the real peer, and hands a trusted proxy's request to the
    # X-Forwarded-For handling inside it
    app.add_middleware(Observe, metrics=api.metrics, log_requests=settings.access_log,
                       proxies=api.proxies)
    return app

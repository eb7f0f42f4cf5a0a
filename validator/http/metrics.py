"""The daemon's Prometheus metrics, with prometheus-client.

Each `Metrics` has its own `CollectorRegistry` (never the library's global one), so several
applications in one process (the tests, the lab) keep their own counts. What is counted as
it happens: HTTP requests by method, route template and status, and their latency by method
and route template; verifications by reason and their guessing surface; station operations.
What is read at scrape time: the token gauges (one query of the store, through the service),
the connection guard's counts, and whatever other doors add (`add_collector`: RADIUS).

The route label is the template with its converters dropped (`/v1/tokens/{serial}`, never
the request's path), so a label's values stay few whatever clients send.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from validator.connections import ConnectionGuard

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CONVERTER = re.compile(r"\{(\w+):\w+\}")


@functools.lru_cache(maxsize=512)
def route_template(path: str) -> str:
    """A Starlette route path as a label: `/v1/tokens/{serial:path}` -> `/v1/tokens/{serial}`."""
    return _CONVERTER.sub(r"{\1}", path)


class _Scraped(Collector):
    """A collector whose families come from a callable, run at every scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


class Metrics:
    """One daemon's metrics, on its own registry."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0)
    WINDOW_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24)

    def __init__(self, connections: ConnectionGuard | None = None,
                 gauges: Callable[[], dict[str, int]] | None = None) -> None:
        """`gauges`: called at scrape time for the token gauges (`Validator.gauges`)."""
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.connections = connections
        self._requests = Counter("foblab_http_requests", "HTTP requests by method, route "
                                 "template and status.", ("method", "route", "status"),
                                 registry=registry)
        self._latency = Histogram("foblab_http_request_duration_seconds", "Time to answer a "
                                  "request, by method and route template.",
                                  ("method", "route"), buckets=self.BUCKETS,
                                  registry=registry)
        self.in_flight = 0  # a plain int (no lock: the event loop is one thread), scraped
        self._verify = Counter("foblab_verify", "Verifications by outcome (accepted or the "
                               "reason of the refusal).", ("reason",), registry=registry)
        self._window = Histogram("foblab_verify_window_steps", "Guessing surface of a "
                                 "verification: the steps or counters a code would have "
                                 "been accepted at.", buckets=self.WINDOW_BUCKETS,
                                 registry=registry)
        self._stations = Counter("foblab_station_operations", "Station operations by "
                                 "result.", ("station", "op", "result"), registry=registry)
        started = Gauge("foblab_start_time_seconds", "When the daemon started (Unix "
                        "seconds).", registry=registry)
        started.set(time.time())
        # children by label values: .labels() parses its arguments on every call
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._verify_children: dict[str, Any] = {}
        self._gauges = gauges
        registry.register(_Scraped(self._collect_scraped))

    # -- counting ------------------------------------------------------------------------

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request; `route` is the route's path (converters are dropped)."""
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            template = route_template(route)
            pair = (self._requests.labels(method, template, str(status)),
                    self._latency.labels(method, template))
            if len(self._children) < 10_000:  # templates are few; a bound all the same
                self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def verified(self, reason: str, window: int | None) -> None:
        """One verification's outcome and guessing surface (`VerifyResult.window`)."""
        child = self._verify_children.get(reason)
        if child is None:
            child = self._verify_children[reason] = self._verify.labels(reason)
        child.inc()
        if window is not None:
            self._window.observe(window)

    def station(self, name: str, op: str, result: str) -> None:
        self._stations.labels(name, op, result).inc()

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Another door's metrics, collected at every scrape (RADIUS)."""
        self.registry.register(_Scraped(collect))

    # -- scraping ------------------------------------------------------------------------

    def _collect_scraped(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("foblab_http_requests_in_flight", "Requests being answered "
                                "now.", value=self.in_flight)
        if self._gauges is not None:
            values = self._gauges()
            for name, help_ in (("tokens", "Tokens in the store."),
                                ("devices_enabled", "Tokens enabled as a user's device "
                                 "(assigned)."),
                                ("tokens_locked", "Tokens locked after failed codes now.")):
                yield GaugeMetricFamily(f"foblab_{name}", help_, value=values[name])
        guard = self.connections
        if guard is not None:
            yield GaugeMetricFamily("foblab_connections_open", "HTTP connections open now.",
                                    value=guard.open)
            yield GaugeMetricFamily("foblab_connections_max", "The connection cap in force.",
                                    value=guard.max_connections)
            limited = CounterMetricFamily(
                "foblab_connections_limited", "Connections closed or refused by a limit: "
                "refused (503, all busy), shed (idle, to admit a new one), head_timeout.",
                labels=("reason",))
            for event in ("refused", "shed", "head_timeout"):
                limited.add_metric((event,), guard.events[event])
            yield limited

    def render(self) -> bytes:
        """The text exposition of everything (runs the scrape-time collectors)."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics", "route_template"]

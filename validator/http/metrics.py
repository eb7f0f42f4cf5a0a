"""The daemon's Prometheus metrics: a few counters, a gauge and one histogram, rendered
in the text exposition format by hand (no client library needed for so few)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from validator.connections import ConnectionGuard


class Metrics:
    """Prometheus text exposition, hand-rolled: a few counters, a gauge, one histogram."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0)
    WINDOW_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24)

    def __init__(self, connections: ConnectionGuard | None = None) -> None:
        self.connections = connections  # the server's connection guard, when it has one
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

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

import bisect
import functools
import itertools
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from validator.connections import ConnectionGuard

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("foblab.metrics")

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


class _Histogram:
    """A histogram's counts, kept as plain numbers (one event-loop thread updates them) and
    turned into a prometheus-client family at scrape time."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, other: _Histogram) -> None:
        """Count `other`'s observations here too (same bounds)."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as the exposition format has them."""
        labels = [str(float(bound)) for bound in self.bounds] + ["+Inf"]
        return list(zip(labels, itertools.accumulate(self.counts), strict=True))


class Metrics:
    """One daemon's metrics, on its own registry.

    The per-request counts (requests, their latency, verifications and their window) are
    plain numbers updated on the event loop and exported by a scrape-time collector:
    prometheus-client's own metric objects take a lock and check their type on every
    update, which cost a few percent of a verification (docs/benchmarks.md). The
    exposition is the same: `_total` counters, `_bucket`/`_sum`/`_count` histograms."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
               5.0, 10.0)
    WINDOW_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24)
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)

    def __init__(self, connections: ConnectionGuard | None = None,
                 gauges: Callable[[], dict[str, int]] | None = None) -> None:
        """`gauges`: called at scrape time for the token gauges (`Validator.gauges`)."""
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.connections = connections
        self.in_flight = 0  # a plain int (no lock: the event loop is one thread), scraped
        # (method, route path, status) -> [count, latency histogram]
        self._requests: dict[tuple[str, str, int], list[Any]] = {}
        self._verify: dict[str, int] = {}
        self._window = _Histogram(self.WINDOW_BUCKETS)
        self._batches: _Histogram | None = None  # with a VerifyBatcher (PostgreSQL)
        self._stations = Counter("foblab_station_operations", "Station operations by "
                                 "result.", ("station", "op", "result"), registry=registry)
        started = Gauge("foblab_start_time_seconds", "When the daemon started (Unix "
                        "seconds).", registry=registry)
        started.set(time.time())
        self._gauges = gauges
        self._shared: _Shared | None = None  # with serve --workers: every worker's series
        registry.register(_Scraped(self._collect_counted))
        registry.register(_Scraped(self._collect_scraped))

    # -- counting ------------------------------------------------------------------------

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request; `route` is the route's path (converters are dropped)."""
        key = (method, route, status)
        entry = self._requests.get(key)
        if entry is None:
            if len(self._requests) >= 10_000:  # templates are few; a bound all the same
                key = (method, "unmatched", status)
                entry = self._requests.get(key)
            if entry is None:
                entry = self._requests[key] = [0, _Histogram(self.BUCKETS)]
        entry[0] += 1
        entry[1].observe(seconds)

    def verified(self, reason: str, window: int | None) -> None:
        """One verification's outcome and guessing surface (`VerifyResult.window`)."""
        self._verify[reason] = self._verify.get(reason, 0) + 1
        if window is not None:
            self._window.observe(window)

    def batched(self, size: int) -> None:
        """One batch of verifications that shared their round trips (`VerifyBatcher`)."""
        self.count_batches().observe(size)

    def count_batches(self) -> _Histogram:
        """The batch sizes, exported from now on, also before the first batch."""
        if self._batches is None:
            self._batches = _Histogram(self.BATCH_BUCKETS)
        return self._batches

    def station(self, name: str, op: str, result: str) -> None:
        self._stations.labels(name, op, result).inc()

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Another door's metrics, collected at every scrape (RADIUS)."""
        self.registry.register(_Scraped(collect))

    # -- scraping ------------------------------------------------------------------------

    def _collect_counted(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("foblab_http_requests", "HTTP requests by method, "
                                       "route template and status.",
                                       labels=("method", "route", "status"))
        latency = HistogramMetricFamily("foblab_http_request_duration_seconds", "Time to "
                                        "answer a request, by method and route template.",
                                        labels=("method", "route"))
        by_route: dict[tuple[str, str], _Histogram] = {}
        for (method, route, status), (count, hist) in list(self._requests.items()):
            template = route_template(route)
            requests.add_metric((method, template, str(status)), count)
            merged = by_route.get((method, template))
            if merged is None:
                merged = by_route[(method, template)] = _Histogram(self.BUCKETS)
            merged.add(hist)
        for (method, template), hist in by_route.items():
            latency.add_metric((method, template), hist.buckets(), hist.sum)
        yield requests
        yield latency
        verify = CounterMetricFamily("foblab_verify", "Verifications by outcome (accepted "
                                     "or the reason of the refusal).", labels=("reason",))
        for reason, count in list(self._verify.items()):
            verify.add_metric((reason,), count)
        yield verify
        window = HistogramMetricFamily("foblab_verify_window_steps", "Guessing surface of a "
                                       "verification: the steps or counters a code would "
                                       "have been accepted at.")
        window.add_metric((), self._window.buckets(), self._window.sum)
        yield window
        if self._batches is not None:
            batches = HistogramMetricFamily(
                "foblab_verify_batch_size", "Verifications per batch sharing one read and "
                "one write of the database.")
            batches.add_metric((), self._batches.buckets(), self._batches.sum)
            yield batches

    def _collect_store(self) -> Iterator[Metric]:
        """The store's gauges: the same whichever process reads them."""
        if self._gauges is not None:
            values = self._gauges()
            for name, help_ in (("tokens", "Tokens in the store."),
                                ("devices_enabled", "Tokens enabled as a user's device "
                                 "(assigned)."),
                                ("tokens_locked", "Tokens locked after failed codes now.")):
                yield GaugeMetricFamily(f"foblab_{name}", help_, value=values[name])

    def _collect_scraped(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("foblab_http_requests_in_flight", "Requests being answered "
                                "now.", value=self.in_flight)
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

    def share(self, directory: Path, worker: int) -> None:
        """One of `serve --workers`' processes: from now on this process's series carry a
        `worker` label and are written to `directory` every `SHARE_SECONDS` (and at
        `stop_sharing`), and a scrape of any worker shows every worker's, the others' as
        last written. The store's gauges are read once, without the label."""
        self._shared = _Shared(directory, worker, self.registry)
        self._shared.start()

    def stop_sharing(self) -> None:
        """At shutdown: this process's last counts written for the others to show."""
        if self._shared is not None:
            self._shared.stop()

    def render(self) -> bytes:
        """The text exposition of everything (runs the scrape-time collectors)."""
        if self._shared is None:
            families = list(self.registry.collect())
        else:
            families = self._shared.families()
        families.extend(self._collect_store())
        return generate_latest(_Scraped(lambda: families))


SHARED_PREFIX = "foblab-metrics-"
"""`serve --workers`' folder for its workers' series: this, the parent's pid, a dash, a
random part (`shared_folder`)."""
STALE_SECONDS = 60.0
"""A folder of a dead parent whose files are older than this is swept (`shared_folder`);
a live one's workers rewrite theirs every `SHARE_SECONDS`."""
_SHARED_FILE = re.compile(r"\.?worker-\d+\.prom(\.\d+)?")


def shared_folder(root: Path | None = None) -> Path:
    """A new private folder (mode 0700) in the temporary directory (or `root`) for the
    workers of this `serve --workers` parent to share their series, named after its pid.
    The parent removes it when it ends; one SIGKILLed could not, so the folders of dead
    parents are swept first (`sweep_shared`)."""
    where = Path(tempfile.gettempdir() if root is None else root)
    swept = sweep_shared(where, time.time())
    if swept:
        log.info("removed %d metrics folder(s) left by workers' parents that died", swept)
    return Path(tempfile.mkdtemp(prefix=f"{SHARED_PREFIX}{os.getpid()}-", dir=where))


def sweep_shared(root: Path, now: float) -> int:
    """Remove the folders `shared_folder` made in `root` for parents that are gone: ours
    (same user, a real folder, not a link), named after a pid no process has, and with
    nothing written for `STALE_SECONDS` (so not a live parent's in another pid namespace
    that shares this directory). Only our files are removed, and the folder if it is then
    empty. Returns how many folders went."""
    swept = 0
    for folder in root.glob(f"{SHARED_PREFIX}*-*"):
        pid = folder.name[len(SHARED_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        try:
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            files = [f for f in folder.iterdir() if _SHARED_FILE.fullmatch(f.name)]
            newest = max([info.st_mtime, *(f.lstat().st_mtime for f in files)])
            if now - newest < STALE_SECONDS:
                continue
            for f in files:
                f.unlink()
            folder.rmdir()  # fails, and the folder stays, if it holds anything else
        except OSError:
            continue
        swept += 1
    return swept


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we would have written: leave the folder alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): it exists
        return True
    return True


SHARE_SECONDS = 1.0
"""How often a worker of `serve --workers` writes its series for the others' scrapes."""
MAX_SHARED_BYTES = 4 << 20
"""A worker's file larger than this is not read (its series are few: templates, reasons)."""


class _Shared:
    """A worker's series, labelled with its number, in `worker-N.prom` (the text
    exposition, replaced whole: a reader never sees half a file), and its siblings' read
    back at a scrape."""

    def __init__(self, directory: Path, worker: int, registry: CollectorRegistry) -> None:
        self.directory = Path(directory)
        self.worker = str(worker)
        self.path = self.directory / f"worker-{worker}.prom"
        self._registry = registry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foblab-metrics",
                                        daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.write()

    def _run(self) -> None:
        while not self._stop.wait(SHARE_SECONDS):
            try:
                self.write()
            except Exception:  # noqa: BLE001 - a full disk must not end the metrics
                log.exception("cannot write this worker's metrics to %s", self.path)

    def own(self) -> list[Metric]:
        out = []
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, "worker": self.worker})
                                for s in family.samples]
            out.append(labelled)
        return out

    def write(self) -> None:
        own = self.own()
        text = generate_latest(_Scraped(lambda: own))
        scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        scratch.write_bytes(text)
        os.replace(scratch, self.path)

    def families(self) -> list[Metric]:
        """This worker's series now and the others' as they last wrote them, one family
        per name."""
        merged = {family.name: family for family in self.own()}
        for path in sorted(self.directory.glob("worker-*.prom")):
            if path == self.path:
                continue
            try:
                if path.stat().st_size > MAX_SHARED_BYTES:
                    continue
                theirs = list(text_string_to_metric_families(path.read_text()))
            except (OSError, ValueError, UnicodeDecodeError):  # gone, or not ours
                continue
            for family in theirs:
                mine = merged.get(family.name)
                if mine is None:
                    merged[family.name] = family
                elif mine.type == family.type:
                    mine.samples.extend(family.samples)
        return list(merged.values())


__all__ = ["CONTENT_TYPE", "Metrics", "route_template", "shared_folder", "sweep_shared"]

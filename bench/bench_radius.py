"""The RADIUS door beside HTTP verify, in one daemon run: Access-Requests per second and
p50/p99 latency at 1 and 8 outstanding requests, each a fresh valid code (PAP, with
Message-Authenticator, the answer's authenticators checked by the generator), and the
same number of HTTP verifications at 1 and 8 keep-alive connections against the same
daemon and SQLite file of 10,000 enabled tokens (bench_daemon's set-up). Then RADIUS alone
at 8 and 32 outstanding on PostgreSQL (a copy of the same validator; access log off, as
in bench_scaleout), with the mean number of Access-Requests per batch read together.

The server is a real `foblab validator serve --radius` process (access log on); the load
generators separate processes (HTTP: asyncio on raw sockets; RADIUS: one epoll loop over
blocking UDP sockets), on the same 2 cores.

Usage: python -m bench radius      (python -m bench.bench_radius load: internal)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.bench_daemon import (
    _code,
    _prepare,
    _secret,
    _verify_requests,
    run_load,
    start_daemon,
)

ROOT = Path(__file__).resolve().parent.parent
PHASES = ((1, 600), (8, 2_000))  # (outstanding requests, requests); each after a warm-up
WARMUP = 200
SECRET = b"bench-radius-shared-secret"


# -- the RADIUS load generator (its own process) ---------------------------------------------

def _load(host: str, port: int, requests: list[tuple[bytes, bytes]],
          outstanding: int) -> dict[str, Any]:
    """`outstanding` connected UDP sockets, each with one request in flight, driven by one
    epoll loop (asyncio's UDP path added milliseconds of its own at 1 outstanding)."""
    import hashlib
    import selectors

    queue = list(reversed(requests))
    latencies: list[float] = []
    accepted = 0
    failures: list[str] = []
    sel = selectors.DefaultSelector()
    inflight: dict[socket.socket, tuple[float, bytes]] = {}

    def send(sock: socket.socket) -> None:
        data, authenticator = queue.pop()
        inflight[sock] = (time.perf_counter(), authenticator)
        sock.send(data)

    start = time.perf_counter()
    for _ in range(outstanding):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, port))
        sel.register(sock, selectors.EVENT_READ)
        if queue:
            send(sock)
    while inflight:
        events = sel.select(5)
        if not events:
            failures.append(f"timeout with {len(inflight)} in flight")
            break
        for key, _ in events:
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            raw = ready.recv(4096)
            t0, authenticator = inflight.pop(ready)
            latencies.append(time.perf_counter() - t0)
            # Response Authenticator = MD5(code+id+length+request auth+attrs+secret)
            good = hashlib.md5(raw[:4] + authenticator + raw[20:] + SECRET).digest() \
                == raw[4:20]
            if raw[0] == 2 and good and raw[20] == 80:
                accepted += 1
            elif len(failures) < 5:
                failures.append(f"code {raw[0]}, authentic {good}: {raw[20:]!r}")
            if queue:
                send(ready)
    elapsed = time.perf_counter() - start
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    latencies.sort()
    n = len(latencies)
    return {"outstanding": outstanding, "n": n, "ok": accepted, "seconds": elapsed,
            "rate": n / elapsed, "p50_ms": 1000 * latencies[n // 2],
            "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))], "failures": failures}


def _load_main() -> None:
    spec = json.loads(sys.stdin.read())
    requests = [(bytes.fromhex(d), bytes.fromhex(a)) for d, a in spec["requests"]]
    print(json.dumps(_load(spec["host"], spec["port"], requests, spec["outstanding"])))


def run_radius_load(host: str, port: int, requests: list[tuple[bytes, bytes]],
                    outstanding: int) -> dict[str, Any]:
    spec = {"host": host, "port": port, "outstanding": outstanding,
            "requests": [(d.hex(), a.hex()) for d, a in requests]}
    out = subprocess.run([sys.executable, "-m", "bench.bench_radius", "load"], cwd=ROOT,
                         input=json.dumps(spec), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _fresh_step(enabled: int) -> int:
    """A step whose code is fresh and inside the window now, for tokens whose watermark
    is `enabled - 1`: the current step, or `enabled` while the current one is used up."""
    return max(enabled, int(time.time() // 30))


def _radius_requests(first: int, count: int, step: int) -> list[tuple[bytes, bytes]]:
    from validator.radius import codec

    out = []
    for i in range(first, first + count):
        pkt = codec.access_request(f"user{i}", _code(_secret(i), step), SECRET)
        out.append((pkt.RequestPacket(), pkt.authenticator))
    return out


# -- the run ---------------------------------------------------------------------------------

@contextmanager
def _serving(home: Path) -> Iterator[tuple[str, tuple[str, int]]]:
    """The daemon on `home` with a RADIUS door for the generator's address: its HTTP URL and
    RADIUS address; stopped on the way out."""
    (home / "radius.secret").write_bytes(SECRET)
    (home / "radius.secret").chmod(0o600)
    with (home / "foblab.toml").open("a") as f:
        f.write('\n[radius]\nlisten = "127.0.0.1:0"\n[[radius.clients]]\nname = "bench"\n'
                'address = "127.0.0.1/32"\nsecret_file = "radius.secret"\n')
    with (home / "daemon.log").open("w") as log:
        proc, url, radius = start_daemon(home, log)
        try:
            if radius is None:
                raise RuntimeError("the daemon did not open its RADIUS door")
            yield url, radius
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    _sqlite()
    _postgresql()


def _postgresql() -> None:
    """RADIUS alone on PostgreSQL at 8 and 32 outstanding, with the batches' mean size."""
    from bench.bench_scaleout import _batches, _configure

    sys.path.append(str(ROOT / "tests"))
    from pg import start_server, stop_server

    with tempfile.TemporaryDirectory(prefix="foblab-bench-radius-pg-") as tmp:
        template = Path(tmp) / "t"
        enabled = _prepare(template)
        server = start_server(durable=True)
        try:
            home = Path(tmp) / "v"
            _configure(template, home, server.new_database())
            with _serving(home) as (url, radius):
                port = int(url.rsplit(":", 1)[1])
                first = 0
                for n, count in ((8, 2_000), (32, 2_000)):
                    run_radius_load(*radius, _radius_requests(first, WARMUP,
                                                              _fresh_step(enabled)), n)
                    first += WARMUP
                    before = _batches([home], [port], "foblab_radius_batch_size")
                    r = run_radius_load(*radius, _radius_requests(first, count,
                                                                  _fresh_step(enabled)), n)
                    after = _batches([home], [port], "foblab_radius_batch_size")
                    first += count
                    per = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                    _report("RADIUS on PostgreSQL", "outstanding", n, r,
                            f"; {per:.1f} per batch")
        finally:
            stop_server(server)


def _sqlite() -> None:
    with tempfile.TemporaryDirectory(prefix="foblab-bench-radius-") as tmp:
        home = Path(tmp) / "v"
        t0 = time.perf_counter()
        enabled = _prepare(home)  # the step after the enabling pair
        print(f"   prepared 10000 enabled tokens in {time.perf_counter() - t0:.1f} s")
        with _serving(home) as (url, radius):
            host, port = url.removeprefix("http://").rsplit(":", 1)
            key = (home / "verifier.key").read_text().strip()
            first = 0
            results: dict[tuple[str, int], dict[str, Any]] = {}
            for n, count in PHASES:
                step = _fresh_step(enabled)
                run_load(host, int(port), _verify_requests(key, first, WARMUP, step), n)
                first += WARMUP
                step = _fresh_step(enabled)
                r = run_load(host, int(port), _verify_requests(key, first, count, step), n)
                first += count
                results[("http", n)] = r
                _report("HTTP verify", "conns", n, r)
                step = _fresh_step(enabled)
                run_radius_load(*radius, _radius_requests(first, WARMUP, step), n)
                first += WARMUP
                step = _fresh_step(enabled)
                r = run_radius_load(*radius, _radius_requests(first, count, step), n)
                first += count
                results[("radius", n)] = r
                _report("RADIUS Access-Request", "outstanding", n, r)
            for n, _ in PHASES:
                ratio = results[("radius", n)]["rate"] / results[("http", n)]["rate"]
                print(f"   at {n}: RADIUS is {ratio:.0%} of HTTP verify")
            # Does RADIUS traffic hold up the HTTP API? HTTP verify at 1 connection while
            # RADIUS runs at 8 outstanding, against the 1-connection figure above.
            step = _fresh_step(enabled)
            radius_reqs = _radius_requests(first, 3_000, step)
            first += 3_000
            http_reqs = _verify_requests(key, first, 600, step)
            first += 600  # 9,600 of the 10,000 tokens used, each once
            box: dict[str, Any] = {}
            side = threading.Thread(target=lambda: box.update(
                r=run_radius_load(*radius, radius_reqs, 8)))
            side.start()
            time.sleep(0.3)  # let the RADIUS load get going
            r = run_load(host, int(port), http_reqs, 1)
            side.join()
            _report("HTTP verify during RADIUS load", "conns", 1, r)
            _report("  the RADIUS load meanwhile", "outstanding", 8, box["r"])


def _report(what: str, unit: str, n: int, r: dict[str, Any], extra: str = "") -> None:
    print(f"   {what}, {n} {unit}: {r['rate']:,.0f}/s, p50 {r['p50_ms']:.2f} ms, "
          f"p99 {r['p99_ms']:.2f} ms, {r['ok']}/{r['n']} accepted{extra}"
          + (f"  e.g. {r['failures'][0]}" if r["failures"] else ""))


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        _load_main()
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        main()

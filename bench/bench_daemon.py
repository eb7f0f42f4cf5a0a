"""The validator daemon through HTTP: verifications per second and p50/p99 latency at 1, 8
and 32 concurrent keep-alive connections, each request a fresh valid code, replay
protection on, against a SQLite database of 10,000 enabled tokens. Also Starlette against
FastAPI on a trivial authenticated JSON endpoint under the same uvicorn, and what a hop to
a worker thread would cost beside one verification.

The server is a real `foblab validator serve` process (access log on, written to a file);
the load generator a separate process: an asyncio client on raw sockets sending prebuilt
requests, so it takes as little of the machine's second core as it can.

Usage: python -m bench daemon      (python -m bench.bench_daemon trivial KIND PORT: internal)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 10_000
PHASES = ((1, 1_500), (8, 4_000), (32, 4_000))  # (connections, requests); 500 warm up
WARMUP = 500
SECRET = b"benchmark-seed-%05d-x"


def _secret(i: int) -> bytes:
    return (SECRET % i)[:20].ljust(20, b"\0")


def _code(key: bytes, step: int) -> str:
    mac = hmac.digest(key, step.to_bytes(8, "big"), "sha1")
    off = mac[-1] & 0x0F
    return f"{(int.from_bytes(mac[off:off + 4], 'big') & 0x7FFFFFFF) % 1_000_000:06d}"


# -- load generator (its own process) -------------------------------------------------------

async def _load(host: str, ports: list[int], requests: list[bytes],
                conns: int) -> dict[str, Any]:
    """`conns` keep-alive connections spread round-robin over `ports` (several daemons:
    bench_scaleout), each sending the next request as soon as its answer is in."""
    queue = list(reversed(requests))
    latencies: list[float] = []
    ok = 0
    failures: list[str] = []

    async def worker(port: int) -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                req = queue.pop()
                t0 = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if b'"ok":true' in body or b'"pong"' in body:
                    ok += 1
                elif len(failures) < 5:
                    failures.append(body.decode(errors="replace"))
        finally:
            writer.close()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(conns)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    latencies.sort()
    return {"conns": conns, "n": len(latencies), "ok": ok, "seconds": elapsed, "cpu": cpu,
            "rate": len(latencies) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "failures": failures}


def _load_main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    requests = [r.encode("latin-1") for r in spec["requests"]]
    result = asyncio.run(_load(spec["host"], spec["ports"], requests, spec["conns"]))
    print(json.dumps(result))


def run_load(host: str, port: int, requests: list[bytes], conns: int) -> dict[str, Any]:
    spec = {"host": host, "ports": [port], "conns": conns,
            "requests": [r.decode("latin-1") for r in requests]}
    out = subprocess.run([sys.executable, "-m", "bench.bench_daemon", "load"], cwd=ROOT,
                         input=json.dumps(spec), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _post(path: str, key: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode() + data


# -- the trivial endpoint, Starlette and FastAPI ---------------------------------------------

_TRIVIAL_KEY = "trivial-benchmark-key-0123456789"


def _trivial_app(kind: str) -> Any:
    import hashlib

    expected = hashlib.sha256(_TRIVIAL_KEY.encode()).digest()

    def authorised(header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(hashlib.sha256(header[7:].encode()).digest(), expected)

    if kind == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def ping(request: Request) -> JSONResponse:
            if not authorised(request.headers.get("authorization")):
                return JSONResponse({"error": "unauthorized", "message": "key"}, 401)
            body = await request.json()
            return JSONResponse({"pong": body.get("n")})

        return Starlette(routes=[Route("/ping", ping, methods=["POST"])])

    from fastapi import Depends, FastAPI, Header, HTTPException
    from pydantic import BaseModel, ConfigDict

    class Ping(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int

    async def auth(authorization: str | None = Header(default=None)) -> None:  # no thread hop
        if not authorised(authorization):
            raise HTTPException(401, "key")

    app = FastAPI()

    @app.post("/ping", dependencies=[Depends(auth)])
    async def ping_fastapi(body: Ping) -> dict[str, Any]:
        return {"pong": body.n}

    return app


def _trivial_main(kind: str, port: int) -> None:
    import uvicorn

    uvicorn.run(_trivial_app(kind), host="127.0.0.1", port=port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def trivial(kind: str, conns: int = 8, n: int = 6_000) -> dict[str, Any]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_daemon", "trivial", kind,
                             str(port)], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        reqs = [_post("/ping", _TRIVIAL_KEY, {"n": i}) for i in range(n)]
        run_load("127.0.0.1", port, reqs[:500], conns)
        return run_load("127.0.0.1", port, reqs, conns)
    finally:
        proc.terminate()
        proc.wait(10)


# -- the daemon ----------------------------------------------------------------------------

def _prepare(home: Path) -> int:
    """init, 10,000 tokens from one CSV import, each enabled for its own user with the
    codes of the previous and the current step, as a person would; returns the step whose
    code each request then sends (the next one: inside the ±1 window, valid once, for a
    minute whatever the clock does meanwhile)."""
    from validator.daemon import init_dir
    from validator.importers import CSV_HEADER
    from validator.service import Validator

    init_dir(home)
    lines = [",".join(CSV_HEADER)]
    for i in range(TOKENS):
        row = {"serial": f"BENCH{i:05d}", "kind": "totp", "digits": "6", "hash": "sha1"}
        cells = []
        for column in CSV_HEADER:
            if column in row:
                cells.append(row[column])
            elif "secret" in column or "seed" in column:
                cells.append(_secret(i).hex())
            else:
                cells.append("30")  # period_or_counter
        lines.append(",".join(cells))
    v = Validator.open(home / "validator.db", home / "seed.key")
    try:
        v.import_seed_file("\n".join(lines) + "\n", "csv")
        now = time.time()
        step = int(now // 30)
        for i in range(TOKENS):
            key = _secret(i)
            v.enable(f"user{i}", f"BENCH{i:05d}", _code(key, step - 1), _code(key, step),
                     now=now)
    finally:
        v.close()
    return step + 1


def _verify_requests(key: str, first: int, count: int, step: int) -> list[bytes]:
    return [_post("/v1/verify", key, {"user": f"user{i}", "code": _code(_secret(i), step)})
            for i in range(first, first + count)]


def _thread_hop_vs_verify(home: Path) -> tuple[float, float, float]:
    """Microseconds: one `anyio.to_thread.run_sync` of a no-op, one through the daemon's
    own threads (`validator.offload`, what the HTTP door on PostgreSQL uses), and one
    in-process `Validator.verify` of a wrong code (a full read, HMAC and failure
    commit)."""
    import anyio
    import anyio.to_thread

    from validator.offload import Offload
    from validator.service import Validator

    async def hops() -> float:
        t0 = time.perf_counter()
        for _ in range(2000):
            await anyio.to_thread.run_sync(lambda: None)
        return (time.perf_counter() - t0) / 2000 * 1e6

    async def own_hops(threads: Offload) -> float:
        t0 = time.perf_counter()
        for _ in range(2000):
            await threads.run(lambda: None)
        return (time.perf_counter() - t0) / 2000 * 1e6

    hop = anyio.run(hops)
    threads = Offload(8)
    try:
        own = anyio.run(own_hops, threads)
    finally:
        threads.close()
    v = Validator.open(home / "validator.db", home / "seed.key")
    try:
        t0 = time.perf_counter()
        for i in range(2000):
            v.verify(f"user{i}", "000000")
            v.unlock(f"BENCH{i:05d}")
        per = (time.perf_counter() - t0) / 2000 * 1e6
    finally:
        v.close()
    return hop, own, per


def start_daemon(home: Path, log: Any, *args: str, tree: str | None = None
                 ) -> tuple[subprocess.Popen[str], str, tuple[str, int] | None]:
    """A real `foblab validator serve --dir HOME --port 0 ARGS` process once it listens:
    (the process, its URL, its RADIUS door's (host, port) or None). Its log, read from
    standard error until then, goes on into `log` so it never blocks on a full pipe.
    `tree`: the source tree to run it from (bench.side_by_side), else this one."""
    import shutil
    import threading

    env = None if tree is None else {**os.environ, "PYTHONPATH": tree}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "validator", "serve",
                             "--dir", str(home), "--port", "0", *args], cwd=tree or ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    url, radius = "", None
    for line in proc.stderr:
        found = re.findall(r"on udp ([^\s\"]+)", line) if "RADIUS" in line else []
        if found:
            rhost, rport = found[0].rsplit(":", 1)
            radius = (rhost.strip("[]"), int(rport))
        if "listening on " in line:
            url = re.findall(r"listening on (https?://[^\s\"]+)", line)[0]
            break
    if not url:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"the daemon did not start ({home})")
    threading.Thread(target=shutil.copyfileobj, args=(proc.stderr, log), daemon=True).start()
    return proc, url, radius


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="foblab-bench-") as tmp:
        home = Path(tmp) / "v"
        t0 = time.perf_counter()
        step = _prepare(home)
        print(f"   prepared {TOKENS} enabled tokens in {time.perf_counter() - t0:.1f} s")
        hop, own, per = _thread_hop_vs_verify(home)
        print(f"   thread hop {hop:.0f} µs (anyio), {own:.0f} µs (validator.offload); "
              f"verify+unlock in-process {per:.0f} µs")
        log = open(home / "access.log", "w")  # noqa: SIM115 - closed below
        proc, url, _ = start_daemon(home, log)
        try:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            key = (home / "verifier.key").read_text().strip()
            first = 0
            run_load(host, int(port), _verify_requests(key, first, WARMUP, step), 8)
            first += WARMUP
            for conns, count in PHASES:
                r = run_load(host, int(port), _verify_requests(key, first, count, step), conns)
                first += count
                print(f"   {conns:>2} conns: {r['rate']:,.0f} verifications/s, "
                      f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                      f"{r['ok']}/{r['n']} accepted"
                      + (f"  e.g. {r['failures'][0]}" if r["failures"] else ""))
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    for kind in ("starlette", "fastapi"):
        try:
            r = trivial(kind)
        except (RuntimeError, ImportError) as exc:
            print(f"   trivial endpoint, {kind}: not measured ({exc})")
            continue
        print(f"   trivial authenticated JSON endpoint, {kind}, 8 conns: {r['rate']:,.0f}/s, "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        _load_main()
    elif sys.argv[1:2] == ["trivial"]:
        _trivial_main(sys.argv[2], int(sys.argv[3]))
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        main()

"""Scale-out: verifications per second and p50/p99 at 8 and 32 keep-alive connections for
SQLite with 1 and 2 workers (`serve --workers`) and PostgreSQL with 1 and 2 daemons on one
database, side by side in one run on this machine, the load generator included (a separate
process: bench_daemon's raw-socket asyncio client, spreading its connections over the
daemons' ports as a load balancer would). Every request is a fresh valid code of its own
user (10,000 enabled TOTP tokens, prepared once in SQLite and copied, sealed secrets as
they are, into each configuration's database: `validator.store_copy`). PostgreSQL is a
local server started here (Debian's binaries, tests/pg.py) with its default durability
(WAL flushed at every commit), on a Unix socket. Also prints the CPU seconds the daemons,
the database server and the load generator used per phase, to see what bounds the figure.

With FOBLAB_BENCH_PG_NO_FLUSH=1, PostgreSQL runs without flushing its WAL at each commit
(the test suite's throw-away settings), to measure what the flush costs; a validator must
never run so (a server crash would forget accepted codes, which could be accepted again).

Usage: python -m bench scaleout
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import bench_daemon as B

ROOT = B.ROOT
PHASES = ((8, 3_000), (32, 3_000))
WARMUP = 500


def _cpu(pids: list[int]) -> float:
    """user+system CPU seconds of these processes and their children so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick
    return total


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.extend(_tree(int(child)))
    return out


def _run_load(ports: list[int], requests: list[bytes], conns: int,
              watched: list[int]) -> dict[str, Any]:
    spec = {"host": "127.0.0.1", "ports": ports, "conns": conns,
            "requests": [r.decode("latin-1") for r in requests]}
    before = _cpu(watched)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_daemon", "load"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(json.dumps(spec), timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(out)
    result["cpu_servers"] = _cpu(watched) - before
    result["cpu_load"] = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    return result


def _start(home: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the daemon
    proc, url, _ = B.start_daemon(home, sink, *args)
    return proc, int(url.rsplit(":", 1)[1])


def _batches(homes: list[Path], ports: list[int],
             family_name: str = "foblab_verify_batch_size") -> tuple[float, float]:
    """The daemons' `foblab_verify_batch_size` (or `family_name`) sum and count so far."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from validator.config import load

    sums = {f"{family_name}_sum": 0.0, f"{family_name}_count": 0.0}
    for home, port in zip(homes, ports, strict=True):
        key = load(home / "foblab.toml").admin_key_file.read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            for family in text_string_to_metric_families(r.read().decode()):
                for sample in family.samples:
                    if sample.name in sums:
                        sums[sample.name] += sample.value
    return sums[f"{family_name}_sum"], sums[f"{family_name}_count"]


def _configure(template: Path, home: Path, url: str | None) -> None:
    shutil.copytree(template, home)
    if url is None:
        return
    import tomllib

    import tomli_w

    from validator.store_copy import copy_database

    copy_database(str(template / "validator.db"), url)
    (home / "validator.db").unlink()
    doc = tomllib.loads((home / "foblab.toml").read_text())
    doc["validator"]["database_url"] = url
    doc["validator"]["access_log"] = False
    (home / "foblab.toml").write_text(tomli_w.dumps(doc))


def main() -> None:
    sys.path.append(str(ROOT / "tests"))
    from pg import start_server, stop_server

    with tempfile.TemporaryDirectory(prefix="foblab-scaleout-") as tmp:
        template = Path(tmp) / "template"
        t0 = time.perf_counter()
        first_step = B._prepare(template)  # the enabling step + 1: fresh for every user
        import tomllib

        import tomli_w
        doc = tomllib.loads((template / "foblab.toml").read_text())
        doc["validator"]["access_log"] = False  # the same for every configuration
        (template / "foblab.toml").write_text(tomli_w.dumps(doc))
        print(f"   prepared {B.TOKENS} enabled tokens in {time.perf_counter() - t0:.1f} s")
        durable = os.environ.get("FOBLAB_BENCH_PG_NO_FLUSH") != "1"
        if not durable:
            print("   PostgreSQL WITHOUT its commit flush (fsync, synchronous_commit off): "
                  "to see what the flush costs, never a way to run a validator")
        server = start_server(durable=durable)
        try:
            configs = (("sqlite, 1 worker", None, 1, 1), ("sqlite, 2 workers", None, 2, 1),
                       ("postgresql, 1 daemon", "pg", 1, 1),
                       ("postgresql, 2 daemons", "pg", 1, 2))
            for n, (name, kind, workers, daemons) in enumerate(configs):
                url = server.new_database() if kind else None
                homes: list[Path] = []
                for d in range(daemons):
                    home = Path(tmp) / f"c{n}-{d}"
                    if d == 0:
                        _configure(template, home, url)
                    else:
                        shutil.copytree(homes[0], home)
                    homes.append(home)
                procs = [_start(h, "--workers", str(workers)) for h in homes]
                try:
                    ports = [p for _, p in procs]
                    watched = [pid for proc, _ in procs for pid in _tree(proc.pid)]
                    key = (homes[0] / "verifier.key").read_text().strip()
                    first = 0
                    step = max(first_step, int(time.time() // 30))
                    _run_load(ports, B._verify_requests(key, first, WARMUP, step), 8, watched)
                    first += WARMUP
                    pg_pids = _pg_pids(server) if kind else []  # with the pools' backends
                    for conns, count in PHASES:
                        step = max(first_step, int(time.time() // 30))
                        reqs = B._verify_requests(key, first, count, step)
                        db_before = _cpu(pg_pids)
                        batched = _batches(homes, ports) if kind else (0.0, 0.0)
                        r = _run_load(ports, reqs, conns, watched)
                        db = _cpu(pg_pids) - db_before
                        if kind:
                            in_batches, batches = _batches(homes, ports)
                            batched = (in_batches - batched[0], batches - batched[1])
                        first += count
                        per = 1e6 / count
                        print(f"   {name:<22} {conns:>2} conns: {r['rate']:>6,.0f}/s, "
                              f"p50 {r['p50_ms']:5.2f} ms, p99 {r['p99_ms']:6.2f} ms, "
                              f"{r['ok']}/{r['n']} ok; CPU µs/verify: daemons "
                              f"{r['cpu_servers'] * per:.0f}"
                              + (f", postgres {db * per:.0f}" if kind else "")
                              + f", load generator {r['cpu_load'] * per:.0f}"
                              + (f"; {batched[0] / batched[1]:.1f} per batch"
                                 if batched[1] else "")
                              + (f"  e.g. {r['failures'][0]}" if r["failures"] else ""))
                finally:
                    for proc, _ in procs:
                        proc.terminate()
                    for proc, _ in procs:
                        proc.wait(30)
        finally:
            stop_server(server)


def pg_verifications(n: int) -> None:
    """`n` accepted verifications in process on PostgreSQL: the unit of work for
    `python -m bench.instructions --code` (the client's instructions only; the server is
    another process). The server's URL is in FOBLAB_BENCH_PG (any database on it: this
    creates a fresh one): a postgresql:// URL, e.g. tests/pg.py's `start_server().url()`."""
    import uuid

    import psycopg

    from validator.service import Validator
    from validator.store_copy import copy_database

    admin = os.environ["FOBLAB_BENCH_PG"]
    name = f"instr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    from urllib.parse import urlsplit, urlunsplit

    url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    saved = B.TOKENS
    B.TOKENS = n
    try:
        with tempfile.TemporaryDirectory(prefix="foblab-pg-") as tmp:
            home = Path(tmp) / "v"
            step = B._prepare(home)
            copy_database(str(home / "validator.db"), url)
            v = Validator.open(url, home / "seed.key")
            try:
                for i in range(n):
                    result = v.verify(f"user{i}", B._code(B._secret(i), step))
                    assert result.accepted, result
            finally:
                v.close()
    finally:
        B.TOKENS = saved


def _pg_pids(server: Any) -> list[int]:
    """The PostgreSQL postmaster and its backends."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    return _tree(pid)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

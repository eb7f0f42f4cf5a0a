"""The verify phase of bench_daemon against several source trees in one run, interleaved
round by round, each run on a fresh copy of a 10,000-token database prepared by that tree's
own code (so a tree from before a schema change takes part); reports
rate, p50/p99 and the daemon's own CPU time per verification (user + system, from /proc),
which a machine shared with other jobs disturbs far less than the rate.

Usage: python -m bench.side_by_side old=/path/to/old/tree new=/path/to/new/tree
       (ROUNDS=5 in the environment for more rounds; CONNS=8,32 for several connection
       counts, each a phase of every run; WORKERS=2 serves with `--workers 2`, in trees
       that have it; not part of `make bench`)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import bench_daemon as B

CONNS = tuple(int(c) for c in os.environ.get("CONNS", "8").split(","))
WORKERS = os.environ.get("WORKERS")
N = 4000


def start_daemon(tree: str, home: Path) -> tuple[subprocess.Popen[str], str, int]:
    """`tree`'s `foblab validator serve` on `home`, on a free port; its log is drained into
    home/access.log. Returns the process, host and port."""
    log = open(home / "access.log", "w")  # noqa: SIM115 - open for the daemon's lifetime
    args = ("--workers", WORKERS) if WORKERS else ()
    proc, url, _ = B.start_daemon(home, log, *args, tree=tree)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return proc, host, int(port)


def run(tree: str, home: Path, step: int) -> list[dict[str, Any]]:
    """One run of `tree`'s daemon: a phase for each of CONNS, on the same folder."""
    proc, host, port = start_daemon(tree, home)
    out = []
    try:
        key = (home / "verifier.key").read_text().strip()
        B.run_load(host, port, B._verify_requests(key, 0, 500, step), CONNS[0])
        for n, conns in enumerate(CONNS):
            requests = B._verify_requests(key, 500 + n * N, N, step)
            before = _cpus(proc.pid)
            r = B.run_load(host, port, requests, conns)
            r["cpu_us"] = (_cpus(proc.pid) - before) / N * 1e6
            out.append(r)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def _cpus(pid: int) -> float:
    """CPU seconds of the daemon and its workers (`--workers`)."""
    from bench import bench_scaleout

    return bench_scaleout._cpu(bench_scaleout._tree(pid))


def _prepared(tree: str, master: Path) -> tuple[Path, int]:
    """The 10,000-token folder made by `tree`'s own code (its own schema and config keys,
    so a tree from before a schema change can serve it), and the step its tokens were
    enabled at. The same seeds and users in every tree: the same requests fit them all."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from bench.bench_daemon import _prepare; print(_prepare(Path(sys.argv[1])))",
         str(master)], cwd=tree, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": tree})
    if out.returncode != 0:
        raise RuntimeError(f"{tree} could not prepare its folder: {out.stderr[-2000:]}")
    return master, int(out.stdout.split()[-1]) - 1


def main(argv: list[str]) -> None:
    trees = dict(a.split("=", 1) for a in argv)
    if 500 + len(CONNS) * N > B.TOKENS:
        raise SystemExit(f"at most {(B.TOKENS - 500) // N} connection counts: each phase "
                         f"takes {N:,} of the {B.TOKENS:,} users' fresh codes")
    rounds = int(os.environ.get("ROUNDS", "3"))
    with tempfile.TemporaryDirectory(prefix="foblab-side-") as tmp:
        masters: dict[str, tuple[Path, int]] = {}
        for tree in dict.fromkeys(trees.values()):
            masters[tree] = _prepared(tree, Path(tmp) / f"master{len(masters)}")
        results: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for i in range(rounds):
            for name, tree in trees.items():
                home = Path(tmp) / f"{name}{i}"
                master, enabled_at = masters[tree]
                shutil.copytree(master, home)
                step = max(int(time.time() // 30), enabled_at + 1)
                for conns, r in zip(CONNS, run(tree, home, step), strict=True):
                    results.setdefault((name, conns), []).append(r)
                    print(f"   round {i} {name:>6}, {conns:>2} conns: {r['rate']:,.0f}/s, "
                          f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                          f"{r['cpu_us']:.0f} µs CPU/verify, {r['ok']}/{r['n']} accepted",
                          flush=True)
                shutil.rmtree(home)
        for (name, conns), rs in results.items():
            print(f"   {name:>6}, {conns:>2} conns, median: "
                  f"{statistics.median(x['rate'] for x in rs):,.0f}/s, "
                  f"p50 {statistics.median(x['p50_ms'] for x in rs):.2f} ms, "
                  f"p99 {statistics.median(x['p99_ms'] for x in rs):.2f} ms, "
                  f"{statistics.median(x['cpu_us'] for x in rs):.0f} µs CPU/verify")


if __name__ == "__main__":
    main(sys.argv[1:])

"""HTTP verify of several source trees, paired batch by batch: every tree's daemon runs at
once (each on its own copy of a 10,000-token folder prepared by its own code), and short
batches of fresh valid codes go to each daemon in turn, the order alternating. Each batch's
figure is the daemon's own CPU time per verification (from the scheduler's counts). Because
the batches of all trees follow each other within a second or two, a change in the shared
machine's speed moves them together; the paired ratio (tree / first tree, batch by batch)
keeps the difference between the trees and drops most of the machine's noise, which
separate runs (bench.side_by_side) cannot.

Usage: python -m bench.paired old=/path/to/old/tree new=/path/to/new/tree
       (PAIRS=36 BATCH=250 in the environment; not part of `make bench`)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import bench_daemon as B
from bench.side_by_side import _prepared, start_daemon

CONNS = 8


def _cpu(pid: int) -> float:
    """Seconds of CPU the process's threads have run, from the scheduler's nanosecond
    counts (/proc/PID/task/*/schedstat): /proc/PID/stat counts in 10 ms ticks, too coarse
    for a batch of a fifth of a second."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total / 1e9


def main(argv: list[str]) -> None:
    trees = dict(a.split("=", 1) for a in argv)
    pairs = int(os.environ.get("PAIRS", "36"))
    batch = int(os.environ.get("BATCH", "250"))
    if B.WARMUP + pairs * batch > B.TOKENS:
        raise SystemExit(f"PAIRS x BATCH + {B.WARMUP} must be at most {B.TOKENS:,}")
    with tempfile.TemporaryDirectory(prefix="foblab-paired-") as tmp:
        daemons: dict[str, tuple[subprocess.Popen[str], str, int, str, int]] = {}
        try:
            for n, (name, tree) in enumerate(trees.items()):
                home, enabled_at = _prepared(tree, Path(tmp) / f"home{n}")
                proc, host, port = start_daemon(tree, home)
                key = (home / "verifier.key").read_text().strip()
                daemons[name] = (proc, host, port, key, enabled_at)
            # Each request sends its token's code of the step current when its batch starts:
            # every token is used once, after its enabling step (waited for here).
            while int(time.time() // 30) <= max(d[4] for d in daemons.values()):
                time.sleep(0.5)
            for _proc, host, port, key, _ in daemons.values():
                B.run_load(host, port, B._verify_requests(key, 0, B.WARMUP,
                                                          int(time.time() // 30)), CONNS)
            cpu: dict[str, list[float]] = {k: [] for k in trees}
            rate: dict[str, list[float]] = {k: [] for k in trees}
            for i in range(pairs):
                first = B.WARMUP + i * batch
                names = list(trees) if i % 2 == 0 else list(reversed(trees))
                for name in names:
                    proc, host, port, key, _ = daemons[name]
                    requests = B._verify_requests(key, first, batch, int(time.time() // 30))
                    before = _cpu(proc.pid)
                    r: dict[str, Any] = B.run_load(host, port, requests, CONNS)
                    cpu[name].append((_cpu(proc.pid) - before) / batch * 1e6)
                    rate[name].append(r["rate"])
                    if r["ok"] != batch:
                        raise RuntimeError(f"{name}: {r['ok']}/{batch} accepted in pair {i}: "
                                           f"{r['failures'][:2]}")
        finally:
            for proc, *_ in daemons.values():
                proc.terminate()
                proc.wait(30)
    base = next(iter(trees))
    print(f"{pairs} pairs of {batch} verifications, {CONNS} connections")
    for name in trees:
        ratios = [c / b for c, b in zip(cpu[name], cpu[base], strict=True)]
        rratio = [c / b for c, b in zip(rate[name], rate[base], strict=True)]
        print(f"   {name:>6}: {statistics.median(cpu[name]):.0f} µs CPU/verify, "
              f"{statistics.median(rate[name]):,.0f}/s; paired against {base}: CPU "
              f"{statistics.median(ratios):.3f} (quartiles "
              f"{statistics.quantiles(ratios, n=4)[0]:.3f}-"
              f"{statistics.quantiles(ratios, n=4)[2]:.3f}), rate "
              f"{statistics.median(rratio):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Start-up cost of foblab's test lab (the pytest plugin's fixtures), issue 19's targets:
the first `foblab_validator` of a session under 1 s (a fresh interpreter: imports, a new
validator folder, the daemon listening), and each further `foblab_token` under 20 ms."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

FIRST = """
import time
t = time.perf_counter()
import foblab
lab = foblab.lab()
lab.validator
print(time.perf_counter() - t)
lab.close()
"""


def main() -> None:
    firsts = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", FIRST], capture_output=True, text=True,
                             check=True, timeout=120)
        firsts.append(float(out.stdout.strip().splitlines()[-1]))
    first = statistics.median(firsts)
    import foblab

    with foblab.lab() as lab:
        lab.token()  # warm
        each = []
        for _ in range(200):
            t = time.perf_counter()
            lab.token()
            each.append(time.perf_counter() - t)
        token = statistics.median(each)
        p_each = []
        for _ in range(20):
            t = time.perf_counter()
            lab.token(port="pty")
            p_each.append(time.perf_counter() - t)
        pty = statistics.median(p_each)
    print(f"   first foblab_validator in a fresh interpreter: {first * 1000:.0f} ms median of 5 "
          f"(target < 1000 ms) {'ok' if first < 1 else 'MISSED'}")
    print(f"   each further foblab_token: in memory {token * 1000:.2f} ms, on a PTY "
          f"{pty * 1000:.2f} ms median (target < 20 ms) "
          f"{'ok' if max(token, pty) < 0.02 else 'MISSED'}")

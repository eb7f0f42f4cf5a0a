"""Emulated token benchmarks: a 1,000-token fleet (start-up time, RSS) and PRESS latency over
a PTY from a separate client process.

Run: .venv/bin/python -m bench firmware
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLEET_SIZE = 1000
PRESSES = 3000

_CLIENT = r"""
import json, statistics, sys, time
import serial
from protocol.connection import TokenClient, pyserial_reader
port = serial.serial_for_url(sys.argv[1], timeout=2)
client = TokenClient(pyserial_reader(port), port.write)
for _ in range(200):
    client.press()
samples = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    client.press()
    samples.append(time.perf_counter() - t)
samples.sort()
print(json.dumps({"median_ms": statistics.median(samples) * 1e3,
                  "p99_ms": samples[int(len(samples) * 0.99)] * 1e3,
                  "max_ms": samples[-1] * 1e3}))
"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    foblab = str(Path(sys.executable).with_name("foblab"))
    with tempfile.TemporaryDirectory(prefix="foblab-bench-") as tmp:
        directory = Path(tmp) / "fleet"
        manifest = directory / "manifest.json"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [foblab, "sim", "fleet", "--count", str(FLEET_SIZE), "--dir", str(directory),
             "--rng-seed", "1", "--drift-spread", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            while not manifest.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"fleet failed: {proc.communicate()[1]}")
                time.sleep(0.005)
            ready_s = time.perf_counter() - started
            tokens = json.loads(manifest.read_text())["tokens"]
            assert len(tokens) == FLEET_SIZE
            rss = _rss_mb(proc.pid)
            print(f"   fleet of {FLEET_SIZE} tokens: manifest after {ready_s:.2f} s from spawn "
                  f"(target < 5 s), RSS {rss:.0f} MB (target < 200 MB)")
            port = tokens[sorted(tokens)[FLEET_SIZE // 2]]["port"]
            out = subprocess.run([sys.executable, "-c", _CLIENT, port, str(PRESSES)],
                                 capture_output=True, text=True, check=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(Path.cwd())})
            lat = json.loads(out.stdout)
            print(f"   PRESS round trip over a PTY, separate client process, {PRESSES} presses "
                  f"with {FLEET_SIZE} tokens on the loop: median {lat['median_ms']:.3f} ms "
                  f"(target < 1 ms), p99 {lat['p99_ms']:.3f} ms (target < 5 ms), "
                  f"max {lat['max_ms']:.3f} ms")
            print(f"   fleet RSS after the presses: {_rss_mb(proc.pid):.0f} MB")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


if __name__ == "__main__":
    main()

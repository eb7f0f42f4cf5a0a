"""Seed-file import at scale: CSV files of 3,000 and 30,000 keys (one already registered),
imported into a fresh SQLite validator. The ratio of the two times shows the import is
linear (about 10x for 10x the keys); it was once quadratic."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from validator.service import Validator

T0 = 1_700_000_000.0


def _once(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        v = Validator.open(Path(d) / "v.db")
        try:
            v.register_token("L000000", b"12345678901234567890", now=T0)
            text = "serial,secret_hex,kind,digits,period_or_counter,hash\n" + "".join(
                f"L{i:06d},{'31' * 20},totp,6,30,sha1\n" for i in range(n))
            started = time.perf_counter()
            v.import_seed_file(text, "csv", skip_duplicates=True, now=T0)
            return time.perf_counter() - started
        finally:
            v.close()


def main() -> None:
    small = sorted(_once(3_000) for _ in range(3))[1]
    large = sorted(_once(30_000) for _ in range(3))[1]
    print(f"   import 3,000 keys: {small:.2f} s median of 3; 30,000 keys: {large:.2f} s "
          f"({30_000 / large:,.0f} keys/s); ratio {large / small:.1f}x for 10x the keys "
          f"(linear: about 10x) {'ok' if large / small < 20 else 'MISSED'}")

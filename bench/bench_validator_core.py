"""Validator core: verifications per second, in-process and through the SQLite store.

1. Pure core, valid current codes (TOTP, SHA-1, 6 digits, ±1 window), against
   `pyotp.TOTP(secret).verify(code, for_time=t, valid_window=1)` on the same codes at the
   same times, in the same run, with one bare HMAC per code beside them: `hmac.digest`
   (OpenSSL's one-shot) and `validator.otp.digest` (the same HMAC from two OpenSSL hashes,
   which the core uses).
   The core does what it does per real login: an enabled token whose state is carried from
   one code to the next, so every call runs the drift tracker's update on a full history
   and builds the new state (watermark, drift, cleared failures). pyotp keeps no state.
2. Accepted verifications per second through `Validator` + `SQLiteStore`, one thread,
   every acceptance committed (WAL), for synchronous=NORMAL and FULL.

Medians of several repeats (each repeat times core, pyotp and hmac back to back); the ratio
is the median of the per-repeat ratios. Run: python -m bench validator_core
"""

from __future__ import annotations

import base64
import hmac
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyotp

from protocol import Kind
from validator import core, otp
from validator.core import TokenState
from validator.otp import hotp
from validator.service import Validator
from validator.store import Durability

N_CODES = 20_000
REPEATS = 7
T = 1_700_000_000.0


def _rate(fn: Callable[[], None], n: int) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def core_vs_pyotp() -> dict[str, float]:
    key = bytes(range(20))
    secret = base64.b32encode(key).decode()
    # One code per 37 s, each the token's current code when it arrives.
    times = [T + 37.0 * (i + 1) for i in range(N_CODES)]
    codes = [hotp(key, int(t // 30)) for t in times]
    s = int(T // 30)
    enabled = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1),
                                hotp(key, s), T - 1.0).state
    totp = pyotp.TOTP(secret)
    msgs = [int(t // 30).to_bytes(8, "big") for t in times]

    def run_core() -> None:
        verify = core.verify
        state = enabled
        for t, c in zip(times, codes, strict=True):
            decision = verify(state, key, c, t)
            if not decision.accepted:
                raise AssertionError("core refused a valid code")
            state = decision.state

    def run_pyotp() -> None:
        for t, c in zip(times, codes, strict=True):
            if not totp.verify(c, for_time=t, valid_window=1):
                raise AssertionError("pyotp refused a valid code")

    def run_hmac() -> None:
        digest = hmac.digest
        for m in msgs:
            digest(key, m, "sha1")

    def run_digest() -> None:
        digest = otp.digest
        for m in msgs:
            digest(key, m, "sha1")

    results: dict[str, list[float]] = {
        "core": [], "pyotp": [], "hmac": [], "digest": [], "ratio": []}
    for _ in range(REPEATS):
        results["core"].append(_rate(run_core, N_CODES))
        results["pyotp"].append(_rate(run_pyotp, N_CODES))
        results["hmac"].append(_rate(run_hmac, N_CODES))
        results["digest"].append(_rate(run_digest, N_CODES))
        results["ratio"].append(results["core"][-1] / results["pyotp"][-1])
    return {k: statistics.median(v) for k, v in results.items()}


def store_accepts(durability: Durability, n: int) -> float:
    rates = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            v = Validator.open(Path(tmp) / "bench.db", durability=durability)
            key = bytes(range(20))
            v.register_token("B1", key, now=T)
            s = int(T // 30)
            v.enable("bench", "B1", hotp(key, s - 1), hotp(key, s), now=T)
            # One accepted code per step, each arriving 2 s into its step.
            items = [(T + 30.0 * i + 2, hotp(key, s + i)) for i in range(1, n + 1)]

            def run(v: Validator = v, items: list[tuple[float, str]] = items) -> None:
                for t, c in items:
                    if not v.verify("bench", c, now=t).accepted:
                        raise AssertionError("store path refused a valid code")

            rates.append(_rate(run, n))
            v.close()
    return statistics.median(rates)


def main() -> None:
    r = core_vs_pyotp()
    print(f"   core verify (valid current codes): {r['core']:,.0f}/s")
    print(f"   pyotp TOTP.verify(valid_window=1): {r['pyotp']:,.0f}/s")
    print(f"   one hmac.digest per code:          {r['hmac']:,.0f}/s")
    print(f"   one validator.otp.digest per code: {r['digest']:,.0f}/s")
    print(f"   core / pyotp: {r['ratio']:.2f}x (median of {REPEATS} paired repeats);  "
          f"core / otp.digest: {r['core'] / r['digest']:.2f}")
    normal = store_accepts(Durability.NORMAL, 5_000)
    print(f"   SQLite store, accepted, WAL synchronous=NORMAL: {normal:,.0f}/s")
    full = store_accepts(Durability.FULL, 1_000)
    print(f"   SQLite store, accepted, WAL synchronous=FULL:   {full:,.0f}/s")


if __name__ == "__main__":
    main()

"""The OTP engine: RFC 4226 HOTP and RFC 6238 TOTP, computed by pyotp.

The token side uses the reference library rather than its own HMAC code; tests check it
against the RFC appendices through the emulator.
"""

from __future__ import annotations

import base64
import hashlib

import pyotp

from protocol import Hash


def hotp(seed: bytes, counter: int, *, digits: int = 6, hash: Hash = Hash.SHA1) -> str:
    """The RFC 4226 code for `counter`."""
    secret = base64.b32encode(seed).decode("ascii")
    # hashlib's constructor of that name (every Hash label is one: sha1, sha256, sha512)
    return pyotp.HOTP(secret, digits=digits, digest=getattr(hashlib, hash)).at(counter)


def time_step(time_ms: int, period: int) -> int:
    """The RFC 6238 step number (T) for a Unix time in milliseconds (T0 = 0).

    A clock set before 1970 (QA can do that) stays in step 0, as an unsigned RTC would not
    count below zero."""
    return max(0, time_ms // (period * 1000))


def totp(
    seed: bytes, time_ms: int, *, digits: int = 6, hash: Hash = Hash.SHA1, period: int = 30
) -> str:
    """The RFC 6238 code at a Unix time in milliseconds."""
    return hotp(seed, time_step(time_ms, period), digits=digits, hash=hash)


def seconds_left(time_ms: int, period: int) -> int:
    """Whole seconds until the current step ends, 1..period, as a token's countdown shows."""
    period_ms = period * 1000
    return -(-(period_ms - time_ms % period_ms) // 1000)

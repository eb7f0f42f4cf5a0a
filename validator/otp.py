"""HOTP (RFC 4226) and TOTP (RFC 6238) code computation on pre-decoded key bytes.

The hot path of every verification: one `hmac.digest` call (the C one-shot, no HMAC object)
and a few integer operations. Keys are raw bytes, decoded once by the caller; nothing here
decodes base32 or reads a clock.
"""

from __future__ import annotations

import hmac
import struct
from typing import Final

try:  # the C one-shot behind hmac.digest, without its Python wrapper's checks
    from _hashlib import hmac_digest as _digest
except ImportError:  # pragma: no cover - an interpreter without OpenSSL
    _digest = hmac.digest  # type: ignore[assignment]

ALGORITHMS: Final = ("sha1", "sha256", "sha512")
_POW10: Final = {n: 10**n for n in range(1, 11)}

digest: Final = _digest
"""`digest(key, message, algorithm)`: the HMAC of `message`, the C one-shot."""
pack_counter: Final = struct.Struct(">Q").pack
"""The 8-byte big-endian counter (RFC 4226 §5.2), precompiled."""
_word = struct.Struct(">I").unpack_from


def truncate(mac: bytes, digits: int) -> str:
    """RFC 4226 §5.3 dynamic truncation of an HMAC to a `digits`-digit code."""
    return str((_word(mac, mac[-1] & 0x0F)[0] & 0x7FFFFFFF) % _POW10[digits]).zfill(digits)


def hotp(key: bytes, counter: int, digits: int = 6, algorithm: str = "sha1") -> str:
    """The `digits`-digit HOTP value of `key` at `counter` (RFC 4226 §5.3 dynamic truncation)."""
    mac = _digest(key, pack_counter(counter), algorithm)
    return str((_word(mac, mac[-1] & 0x0F)[0] & 0x7FFFFFFF) % _POW10[digits]).zfill(digits)


def totp_step(unix_time: float, period: int = 30, t0: int = 0) -> int:
    """The RFC 6238 time step T = floor((time - T0) / X)."""
    return int((unix_time - t0) // period)


def totp(
    key: bytes, unix_time: float, digits: int = 6, algorithm: str = "sha1",
    period: int = 30, t0: int = 0,
) -> str:
    """The TOTP value of `key` at `unix_time`: HOTP of the time step."""
    return hotp(key, totp_step(unix_time, period, t0), digits, algorithm)

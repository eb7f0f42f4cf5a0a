"""HOTP (RFC 4226) and TOTP (RFC 6238) code computation on pre-decoded key bytes.

The hot path of every verification: one HMAC and a few integer operations. Keys are raw
bytes, decoded once by the caller; nothing here decodes base32 or reads a clock.

The HMAC is RFC 2104 composed from two OpenSSL hash calls, `H((K^opad) || H((K^ipad) || m))`,
as CPython's own `hmac.HMAC` composes it when it has no C HMAC. With OpenSSL 3, the one-shot
`hmac.digest` fetches and sets up an EVP_MAC on every call, which costs more than the two
hashes of a 72-byte and a 84-byte message themselves (about 1.1 µs against 0.75 µs for
SHA-1 here); a code is short and every login computes at least one. The result is the
same bytes (tested against `hmac.digest` for every hash and key length, including keys
longer than a block, which are hashed first).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import Any, Final

from protocol import Hash

try:
    import _hashlib
except ImportError:  # pragma: no cover - an interpreter without OpenSSL
    _hashlib = None  # type: ignore[assignment]


def _constructor(hash: Hash) -> Callable[..., Any]:
    """The OpenSSL constructor behind `hashlib.<name>`, without hashlib.new's lookup."""
    found: Callable[..., Any] | None = getattr(_hashlib, f"openssl_{hash.hashlib_name}", None)
    if found is None:
        found = getattr(hashlib, hash.hashlib_name)
    return found


_POW10: Final = {n: 10**n for n in range(1, 11)}
# (hash constructor, block size in bytes) per hash of the vocabulary (RFC 2104 §2: B),
# keyed by the enum members so the lookup in the hot path is an identity hit.
_HASHES: Final[dict[str, tuple[Callable[..., Any], int]]] = {
    hash: (_constructor(hash), hashlib.new(hash.hashlib_name).block_size) for hash in Hash
}
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))  # translate tables: K xor ipad / opad
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def digest(key: bytes, message: bytes, hash: str) -> bytes:
    """HMAC-`hash` of `message` under `key` (RFC 2104); equal to `hmac.digest`."""
    try:
        new, block = _HASHES[hash]
    except KeyError:  # not one of the vocabulary's: let hmac.digest accept or refuse it
        return hmac.digest(key, message, hash)
    if len(key) > block:
        key = new(key).digest()
    key = key.ljust(block, b"\0")
    mac: bytes = new(key.translate(_OPAD) + new(key.translate(_IPAD) + message).digest()).digest()
    return mac


pack_counter: Final = struct.Struct(">Q").pack
"""The 8-byte big-endian counter (RFC 4226 §5.2), precompiled."""
_word = struct.Struct(">I").unpack_from


def truncate(mac: bytes, digits: int) -> str:
    """RFC 4226 §5.3 dynamic truncation of an HMAC to a `digits`-digit code."""
    return str((_word(mac, mac[-1] & 0x0F)[0] & 0x7FFFFFFF) % _POW10[digits]).zfill(digits)


def hotp(key: bytes, counter: int, digits: int = 6, hash: str = Hash.SHA1) -> str:
    """The `digits`-digit HOTP value of `key` at `counter` (RFC 4226 §5.3 dynamic truncation)."""
    mac = digest(key, pack_counter(counter), hash)
    return str((_word(mac, mac[-1] & 0x0F)[0] & 0x7FFFFFFF) % _POW10[digits]).zfill(digits)


def totp_step(unix_time: float, period: int = 30, t0: int = 0) -> int:
    """The RFC 6238 time step T = floor((time - T0) / X)."""
    return int((unix_time - t0) // period)


def totp(
    key: bytes, unix_time: float, digits: int = 6, hash: str = Hash.SHA1,
    period: int = 30, t0: int = 0,
) -> str:
    """The TOTP value of `key` at `unix_time`: HOTP of the time step."""
    return hotp(key, totp_step(unix_time, period, t0), digits, hash)

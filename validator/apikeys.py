"""API keys and roles.

Two roles: `admin` may call everything, `verifier` only verify and resync. Each role's key
lives in its own file (0600), written once by `foblab validator init`; the daemon reads the
files at start-up and keeps only their SHA-256 digests, so the keys themselves are not held
in memory past start-up, never logged and never stored in the database. A presented key is
hashed and compared with `hmac.compare_digest` against every role's digest (all of them,
so the time taken does not tell which role came close).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from pathlib import Path

from validator.secrets_box import read_private_file, write_private_file


class Role(enum.StrEnum):
    ADMIN = "admin"
    VERIFIER = "verifier"


class ApiKeyError(Exception):
    """A key file is missing, malformed or readable by others (one-line message)."""


_PREFIX = {Role.ADMIN: "fla_", Role.VERIFIER: "flv_"}
_MIN_LEN = 24


def new_key(role: Role) -> str:
    """A fresh key: a role prefix (so an operator can tell them apart) and 256 random bits."""
    return _PREFIX[role] + secrets.token_urlsafe(32)


def write_key_file(path: Path, key: str) -> None:
    """Create `path` (mode 0600, refusing to overwrite) holding `key`."""
    write_private_file(path, key.encode() + b"\n")


def read_key_file(path: Path) -> str:
    raw = read_private_file(path, "API key file", ApiKeyError)
    text = raw.decode("latin-1").strip()  # any bytes decode; a non-ASCII key is refused below
    if len(text) < _MIN_LEN or not text.isascii() or not text.isprintable() or " " in text:
        raise ApiKeyError(f"API key file {path} does not hold a key (at least {_MIN_LEN} "
                          "printable ASCII characters)")
    return text


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class KeyRing:
    """The roles' key digests; `role_of(presented)` answers the role or None."""

    def __init__(self, digests: dict[Role, bytes]) -> None:
        self._digests = tuple(digests.items())

    @classmethod
    def from_files(cls, files: dict[Role, Path]) -> KeyRing:
        digests = {role: digest(read_key_file(path)) for role, path in files.items()}
        if len(set(digests.values())) != len(digests):
            raise ApiKeyError("the admin and verifier keys must differ")
        return cls(digests)

    def role_of(self, presented: bytes) -> Role | None:
        seen = digest(presented)
        found: Role | None = None
        for role, expected in self._digests:
            if hmac.compare_digest(seen, expected):
                found = role
        return found

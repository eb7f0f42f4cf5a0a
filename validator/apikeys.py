"""API keys: named, each with a role.

Two roles: `admin` may call everything, `verifier` only verify and resync. Every key has a
name (`admin`, `radius-gw`, ...) and a role; the daemon keeps only the SHA-256 digest of
each, read from the keys file (`api_keys_file`, default `api-keys.toml`, mode 0600):

    [[key]]
    name = "admin"
    role = "admin"
    sha256 = "9f86d0..."          # of the key; the key itself is shown once, at creation
    created = 1764520000.0

so a key is never stored, never held in memory past the request that presents it, never
logged (the access log names the key) and never in the database. A key is 256 random bits,
so a plain SHA-256 digest cannot be reversed or guessed. A presented key is hashed and
compared with `hmac.compare_digest` against every key's digest (all of them, so the time
taken does not tell which one came close).

`foblab validator init` writes the two first keys, `admin` and `verifier`, into the keys file
and into `admin.key` and `verifier.key` (0600; the CLI's `--dir` reads `admin.key`). A
folder made before named keys has only those two files: `ensure_keys_file` turns them into
the keys file, under the same two names, the first time the daemon or `api-keys` runs.
`KeyRing.replace` swaps the keys of a running daemon (reload) in one assignment.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import secrets
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from validator.secrets_box import fsync_dir, read_private_file, write_private_file


class Role(enum.StrEnum):
    ADMIN = "admin"
    VERIFIER = "verifier"


class ApiKeyError(Exception):
    """A key file is missing, malformed or readable by others (one-line message)."""


_PREFIX = {Role.ADMIN: "fla_", Role.VERIFIER: "flv_"}
_MIN_LEN = 24
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_KEYS = 1000
"""Keys in one file; each costs one comparison per request."""


@dataclass(frozen=True)
class ApiKey:
    """One named key as the daemon knows it: never the key, only its digest."""

    name: str
    role: Role
    sha256: bytes
    created: float = 0.0


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


# -- the keys file -----------------------------------------------------------------------------

def read_keys(path: Path) -> list[ApiKey]:
    """The keys of a keys file, checked: names unique and well-formed, roles known, digests
    64 hex digits and distinct. Every problem is a one-line ApiKeyError."""
    raw = read_private_file(path, "API keys file", ApiKeyError)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ApiKeyError(f"API keys file {path} is not valid TOML: {exc}") from None
    extra = set(doc) - {"key"}
    entries = doc.get("key", [])
    if extra or not isinstance(entries, list):
        raise ApiKeyError(f"API keys file {path}: only [[key]] tables belong there")
    if len(entries) > MAX_KEYS:
        raise ApiKeyError(f"API keys file {path}: more than {MAX_KEYS} keys")
    keys: list[ApiKey] = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - {"name", "role", "sha256", "created"}:
            raise ApiKeyError(f"API keys file {path}: a [[key]] has unknown fields "
                              "(name, role, sha256, created)")
        name, role, hexdigest = entry.get("name"), entry.get("role"), entry.get("sha256")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ApiKeyError(f"API keys file {path}: key name {name!r} must be {NAME_RULE}")
        if role not in tuple(Role):
            raise ApiKeyError(f"API keys file {path}: key {name!r} has role {role!r}, not "
                              "admin or verifier")
        if not isinstance(hexdigest, str) or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise ApiKeyError(f"API keys file {path}: key {name!r} needs sha256 = 64 "
                              "lower-case hex digits")
        created = entry.get("created", 0.0)
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise ApiKeyError(f"API keys file {path}: key {name!r}: created must be a number")
        keys.append(ApiKey(name, Role(role), bytes.fromhex(hexdigest), float(created)))
    if len({k.name for k in keys}) != len(keys):
        raise ApiKeyError(f"API keys file {path}: a key name is used twice")
    if len({k.sha256 for k in keys}) != len(keys):
        raise ApiKeyError(f"API keys file {path}: two keys have the same digest")
    return keys


def write_keys(path: Path, keys: Iterable[ApiKey]) -> None:
    """Replace the keys file atomically (a 0600 temporary file, fsynced, renamed)."""
    import tomli_w

    doc = {"key": [{"name": k.name, "role": k.role.value, "sha256": k.sha256.hex(),
                    "created": round(k.created, 3)} for k in keys]}
    text = ("# foblab API keys: names, roles and SHA-256 digests, never the keys.\n"
            "# Change with `foblab validator api-keys`; the daemon re-reads it on reload.\n"
            + tomli_w.dumps(doc))
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, text.encode())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def ensure_keys_file(path: Path, legacy: Mapping[Role, Path]) -> bool:
    """Make the keys file from the two key files of a folder made before named keys (the
    admin key named `admin`, the verifier key `verifier`); True when it did. A folder that
    has the keys file already is left alone."""
    if path.exists():
        return False
    keys = [ApiKey(role.value, role, digest(read_key_file(file)), file.stat().st_mtime)
            for role, file in legacy.items()]
    if len({k.sha256 for k in keys}) != len(keys):
        raise ApiKeyError("the admin and verifier keys must differ")
    write_keys(path, keys)
    return True


def create_key(path: Path, name: str, role: Role, *, now: float) -> str:
    """Add a key named `name` to the keys file; the key, which is shown this once."""
    if not NAME.fullmatch(name):
        raise ApiKeyError(f"a key name must be {NAME_RULE}, not {name!r}")
    keys = read_keys(path)
    if any(k.name == name for k in keys):
        raise ApiKeyError(f"there is a key named {name!r} already (revoke it first)")
    if len(keys) >= MAX_KEYS:
        raise ApiKeyError(f"there are {MAX_KEYS} keys already")
    key = new_key(role)
    write_keys(path, [*keys, ApiKey(name, role, digest(key), now)])
    return key


def revoke_key(path: Path, name: str) -> ApiKey:
    """Remove the key named `name`; the last admin key cannot go (nothing could manage the
    daemon over its API then)."""
    keys = read_keys(path)
    gone = next((k for k in keys if k.name == name), None)
    if gone is None:
        raise ApiKeyError(f"no key named {name!r}")
    rest = [k for k in keys if k.name != name]
    if gone.role is Role.ADMIN and not any(k.role is Role.ADMIN for k in rest):
        raise ApiKeyError(f"{name!r} is the last admin key; create another admin key first")
    write_keys(path, rest)
    return gone


# -- the daemon's view ---------------------------------------------------------------------------

class KeyRing:
    """The keys a daemon accepts; `lookup(presented)` answers the key (name and role) or
    None. `replace` swaps them all at once (reload): a request sees the old set or the new."""

    def __init__(self, keys: Iterable[ApiKey] | Mapping[Role, bytes]) -> None:
        if isinstance(keys, Mapping):  # {role: digest}: one key per role, named after it
            keys = [ApiKey(role.value, role, sha) for role, sha in keys.items()]
        self._keys: tuple[ApiKey, ...] = tuple(keys)

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        keys = read_keys(path)
        if not keys:
            raise ApiKeyError(f"API keys file {path} has no key")
        return cls(keys)

    @classmethod
    def from_files(cls, files: Mapping[Role, Path]) -> KeyRing:
        """One key per role from key files (tests and labs that make no keys file)."""
        keys = [ApiKey(role.value, role, digest(read_key_file(path)), time.time())
                for role, path in files.items()]
        if len({k.sha256 for k in keys}) != len(keys):
            raise ApiKeyError("the admin and verifier keys must differ")
        return cls(keys)

    def replace(self, other: KeyRing) -> None:
        self._keys = other._keys

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def lookup(self, presented: bytes) -> ApiKey | None:
        seen = digest(presented)
        found: ApiKey | None = None
        for key in self._keys:  # every one, found or not: the time says nothing
            if hmac.compare_digest(seen, key.sha256):
                found = key
        return found

    def role_of(self, presented: bytes) -> Role | None:
        key = self.lookup(presented)
        return None if key is None else key.role

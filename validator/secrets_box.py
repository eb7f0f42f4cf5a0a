"""Secrets at rest: envelope encryption with AES-256-GCM.

Three layers:

- the **master key**, 32 bytes in the key file (`seed.key`, hex, 0600), never in the
  database;
- **data keys**, 32 random bytes each, kept in the database *wrapped* (AES-256-GCM under
  the master key, the data key's id bound in as associated data);
- **sealed secrets** (token seeds, AWS secrets): AES-256-GCM under the current data key,
  with the token's serial (or the AWS row's name) bound in as associated data, so a sealed
  seed copied onto another token's row fails to decrypt instead of silently giving that
  token someone else's seed.

Formats:

- sealed, current: `b"\\x02" + data_key_id(8) + nonce(12) + ciphertext+tag`;
- sealed, legacy (before envelope encryption): `b"\\x01" + master_key_id(8) + nonce(12) +
  ciphertext+tag`, sealed directly under the key file's key; opened only to migrate it
  (`validator.keys`);
- wrapped data key: `b"\\x02" + nonce(12) + ciphertext+tag`.

This module holds the cryptography and the key files; `validator.keys` decides, from what
the stored rows actually open with, which key file is the master after a crash.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LEGACY = 1  # sealed directly under the master key (databases from before envelope keys)
ENVELOPE = 2  # sealed under a data key
_AAD_PREFIX = b"foblab-seed-v1\x00"
_WRAP_AAD = b"foblab-data-key-v1\x00"
_MIN_SEALED = 1 + 8 + 12 + 16
CRASH_ENV = "FOBLAB_TEST_CRASH_AT"


class KeyFileError(Exception):
    """The key file is missing, malformed or readable by others."""


class SealError(Exception):
    """A sealed secret cannot be opened (wrong key, wrong serial, or tampered)."""


class UnknownDataKey(SealError):
    """A secret names a data key neither this box nor the store holds: read just before
    another process's rotation resealed it and dropped that key. Read the row again."""


def crash_point(step: str) -> None:
    """A step boundary of a key rotation. Only tests set `FOBLAB_TEST_CRASH_AT`: the process
    then dies here by SIGKILL (no cleanup, no flush), as a crash or power cut would stop it."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def key_id(key: bytes) -> bytes:
    """8 bytes naming a master key (in legacy sealed secrets and in messages)."""
    return hashlib.sha256(b"foblab-key-id\x00" + key).digest()[:8]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in directory `path` durable."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (refusing to overwrite) holding `data`, fsynced: how
    every key file of the validator (seed key, API keys) is made."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def read_private_file(path: Path, what: str, error: type[Exception]) -> bytes:
    """The bytes of a key file, refused with `error` (naming it `what`) when it is missing,
    unreadable, or readable by group or others."""
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise error(f"{what} {path} is readable by others (mode {mode & 0o777:o}); "
                    "chmod 600 it")
    return raw


def encode_key(key: bytes) -> bytes:
    return key.hex().encode() + b"\n"


def write_key(path: Path, key: bytes) -> None:
    """A new key file (0600, fsynced, its directory entry too); refuses to overwrite."""
    write_private_file(path, encode_key(key))


def write_key_atomically(path: Path, key: bytes, step: str = "") -> None:
    """Put `key` at `path` so that `path` is either absent or complete, whatever stops the
    process: written to `<path>.tmp`, fsynced, renamed, the directory fsynced. An existing
    `<path>.tmp` is a leftover of an interrupted write and is replaced."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    data = encode_key(key)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data[: len(data) // 2])
        if step:
            crash_point(f"{step}:half-written")
        os.write(fd, data[len(data) // 2 :])
        os.fsync(fd)
    finally:
        os.close(fd)
    if step:
        crash_point(f"{step}:tmp-written")
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_key(path: Path) -> bytes:
    raw = read_private_file(path, "key file", KeyFileError)
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except ValueError:  # not ASCII (UnicodeDecodeError is a ValueError), or not hex
        raise KeyFileError(f"key file {path} does not hold a hex key") from None
    if len(key) != 32:
        raise KeyFileError(f"key file {path} must hold 32 bytes (64 hex digits)")
    return key


def wrap(master: bytes, data_key_id: bytes, data_key: bytes) -> bytes:
    """`data_key` sealed under `master`, its id bound in."""
    nonce = secrets.token_bytes(12)
    return bytes([ENVELOPE]) + nonce + AESGCM(master).encrypt(
        nonce, data_key, _WRAP_AAD + data_key_id)


def unwrap(master: bytes, data_key_id: bytes, wrapped: bytes) -> bytes:
    """The data key in `wrapped`; SealError unless `master` is the key that wrapped it (for
    this id)."""
    if len(wrapped) != 1 + 12 + 32 + 16 or wrapped[0] != ENVELOPE:
        raise SealError(f"data key {data_key_id.hex()} has an unknown format")
    try:
        return AESGCM(master).decrypt(wrapped[1:13], wrapped[13:], _WRAP_AAD + data_key_id)
    except InvalidTag:
        raise SealError(f"data key {data_key_id.hex()} does not open with this master "
                        "key") from None


def new_data_key() -> tuple[bytes, bytes]:
    """A fresh (id, key)."""
    return secrets.token_bytes(8), secrets.token_bytes(32)


class SecretBox:
    """Seals and opens secrets under data keys; knows the master key that wraps them.

    Built by `validator.keys` (which reads the key file and the data keys). A data key the
    box has not seen (another process rotated) is fetched through `fetch(id)` (the wrapped
    key, or None) and unwrapped with the master key. Old data keys stay in memory, so a
    request that read a row just before a rotation committed still opens it.
    """

    def __init__(self, master: bytes, *, path: Path | None = None,
                 fetch: Callable[[bytes], bytes | None] | None = None,
                 legacy: Iterable[bytes] = ()) -> None:
        if len(master) != 32:
            raise KeyFileError("the master key must be 32 bytes")
        self.path = path
        self._master = master
        self._fetch = fetch
        # Legacy (format 1) secrets name the master key they were sealed under.
        self._legacy = {key_id(k): AESGCM(k) for k in (master, *legacy)}
        self._data: dict[bytes, AESGCM] = {}
        self._current: tuple[bytes, AESGCM] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SecretBox(path={self.path!s}, key_id={self.key_id})"

    @property
    def key_id(self) -> str:
        """The master key's id (hex)."""
        return key_id(self._master).hex()

    @property
    def data_key_id(self) -> str | None:
        """The id (hex) of the data key new secrets are sealed under."""
        return None if self._current is None else self._current[0].hex()

    @property
    def master(self) -> bytes:
        return self._master

    def set_master(self, master: bytes) -> None:
        """After a master-key rotation committed: wrap and unwrap with `master` from now on."""
        self._master = master

    def wrap(self, data_key_id: bytes, data_key: bytes) -> bytes:
        return wrap(self._master, data_key_id, data_key)

    def add_data_key(self, data_key_id: bytes, data_key: bytes, *, current: bool = False
                     ) -> None:
        aes = AESGCM(data_key)
        self._data[data_key_id] = aes
        if current:
            self._current = (data_key_id, aes)

    def use_data_key(self, data_key_id: bytes) -> None:
        """Seal new secrets under this (known) data key."""
        self._current = (data_key_id, self._data[data_key_id])

    def _load(self, data_key_id: bytes) -> AESGCM | None:
        if self._fetch is None:
            return None
        with self._lock:
            aes = self._data.get(data_key_id)
            if aes is None:
                wrapped = self._fetch(data_key_id)
                if wrapped is None:
                    return None
                aes = AESGCM(unwrap(self._master, data_key_id, wrapped))
                self._data[data_key_id] = aes
        return aes

    def seal(self, serial: str, seed: bytes, data_key_id: bytes | None = None) -> bytes:
        """`seed` sealed for `serial` under the current data key (or the one named)."""
        current = self._current if data_key_id is None else (
            data_key_id, self._data[data_key_id])
        if current is None:
            raise SealError("no data key to seal with")
        nonce = secrets.token_bytes(12)
        return bytes([ENVELOPE]) + current[0] + nonce + current[1].encrypt(
            nonce, seed, _AAD_PREFIX + serial.encode())

    def open(self, serial: str, sealed: bytes) -> bytes:
        if len(sealed) < _MIN_SEALED:
            raise SealError(f"sealed secret of {serial!r} has an unknown format")
        version, kid = sealed[0], sealed[1:9]
        if version == ENVELOPE:
            aes = self._data.get(kid) or self._load(kid)
        elif version == LEGACY:
            aes = self._legacy.get(kid)
        else:
            raise SealError(f"sealed secret of {serial!r} has an unknown format")
        if aes is None:
            error = UnknownDataKey if version == ENVELOPE else SealError
            raise error(f"sealed secret of {serial!r} uses a key this box does not hold")
        try:
            return aes.decrypt(sealed[9:21], sealed[21:], _AAD_PREFIX + serial.encode())
        except InvalidTag:
            raise SealError(f"sealed secret of {serial!r} does not authenticate") from None

"""Seeds at rest: AES-256-GCM with the token's serial bound in as associated data.

A sealed seed is `b"\\x01" + key_id(8) + nonce(12) + ciphertext+tag`. The key id (the first
8 bytes of SHA-256 of the key) lets a box hold more than one key, which is what makes a
key rotation crash-safe: the new key is written beside the old one (`<keyfile>.next`)
before the database is re-encrypted in one transaction, and only then replaces it. A box
opened after a crash in between loads both and decrypts either.

The serial as associated data means a sealed seed copied onto another token's row fails
to decrypt instead of silently giving that token someone else's seed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_AAD_PREFIX = b"foblab-seed-v1\x00"


class KeyFileError(Exception):
    """The key file is missing, malformed or readable by others."""


class SealError(Exception):
    """A sealed seed cannot be opened (wrong key, wrong serial, or tampered)."""


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"foblab-key-id\x00" + key).digest()[:8]


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (refusing to overwrite) holding `data`, fsynced: how
    every key file of the validator (seed key, API keys) is made."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _write_key(path: Path, key: bytes) -> None:
    write_private_file(path, key.hex().encode() + b"\n")


def _read_key(path: Path) -> bytes:
    raw = read_private_file(path, "key file", KeyFileError)
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except ValueError:  # not ASCII (UnicodeDecodeError is a ValueError), or not hex
        raise KeyFileError(f"key file {path} does not hold a hex key") from None
    if len(key) != 32:
        raise KeyFileError(f"key file {path} must hold 32 bytes (64 hex digits)")
    return key


class SecretBox:
    """Seals and opens seeds. Built from a key file (`from_file`) or raw key bytes."""

    def __init__(self, key: bytes, *, path: Path | None = None,
                 extra_keys: tuple[bytes, ...] = ()) -> None:
        if len(key) != 32:
            raise KeyFileError("the seed key must be 32 bytes")
        self._path = path
        self._current = key
        self._raw = (*extra_keys, key)
        self._keys = {_key_id(k): AESGCM(k) for k in (*extra_keys, key)}

    def __repr__(self) -> str:
        return f"SecretBox(path={self._path!s}, key_id={self.key_id})"

    @property
    def key_id(self) -> str:
        return _key_id(self._current).hex()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SecretBox:
        """Load the key at `path`, creating it (mode 0600) on first use."""
        path = Path(path)
        pending = path.with_name(path.name + ".next")
        if not path.exists():
            if pending.exists():  # a rotation stopped after writing the new key
                os.replace(pending, path)
            else:
                _write_key(path, secrets.token_bytes(32))
        key = _read_key(path)
        extra = (_read_key(pending),) if pending.exists() else ()
        return cls(key, path=path, extra_keys=extra)

    def seal(self, serial: str, seed: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        aes = self._keys[_key_id(self._current)]
        ct = aes.encrypt(nonce, seed, _AAD_PREFIX + serial.encode())
        return _VERSION + _key_id(self._current) + nonce + ct

    def open(self, serial: str, sealed: bytes) -> bytes:
        if len(sealed) < 1 + 8 + 12 + 16 or sealed[:1] != _VERSION:
            raise SealError(f"sealed seed of {serial!r} has an unknown format")
        aes = self._keys.get(sealed[1:9])
        if aes is None:
            raise SealError(f"sealed seed of {serial!r} uses a key this box does not hold")
        try:
            return aes.decrypt(sealed[9:21], sealed[21:], _AAD_PREFIX + serial.encode())
        except InvalidTag:
            raise SealError(f"sealed seed of {serial!r} does not authenticate") from None

    def prepare_rotation(self, new_key: bytes | None = None) -> SecretBox:
        """Phase 1 of a rotation: a box that opens with old and new keys and seals with the
        new one, its key written durably to `<keyfile>.next` (when file-backed)."""
        key = new_key if new_key is not None else secrets.token_bytes(32)
        if self._path is not None:
            pending = self._path.with_name(self._path.name + ".next")
            if pending.exists():
                pending.unlink()
            _write_key(pending, key)
        return SecretBox(key, path=self._path, extra_keys=tuple(
            k for k in self._raw if k != key))

    def finish_rotation(self) -> SecretBox:
        """Phase 2, after the database commit: the new key replaces the old key file."""
        if self._path is not None:
            pending = self._path.with_name(self._path.name + ".next")
            os.replace(pending, self._path)
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return SecretBox(self._current, path=self._path)

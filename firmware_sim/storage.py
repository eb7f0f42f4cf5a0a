"""Token state on disk: one JSON file per token, written atomically, locked while in use.

A token's file is `<state_dir>/<SERIAL>.json`. Writes go to a temporary file in the same
directory, which is fsynced, renamed over the old file, and the directory fsynced, so after a
crash the file holds either the old or the new state, never a torn one. A running emulator
holds an exclusive `fcntl.flock` on `<SERIAL>.lock` (a separate file, because the rename
replaces the JSON file's inode), so a second emulator for the same token fails at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any


class StorageError(Exception):
    """The state directory or a state file cannot be used."""


class TokenBusyError(StorageError):
    """Another emulator holds this token."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` atomically (temp file, fsync, rename, fsync directory)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: the old file stands, and no torn copy is left
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


class TokenFile:
    """The locked state file of one token. Use `StateDir.open()` to get one."""

    def __init__(self, path: Path, lock_fd: int, *, durable: bool = True) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self.durable = durable

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read token state {self.path}: {exc}") from exc
        if not isinstance(data, dict):
            raise StorageError(f"token state {self.path} is not a JSON object")
        return data

    def save(self, data: dict[str, Any]) -> None:
        if self._lock_fd is None:
            raise StorageError(f"token state {self.path} is closed")
        raw = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self.path, raw, durable=self.durable)

    def close(self) -> None:
        """Release the lock (the state file stays)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> TokenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StateDir:
    """A directory of token state files."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {self.path}: {exc}") from exc

    def open(self, serial: str) -> TokenFile:
        """Lock token `serial` for this process; TokenBusyError if another one runs it."""
        if not serial or "/" in serial or serial.startswith("."):
            raise StorageError(f"bad serial number {serial!r}")
        lock_path = self.path / f"{serial}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TokenBusyError(
                f"token {serial} is already running (state {self.path / serial}.json is locked)"
            ) from None
        return TokenFile(self.path / f"{serial}.json", fd, durable=self.durable)

    def serials(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.json"))

"""The state file on disk: atomic replacement, and nothing left behind when a write fails."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from firmware_sim.storage import atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "GAHT00000001.json"
    atomic_write(target, b"old")
    real_write = os.write

    def disk_full(fd: int, data: object) -> int:
        real_write(fd, b"tor")  # a partial copy reaches the temp file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new state")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]

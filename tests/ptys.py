"""Run a command with its stderr on a real PTY, as a terminal would have it."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path
from typing import IO, Any


def stderr_on_pty(argv: list[str], cwd: Path, stdout: IO[Any] | int = subprocess.DEVNULL,
                  timeout: float = 120) -> tuple[int, bytes]:
    """Run `argv` with stderr on a fresh PTY (stdin from /dev/null, stdout to `stdout`);
    its exit status and every byte it wrote to the terminal."""
    master, slave = pty.openpty()
    seen = b""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=slave)
        os.close(slave)
        while True:  # read as it comes, so a full PTY buffer never blocks the child
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
    return proc.returncode, seen

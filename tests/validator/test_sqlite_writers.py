"""SQLite writers on one file: the writer queue (threads of one process and other
processes wait for each other before `BEGIN IMMEDIATE`, instead of in SQLite's sleeping
busy handler) and checkpoints left to another thread (the daemon's `Checkpointer`), on
real files and real processes."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from validator.store import AuditEvent, Connections, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]

_ADDER = """
import sys
from validator.store import Connections
db = Connections(sys.argv[1])
for _ in range(int(sys.argv[2])):
    with db.transaction() as conn:
        (n,) = conn.execute("SELECT n FROM counter").fetchone()
        conn.execute("UPDATE counter SET n = ?", (n + 1,))
db.close()
"""


def _counter(path: Path) -> Connections:
    db = Connections(path)
    with db.transaction() as conn:
        conn.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (0)")
    return db


def test_writers_of_several_processes_and_threads_lose_no_update(tmp_path: Path) -> None:
    """A read-modify-write in each transaction: had any two overlapped, an increment would
    be lost. Two other processes and two threads of this one, 300 each."""
    path = tmp_path / "c.db"
    db = _counter(path)
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER, str(path), "300"], cwd=ROOT)
             for _ in range(2)]

    def add() -> None:
        for _ in range(300):
            with db.transaction() as conn:
                (n,) = conn.execute("SELECT n FROM counter").fetchone()
                conn.execute("UPDATE counter SET n = ?", (n + 1,))

    threads = [threading.Thread(target=add) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(60) for p in procs] == [0, 0]
    assert db.get().execute("SELECT n FROM counter").fetchone()[0] == 1200
    lock = Path(str(path) + "-lock")
    assert lock.stat().st_mode & 0o777 == 0o600
    db.close()


def test_a_writer_waits_for_another_process_at_most_the_busy_timeout(
        tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    _counter(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(path) + "-lock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "held\n"
    db = Connections(path, busy_timeout_ms=400)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"), \
                db.transaction() as conn:
            conn.execute("UPDATE counter SET n = 99")
        assert 0.4 <= time.monotonic() - started < 10
        assert db.get().execute("SELECT n FROM counter").fetchone()[0] == 0
        holder.stdin.close()  # the other process ends, and its lock with it
        assert holder.wait(10) == 0
        with db.transaction() as conn:
            conn.execute("UPDATE counter SET n = 1")
            # and after the time-out it queues as before: the file is locked meanwhile
            assert _locked_elsewhere(str(path) + "-lock")
        assert not _locked_elsewhere(str(path) + "-lock")
        assert db.get().execute("SELECT n FROM counter").fetchone()[0] == 1
    finally:
        holder.kill()
        holder.wait(10)
        db.close()


def _locked_elsewhere(lock: str) -> bool:
    """Whether another process finds `lock` flocked."""
    probe = subprocess.run(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\n"
         "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
         "except BlockingIOError:\n    sys.exit(3)", lock], timeout=30)
    assert probe.returncode in (0, 3)
    return probe.returncode == 3


def test_a_nested_transaction_fails_as_sqlite_says_and_never_deadlocks(
        tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = _counter(path)
    with db.transaction() as conn:
        conn.execute("UPDATE counter SET n = 5")
        with pytest.raises(sqlite3.OperationalError, match="within a transaction"), \
                db.transaction():
            pass
    # the outer one committed, and the queue is free again: for another thread and for
    # another process (the file lock went with the outermost transaction)
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(_write(db, 6)))
    t.start()
    t.join(10)
    assert done == [6]
    out = subprocess.run([sys.executable, "-c", _ADDER, str(path), "1"], cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0
    assert db.get().execute("SELECT n FROM counter").fetchone()[0] == 7
    db.close()


def _write(db: Connections, n: int) -> int:
    with db.transaction() as conn:
        conn.execute("UPDATE counter SET n = ?", (n,))
    return n


def test_close_releases_the_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = _counter(path)
    fds = set(os.listdir("/proc/self/fd"))
    _write(db, 1)
    db.close()
    assert set(os.listdir("/proc/self/fd")) <= fds
    fd = os.open(str(path) + "-lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it
    finally:
        os.close(fd)


def _wal_frames_after_commits(store: SQLiteStore, commits: int) -> int:
    for i in range(commits):
        store.add_audit([AuditEvent(float(i), "verify", "ok", serial=f"S{i}")])
    # what a checkpoint from another connection finds in the WAL (it copies it too)
    other = sqlite3.connect(store.path)
    try:
        busy, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        other.close()
    assert busy == 0
    return int(frames)


def test_checkpoints_left_elsewhere_are_not_run_by_the_writers(tmp_path: Path) -> None:
    """By default a commit that leaves 1,000 pages or more in the WAL checkpoints it, on
    its caller's time; after `checkpoint_elsewhere` only the backstop does, and
    `checkpoint()` copies the WAL without restarting it under a reader."""
    default = SQLiteStore(tmp_path / "a.db")
    try:
        assert _wal_frames_after_commits(default, 3_000) <= 1_100
    finally:
        default.close()
    store = SQLiteStore(tmp_path / "b.db")
    try:
        store.checkpoint_elsewhere(backstop_pages=20_000)
        frames, copied = store.checkpoint()
        assert frames == copied
        store.add_audit([AuditEvent(0.0, "verify", "ok")])  # a connection's own pragma
        assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 20_000
        assert _wal_frames_after_commits(store, 3_000) >= 3_000
        store.add_audit([AuditEvent(1.0, "verify", "ok")])  # restarts the copied WAL
        frames, copied = store.checkpoint()
        assert 0 < frames == copied < 100
        assert store.count_audit() == 3_002
    finally:
        store.close()
    # and a connection opened later (another thread's) follows the same setting
    store = SQLiteStore(tmp_path / "c.db")
    try:
        store.checkpoint_elsewhere(backstop_pages=1_234)
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(
            store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        t.start()
        t.join(10)
        assert seen == [1_234]
    finally:
        store.close()

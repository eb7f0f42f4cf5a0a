"""A real PostgreSQL server for the tests: Debian's binaries, `initdb` and `pg_ctl` in a
temporary directory, listening on a Unix socket only (no TCP port, no system service).

Run as the `postgres` user through `runuser` when the tests run as root (PostgreSQL refuses
to run as root). One server per test session (`pg_server`); every test that needs a
database gets a fresh one (`CREATE DATABASE`, cheap with `fsync=off`). Without the binaries
the PostgreSQL tests skip, unless the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from validator.service import Validator


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def missing(reason: str) -> None:
    """Skip, or fail when CI is set (the PostgreSQL tests must run there)."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason} "
                    "(scripts/debian-deps.sh installs the postgresql package)")
    pytest.skip(reason)


@dataclass
class PgServer:
    """A running test server: its socket directory and how to run its programs."""

    bin: Path
    root: Path
    data: Path
    socket_dir: Path
    prefix: list[str]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: int = 0
    _lifeline: int | None = None  # the write end of the watchdog's pipe (see `_watch`)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={quote(str(self.socket_dir), safe='')}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, str(self.bin / args[0]), *args[1:]], check=check,
                              capture_output=True, text=True, timeout=60)

    def pg_ctl(self, action: str, *extra: str) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-l",
                 str(self.root / "log"), "-o", f"-k {self.socket_dir} -c listen_addresses=''",
                 *extra, action)

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        self.pg_ctl("start")

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        with self._lock:
            self._serial += 1
            name = f"t{os.getpid()}_{self._serial}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_server(*, durable: bool = False) -> PgServer:
    """initdb and start a server. `durable`: PostgreSQL's defaults (fsync at every commit),
    for benchmarks; otherwise a throw-away server without fsync, for tests."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        missing("PostgreSQL's initdb and pg_ctl are not installed")
    assert bin_dir is not None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (pip install -e '.[postgresql]')")
    root = Path(tempfile.mkdtemp(prefix="foblab-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no postgres user to run PostgreSQL as")
        runuser = shutil.which("runuser")
        if runuser is None:
            missing("running as root and runuser is not installed")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = [str(runuser), "-u", "postgres", "--"]
    root.chmod(0o700)
    data = root / "data"
    socket_dir = root
    server = PgServer(bin_dir, root, data, socket_dir, prefix)
    server.run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
               "-E", "UTF8", "--locale=C")
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("max_connections = 300\nshared_buffers = 64MB\n")
        if not durable:  # a throw-away server: no durability needed
            conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
    server.start()
    server._lifeline = _watch(server)
    return server


# The watchdog: waits for end of file on its standard input, a pipe whose only write end
# this process holds, which comes when this process closes it or dies however it dies
# (SIGTERM, SIGKILL, a crash); then stops the server and removes its folder.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
prefix, pg_ctl, data, root = sys.argv[1].split(), sys.argv[2], sys.argv[3], sys.argv[4]
subprocess.run([*prefix, pg_ctl, "-D", data, "-w", "-m", "immediate", "stop"],
               capture_output=True, timeout=60)
shutil.rmtree(root, ignore_errors=True)
"""


def _watch(server: PgServer) -> int:
    """Start the server's watchdog (in its own session, so a signal to this process's
    group does not reach it); the pipe's write end, for `stop_server` to close."""
    read_end, write_end = os.pipe()  # neither inherited by other children (PEP 446)
    try:
        subprocess.Popen([sys.executable, "-c", _WATCHDOG, " ".join(server.prefix),
                          str(server.bin / "pg_ctl"), str(server.data), str(server.root)],
                         stdin=read_end, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(read_end)
    return write_end


def stop_server(server: PgServer) -> None:
    server.run("pg_ctl", "-D", str(server.data), "-w", "-m", "immediate", "stop", check=False)
    shutil.rmtree(server.root, ignore_errors=True)
    if server._lifeline is not None:
        os.close(server._lifeline)  # the watchdog finds nothing left to do
        server._lifeline = None


@dataclass(frozen=True)
class Database:
    """Where a test's validator keeps its data: a SQLite path or a PostgreSQL URL, and
    the key file."""

    target: str | Path
    key_file: Path
    backend: str

    def rows(self, query: str) -> list[tuple[object, ...]]:
        """Raw rows, read past the store (what is really on disk)."""
        if self.backend == "sqlite":
            import sqlite3
            with sqlite3.connect(self.target) as raw:
                return raw.execute(query).fetchall()
        import psycopg
        with psycopg.connect(str(self.target)) as conn:
            return conn.execute(query).fetchall()  # type: ignore[arg-type]

    def open(self, **kwargs: object) -> Validator:
        return Validator.open(self.target, self.key_file, **kwargs)  # type: ignore[arg-type]

"""Token storage: the `Store` interface and its SQLite implementation.

Acceptance is a compare-and-set. Every token row carries a `version` that each committed
change increments; the service reads a row, lets the core decide, and commits the new state
only `WHERE serial = ? AND version = ?`. Of any number of simultaneous requests that read
the same version, exactly one commits; the others see `CONFLICT`, re-read, and the core then
refuses their code as replayed. The state of an accepted code is committed (with its audit
entry, in the same transaction) before the service answers.

Durability: WAL mode, with `synchronous=NORMAL` by default. In WAL mode NORMAL loses no
committed transaction when the *process* dies (SIGKILL, crash): the commit is in the WAL
file in the OS page cache, and the next open replays it. Only a power loss or kernel crash
can drop the last transactions, and with them could make the last accepted codes acceptable
once more. `synchronous=FULL` fsyncs the WAL at every commit and survives that too, at the
cost of one fsync per accepted code (see docs/benchmarks.md for both figures).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from validator.core import TokenState
from validator.errors import DatabaseUnavailable, DuplicateSerial
from validator.logs import REQUEST_ID

SCHEMA_VERSION = 6
BACKSTOP_PAGES = 10_000  # WAL pages (of 4 KiB) a writer lets pass before it checkpoints

# Each migration takes the schema from version n-1 to n; appended, never edited.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tokens (
            serial TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            user TEXT,
            state TEXT NOT NULL,
            sealed BLOB NOT NULL,
            version INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            assigned_at REAL
        )""",
        "CREATE INDEX tokens_user ON tokens(user)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            serial TEXT,
            user TEXT,
            action TEXT NOT NULL,
            result TEXT NOT NULL,
            reason TEXT
        )""",
        "CREATE INDEX audit_serial ON audit(serial, id)",
        "CREATE INDEX audit_user ON audit(user, id)",
        "CREATE INDEX audit_time ON audit(time)",
    ),
    # Every table holding sealed secrets names itself here, so a key rotation re-encrypts
    # all of them, including tables that modules such as validator.aws add to the file.
    2: (
        """CREATE TABLE sealed_columns (
            tbl TEXT PRIMARY KEY,
            key_column TEXT NOT NULL,
            aad_prefix TEXT NOT NULL
        )""",
        "INSERT INTO sealed_columns VALUES ('tokens', 'serial', '')",
    ),
    # The door a request came through when it is not the HTTP API ("radius"), and the
    # name of the RADIUS client (NAS) that sent it.
    3: (
        "ALTER TABLE audit ADD COLUMN via TEXT",
        "ALTER TABLE audit ADD COLUMN client TEXT",
    ),
    # The guessing surface of a verification: how many steps (or counters) a code would
    # have been accepted at, over the user's devices (core.Decision.window).
    4: ("ALTER TABLE audit ADD COLUMN window_steps INTEGER",),
    # Envelope encryption (validator.secrets_box): the data keys, wrapped by the master key
    # of the key file. Exactly one is `current` once the keys are set up (validator.keys).
    5: (
        """CREATE TABLE data_keys (
            id TEXT PRIMARY KEY,
            wrapped BLOB NOT NULL,
            created REAL NOT NULL,
            current INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # The request an entry was written for: the `request_id` of the daemon's log lines and
    # the X-Request-Id of the HTTP answer (validator.logs). Older rows have none.
    6: ("ALTER TABLE audit ADD COLUMN request_id TEXT",),
}

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def register_sealed_table(conn: sqlite3.Connection, table: str, key_column: str,
                          aad_prefix: str) -> None:
    """Declare that `table.sealed` holds secrets sealed with AAD `aad_prefix + key_column`,
    so a data-key rotation reseals it. Idempotent; call inside the module's schema set-up."""
    if not (_IDENTIFIER.fullmatch(table) and _IDENTIFIER.fullmatch(key_column)):
        raise ValueError("table and column names must be plain identifiers")
    conn.execute("INSERT OR REPLACE INTO sealed_columns VALUES (?, ?, ?)",
                 (table, key_column, aad_prefix))


class Durability(enum.StrEnum):
    """SQLite `synchronous` level in WAL mode: NORMAL survives a process crash, FULL also a
    power loss."""

    NORMAL = "NORMAL"
    FULL = "FULL"


class StoreError(Exception):
    """The database cannot be used (a newer schema, a broken file)."""


class StoreUnavailable(StoreError, DatabaseUnavailable):
    """The database does not answer now (a server down or unreachable, no free connection
    within the timeout). Transient: the doors answer 503 and the next request tries again."""


class StaleDataKey(StoreError):
    """A secret to insert was sealed under a data key that a rotation (by another process)
    has since replaced; the service reseals it under the current key and tries again."""


def sealed_key_ids(sealed: Sequence[bytes]) -> set[bytes]:
    """The data key ids that envelope-sealed secrets (format 2) name."""
    return {s[1:9] for s in sealed if len(s) > 9 and s[0] == 2}


def is_url(target: str | os.PathLike[str]) -> bool:
    """Whether a database setting is a PostgreSQL URL rather than a SQLite file path."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_store(target: str | os.PathLike[str], *, durability: Durability | None = None,
               readonly: bool = False, migrate: bool = True) -> Store:
    """The store a database setting names: a `postgresql://` URL (validator.store_pg, the
    `postgresql` extra) or a SQLite file path."""
    if is_url(target):
        try:
            from validator.store_pg import PostgresStore
        except ImportError as exc:
            raise StoreError("a postgresql:// database needs psycopg: pip install "
                             f"'foblab[postgresql]' ({exc})") from None
        return PostgresStore(str(target), readonly=readonly, migrate=migrate)
    return SQLiteStore(target, durability=durability or Durability.NORMAL, readonly=readonly)


class Cas(enum.Enum):
    """The outcome of a compare-and-set."""

    OK = "ok"
    CONFLICT = "conflict"  # the row changed (or vanished) since it was read
    DEVICE_LIMIT = "device_limit"  # the assignment would exceed the user's device limit


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: its state, its sealed seed and whom it is assigned to."""

    serial: str
    state: TokenState
    sealed: bytes = field(repr=False)
    user: str | None = None
    version: int = 0
    created: float = 0.0
    assigned_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit entry to write. Never holds a code or a secret: only these fields exist."""

    time: float
    action: str
    result: str
    reason: str | None = None
    serial: str | None = None
    user: str | None = None
    via: str | None = None  # the door, when not the HTTP API: "radius"
    client: str | None = None  # the RADIUS client's configured name
    window: int | None = None
    """verify: how many steps or counters a code would have been accepted at."""
    request_id: str | None = field(default_factory=REQUEST_ID.get)
    """The request it was written for (validator.logs): by default the one being handled
    in this context, None outside any request."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry read back, with its id (ascending in write order)."""

    id: int
    time: float
    action: str
    result: str
    reason: str | None
    serial: str | None
    user: str | None
    via: str | None = None
    client: str | None = None
    window: int | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class StateChange:
    """One compare-and-set of `set_states`: `state` (and `audit`'s rows) only if the token
    `serial` is still at `version`."""

    serial: str
    version: int
    state: TokenState
    audit: Sequence[AuditEvent] = ()


def one_change_per_token(changes: Sequence[StateChange]) -> None:
    """`set_states`'s precondition: one change per token (ValueError otherwise)."""
    if len({c.serial for c in changes}) != len(changes):
        raise ValueError("set_states: one change per token")


class _Keep:
    """The `user` argument of compare_and_set meaning: leave the assignment as it is."""


KEEP = _Keep()


class Store(Protocol):
    """What the service needs from storage."""

    def insert_tokens(self, records: Sequence[TokenRecord], audit: Sequence[AuditEvent],
                      *, skip_existing: bool = False) -> list[str]: ...

    def get(self, serial: str) -> TokenRecord | None: ...

    def tokens_of(self, user: str) -> list[TokenRecord]: ...

    def tokens_of_many(self, users: Sequence[str]) -> dict[str, list[TokenRecord]]: ...

    def list_tokens(self, *, user: str | None = None, kind: str | None = None,
                    assigned: bool | None = None, limit: int = 100,
                    offset: int = 0) -> list[TokenRecord]: ...

    def compare_and_set(self, serial: str, version: int, state: TokenState, *,
                        user: str | None | _Keep = KEEP, assigned_at: float | None = None,
                        max_devices: int | None = None,
                        audit: Sequence[AuditEvent] = ()) -> Cas: ...

    def set_states(self, changes: Sequence[StateChange]) -> list[Cas]: ...

    def delete(self, serial: str, version: int, audit: Sequence[AuditEvent] = ()) -> Cas: ...

    def add_audit(self, events: Sequence[AuditEvent]) -> None: ...

    def audit(self, *, serial: str | None = None, user: str | None = None,
              action: str | None = None, result: str | None = None,
              since: float | None = None, until: float | None = None,
              limit: int = 100, offset: int = 0,
              newest_first: bool = False, request_id: str | None = None) -> list[AuditEntry]: ...

    # -- what validator.keys needs (envelope encryption) --

    def data_keys(self) -> list[tuple[bytes, bytes, bool]]: ...

    def data_key(self, key_id: bytes) -> bytes | None: ...

    def legacy_samples(self) -> dict[bytes, tuple[str, bytes]]: ...

    def sealed_rows(self, limit: int | None = None) -> Iterator[tuple[str, str, bytes]]: ...

    def rotate_data_key(self, key_id: bytes, wrapped: bytes, now: float,
                        reseal: Callable[[str, bytes], bytes],
                        audit: Sequence[AuditEvent] = (),
                        before_commit: Callable[[], None] = lambda: None) -> int: ...

    def rewrap_data_keys(self, rewrap: Callable[[bytes, bytes], bytes],
                         audit: Sequence[AuditEvent] = (),
                         before_commit: Callable[[], None] = lambda: None) -> int: ...

    def check(self) -> None: ...

    def count_tokens(self, *, user: str | None = None, kind: str | None = None,
                     assigned: bool | None = None) -> int: ...

    def token_gauges(self, now: float) -> dict[str, int]: ...

    def audit_after(self, after: int | None, *, since: float | None = None,
                    until: float | None = None, newest_first: bool = False,
                    limit: int = 1000) -> list[AuditEntry]: ...

    def prune_audit(self, *, before: float | None = None, keep: int | None = None,
                    batch: int = 5000) -> int: ...

    def count_audit(self, *, serial: str | None = None, user: str | None = None,
                    action: str | None = None, result: str | None = None,
                    since: float | None = None, until: float | None = None,
                    request_id: str | None = None) -> int: ...

    def pinned(self) -> AbstractContextManager[None]:
        """A scope in which this thread's calls share one connection (PostgreSQL: one
        checkout from the pool; SQLite: each thread has its own already)."""
        ...

    def close(self) -> None: ...


_NOTHING: AbstractContextManager[None] = nullcontext()


def encode_state(state: TokenState) -> str:
    """A token's state as the stores keep it: compact JSON. orjson writes it, about ten
    times faster than the json module on a drifted token's floats (docs/benchmarks.md);
    the text is the same JSON (a float's shortest exact form, which json reads back)."""
    return orjson.dumps(state.to_json()).decode()


def decode_state(text: str | bytes) -> TokenState:
    """`encode_state`'s text (or the json module's, as stores written before hold) back."""
    return TokenState.from_json(orjson.loads(text))


_COLUMNS = "serial, state, sealed, user, version, created, assigned_at"
_AUDIT_COLUMNS = ("id, time, action, result, reason, serial, user, via, client, window_steps, "
                  "request_id")  # an AuditEntry's, in its order
# a token's compare-and-set that keeps its assignment (compare_and_set, set_states)
_SET_STATE = "UPDATE tokens SET state = ?, version = version + 1 WHERE serial = ? AND version = ?"


def _record(row: tuple[Any, ...]) -> TokenRecord:
    serial, state, sealed, user, version, created, assigned_at = row
    return TokenRecord(
        serial=serial, state=decode_state(state), sealed=bytes(sealed),
        user=user, version=int(version), created=float(created),
        assigned_at=None if assigned_at is None else float(assigned_at),
    )


class WriterQueue:
    """Where the writers of one database file wait for each other before `BEGIN IMMEDIATE`:
    a lock for this process's threads (the event loop, the RADIUS listener, the pruner),
    then an exclusive `flock` on `<database>-lock` for the other processes (`serve
    --workers`). SQLite's busy handler, which stays underneath for any writer that does not
    queue here (a command run beside the daemon), sleeps 1, 2, 5, 10... ms between tries, so
    every collision of two writers cost a millisecond or more; here the next writer goes
    as soon as the lock is free (docs/benchmarks.md, "Writers queue"). Correctness never
    depends on it: `BEGIN IMMEDIATE` still takes SQLite's own lock.

    Waiting is bounded by `timeout_s` (the busy timeout), after which the writer gives up
    with SQLite's own "database is locked", as it would have without the queue."""

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = path + "-lock"
        self.timeout_s = timeout_s
        self._threads = threading.RLock()
        self._depth = 0  # nested transaction() calls of the holding thread
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout_s
        if not self._threads.acquire(timeout=self.timeout_s):
            raise sqlite3.OperationalError("database is locked")
        try:
            if self._depth == 0:
                self._lock_file(deadline)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _lock_file(self, deadline: float) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:  # a folder we may not write: SQLite alone decides (and says)
                return
        pause = 20e-6
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    return
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError("database is locked")
            time.sleep(pause)  # another process's transaction: about 0.1 ms
            pause = min(pause * 2, 0.001)

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Connections:
    """One SQLite connection per thread on one file (WAL, a busy timeout, a `synchronous`
    level), and `transaction()`: in the `WriterQueue`, `BEGIN IMMEDIATE`, then COMMIT, or
    ROLLBACK on an error. Shared by every store on the validator's database file."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 10_000,
                 synchronous: str = "NORMAL", readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self._busy = busy_timeout_ms
        self._synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.writers = WriterQueue(self.path, busy_timeout_ms / 1000)
        self._autocheckpoint: int | None = None  # None: SQLite's 1,000 pages

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = sqlite3.connect(Path(self.path).resolve().as_uri() + "?mode=ro",
                                       uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=self._busy / 1000)
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy)}")
            else:
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=self._busy / 1000)
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                if self._autocheckpoint is not None:
                    conn.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def set_autocheckpoint(self, pages: int) -> None:
        """After a commit that leaves `pages` or more in the WAL, that writer copies them into
        the database file itself (SQLite's `wal_autocheckpoint`), on every connection, open
        or yet to come. Call it before other threads use this object."""
        self._autocheckpoint = int(pages)
        with self._lock:
            for conn in self._all:
                conn.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. The body may end it early with `ROLLBACK` (a refused
        compare-and-set); otherwise it commits on exit and rolls back on an exception."""
        conn = self.get()
        with self.writers.held():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if conn.in_transaction:
                conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self.writers.close()
        self._local = threading.local()


class SQLiteStore:
    """The SQLite store: one connection per thread, WAL, a busy timeout, explicit
    `BEGIN IMMEDIATE` transactions for every write."""

    def __init__(self, path: str | os.PathLike[str], *, durability: Durability = Durability.NORMAL,
                 busy_timeout_ms: int = 10_000, readonly: bool = False) -> None:
        """`readonly`: open an existing file to read only (`foblab validator check`): no
        migration, no write, safe beside a running daemon."""
        self.path = os.fspath(path)
        self.durability = Durability(durability)
        self._db = Connections(path, busy_timeout_ms=busy_timeout_ms,
                               synchronous=self.durability.value, readonly=readonly)
        self._conn = self._db.get
        if readonly:
            if self.schema_version() > SCHEMA_VERSION:
                raise StoreError(f"database schema version {self.schema_version()} is newer "
                                 f"than this validator's ({SCHEMA_VERSION}); upgrade foblab")
        else:
            self._migrate()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, durability={self.durability.value})"

    # -- connections and schema -------------------------------------------------------

    def _migrate(self) -> None:
        with self._db.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreError(f"database schema version {current} is newer than this "
                                 f"validator's ({SCHEMA_VERSION}); upgrade foblab")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        row = self._conn().execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    def checkpoint_elsewhere(self, backstop_pages: int = BACKSTOP_PAGES) -> None:
        """Leave checkpoints to `checkpoint()`, run by another thread (the daemon's
        `Checkpointer`): a commit then never copies the WAL into the database file on the
        request's time, which SQLite does by default every 1,000 pages (about 150
        verifications), for 5-10 ms of fsyncs and copying while the writers wait. A writer
        still checkpoints once the WAL holds `backstop_pages`, should that thread fall
        behind (under steady load the WAL only restarts then)."""
        self._db.set_autocheckpoint(backstop_pages)

    def checkpoint(self) -> tuple[int, int]:
        """Copy what it can of the WAL into the database file without waiting for, or
        holding up, any reader or writer (`PRAGMA wal_checkpoint(PASSIVE)`, on this
        thread's connection). Returns (frames in the WAL, frames copied); (0, 0) when
        another connection was checkpointing."""
        busy, frames, copied = self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:
            return 0, 0
        return max(int(frames), 0), max(int(copied), 0)

    def pinned(self) -> AbstractContextManager[None]:
        """Nothing to do: each thread has its own connection already."""
        return _NOTHING

    def close(self) -> None:
        self._db.close()

    # -- writes ----------------------------------------------------------------------------

    def _write(self, conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> None:
        if events:
            conn.executemany(
                "INSERT INTO audit (time, serial, user, action, result, reason, via, client, "
                "window_steps, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.time, e.serial, e.user, e.action, e.result, e.reason, e.via, e.client,
                  e.window, e.request_id)
                 for e in events])

    def _hold_data_keys(self, conn: sqlite3.Connection, sealed: Sequence[bytes]) -> None:
        """Inside a write transaction (which holds the file's write lock, as a rotation
        does): `StaleDataKey` if `sealed` name a data key a rotation has dropped, which
        another process (a second worker) may have run since this one sealed them."""
        wanted = sorted(k.hex() for k in sealed_key_ids(sealed))
        if not wanted:
            return
        marks = ",".join("?" * len(wanted))
        have = {row[0] for row in conn.execute(
            f"SELECT id FROM data_keys WHERE id IN ({marks})", wanted)}
        if set(wanted) - have:
            raise StaleDataKey("sealed under a data key that a rotation has replaced")

    def insert_tokens(self, records: Sequence[TokenRecord], audit: Sequence[AuditEvent],
                      *, skip_existing: bool = False) -> list[str]:
        """Insert all records in one transaction. Existing serials raise `DuplicateSerial`
        (nothing inserted) unless `skip_existing`, which leaves them out. Returns the serials
        inserted."""
        with self._db.transaction() as conn:
            self._hold_data_keys(conn, [r.sealed for r in records])
            serials = [r.serial for r in records]
            existing: set[str] = set()
            for i in range(0, len(serials), 500):
                chunk = serials[i : i + 500]
                marks = ",".join("?" * len(chunk))
                existing.update(row[0] for row in conn.execute(
                    f"SELECT serial FROM tokens WHERE serial IN ({marks})", chunk))
            if existing and not skip_existing:
                raise DuplicateSerial(sorted(existing))
            fresh = [r for r in records if r.serial not in existing]
            conn.executemany(
                "INSERT INTO tokens (serial, kind, user, state, sealed, version, created, "
                "assigned_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                [(r.serial, r.state.kind.value, r.user, encode_state(r.state), r.sealed, r.created,
                  r.assigned_at) for r in fresh])
            inserted = {r.serial for r in fresh}
            self._write(conn, [e for e in audit if e.serial is None or e.serial in inserted])
        return [r.serial for r in fresh]

    def compare_and_set(self, serial: str, version: int, state: TokenState, *,
                        user: str | None | _Keep = KEEP, assigned_at: float | None = None,
                        max_devices: int | None = None,
                        audit: Sequence[AuditEvent] = ()) -> Cas:
        """Commit `state` (and optionally a new assignment) only if the row is still at
        `version`; with `max_devices`, only if `user` then holds fewer tokens than that."""
        with self._db.transaction() as conn:
            if isinstance(user, _Keep):
                cursor = conn.execute(_SET_STATE, (encode_state(state), serial, version))
            else:
                if user is not None and max_devices is not None:
                    (held,) = conn.execute("SELECT count(*) FROM tokens WHERE user = ? "
                                           "AND serial != ?", (user, serial)).fetchone()
                    if held >= max_devices:
                        conn.execute("ROLLBACK")
                        return Cas.DEVICE_LIMIT
                cursor = conn.execute(
                    "UPDATE tokens SET state = ?, user = ?, assigned_at = ?, "
                    "version = version + 1 WHERE serial = ? AND version = ?",
                    (encode_state(state), user, assigned_at, serial, version))
            if cursor.rowcount != 1:
                conn.execute("ROLLBACK")
                return Cas.CONFLICT
            self._write(conn, audit)
        return Cas.OK

    def set_states(self, changes: Sequence[StateChange]) -> list[Cas]:
        """Each change's compare-and-set (its state and audit rows, keeping the assignment),
        all in one transaction: a change that loses its race writes nothing and undoes no
        other. The serials must differ."""
        one_change_per_token(changes)
        if not changes:
            return []
        out = []
        with self._db.transaction() as conn:
            for c in changes:
                won = conn.execute(_SET_STATE, (encode_state(c.state), c.serial,
                                                c.version)).rowcount == 1
                if won:
                    self._write(conn, c.audit)
                out.append(Cas.OK if won else Cas.CONFLICT)
        return out

    def delete(self, serial: str, version: int, audit: Sequence[AuditEvent] = ()) -> Cas:
        with self._db.transaction() as conn:
            cursor = conn.execute("DELETE FROM tokens WHERE serial = ? AND version = ?",
                                  (serial, version))
            if cursor.rowcount != 1:
                conn.execute("ROLLBACK")
                return Cas.CONFLICT
            self._write(conn, audit)
        return Cas.OK

    def add_audit(self, events: Sequence[AuditEvent]) -> None:
        with self._db.transaction() as conn:
            self._write(conn, events)

    def _sealed_tables(self, conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
        if self.schema_version() < 2:  # read-only on a database from before the registry
            return [("tokens", "serial", "")]
        tables = conn.execute("SELECT tbl, key_column, aad_prefix FROM sealed_columns "
                              "ORDER BY tbl").fetchall()
        for table, key_column, _ in tables:
            if not (_IDENTIFIER.fullmatch(table) and _IDENTIFIER.fullmatch(key_column)):
                raise StoreError(f"sealed_columns names a bad table {table!r}")
        return tables

    def rotate_data_key(self, key_id: bytes, wrapped: bytes, now: float,
                        reseal: Callable[[str, bytes], bytes],
                        audit: Sequence[AuditEvent] = (),
                        before_commit: Callable[[], None] = lambda: None) -> int:
        """In one transaction: store the new data key `key_id` (wrapped), make it the
        current one, replace every sealed secret by `reseal(aad, sealed)` (the token seeds
        and every table registered in `sealed_columns`), and drop the data keys no row
        refers to any more. Returns how many secrets were resealed."""
        with self._db.transaction() as conn:
            conn.execute("INSERT INTO data_keys (id, wrapped, created, current) "
                         "VALUES (?, ?, ?, 0)", (key_id.hex(), wrapped, now))
            count = 0
            referenced: set[str] = set()
            for table, key_column, prefix in self._sealed_tables(conn):
                # Token rows carry a version for compare-and-set: bump it so a decision
                # taken on the old row cannot commit over the resealed one.
                bump = ", version = version + 1" if table == "tokens" else ""
                rows = conn.execute(f"SELECT {key_column}, sealed FROM {table}").fetchall()
                conn.executemany(
                    f"UPDATE {table} SET sealed = ?{bump} WHERE {key_column} = ?",
                    [(reseal(prefix + key, bytes(sealed)), key) for key, sealed in rows])
                count += len(rows)
                referenced.update(row[0] for row in conn.execute(
                    f"SELECT DISTINCT lower(hex(substr(sealed, 2, 8))) FROM {table}"))
            referenced.add(key_id.hex())
            conn.execute("UPDATE data_keys SET current = (id = ?)", (key_id.hex(),))
            marks = ",".join("?" * len(referenced))
            conn.execute(f"DELETE FROM data_keys WHERE id NOT IN ({marks})", sorted(referenced))
            self._write(conn, audit)
            before_commit()
        return count

    def rewrap_data_keys(self, rewrap: Callable[[bytes, bytes], bytes],
                         audit: Sequence[AuditEvent] = (),
                         before_commit: Callable[[], None] = lambda: None) -> int:
        """Replace every wrapped data key by `rewrap(id, wrapped)` in one transaction (a
        master-key rotation). Returns how many."""
        with self._db.transaction() as conn:
            rows = conn.execute("SELECT id, wrapped FROM data_keys").fetchall()
            conn.executemany("UPDATE data_keys SET wrapped = ? WHERE id = ?",
                             [(rewrap(bytes.fromhex(kid), bytes(wrapped)), kid)
                              for kid, wrapped in rows])
            self._write(conn, audit)
            before_commit()
        return len(rows)

    def data_keys(self) -> list[tuple[bytes, bytes, bool]]:
        """Every data key: (id, wrapped, current)."""
        if self.schema_version() < 5:  # read-only on a database not yet migrated
            return []
        rows = self._conn().execute(
            "SELECT id, wrapped, current FROM data_keys ORDER BY created, id").fetchall()
        return [(bytes.fromhex(kid), bytes(wrapped), bool(current))
                for kid, wrapped, current in rows]

    def data_key(self, key_id: bytes) -> bytes | None:
        if self.schema_version() < 5:
            return None
        row = self._conn().execute("SELECT wrapped FROM data_keys WHERE id = ?",
                                   (key_id.hex(),)).fetchone()
        return None if row is None else bytes(row[0])

    def legacy_samples(self) -> dict[bytes, tuple[str, bytes]]:
        """One (aad, sealed) per master key id that legacy (format 1) secrets name."""
        conn = self._conn()
        found: dict[bytes, tuple[str, bytes]] = {}
        for table, key_column, prefix in self._sealed_tables(conn):
            for key, sealed in conn.execute(
                    f"SELECT {key_column}, sealed FROM {table} WHERE substr(sealed, 1, 1) = "
                    "x'01' GROUP BY substr(sealed, 2, 8)"):
                found.setdefault(bytes(sealed)[1:9], (prefix + key, bytes(sealed)))
        return found

    def sealed_rows(self, limit: int | None = None) -> Iterator[tuple[str, str, bytes]]:
        """(table, aad, sealed) of every sealed secret, or of up to `limit` per table
        (spread over the table, not only its first rows)."""
        conn = self._conn()
        for table, key_column, prefix in self._sealed_tables(conn):
            if limit is None:
                query = f"SELECT {key_column}, sealed FROM {table}"
            else:
                (total,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                every = max(1, total // max(1, limit))
                query = (f"SELECT {key_column}, sealed FROM {table} WHERE rowid % {every} = 0 "
                         f"LIMIT {int(limit)}")
            for key, sealed in conn.execute(query):
                yield table, prefix + key, bytes(sealed)

    def check(self) -> None:
        """Raise unless the database file can be opened and read now: a fresh connection
        (the per-thread ones may answer from their page cache) reads the schema version and
        the data keys."""
        conn = sqlite3.connect(self.path, timeout=self._db.busy_timeout_ms / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._db.busy_timeout_ms)}")
            conn.execute("SELECT version FROM schema_version").fetchone()
            conn.execute("SELECT count(*) FROM data_keys").fetchone()
            conn.execute("SELECT serial FROM tokens LIMIT 1").fetchone()
        finally:
            conn.close()

    # -- reads -----------------------------------------------------------------------------

    def get(self, serial: str) -> TokenRecord | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM tokens WHERE serial = ?",
                                   (serial,)).fetchone()
        return None if row is None else _record(row)

    def tokens_of(self, user: str) -> list[TokenRecord]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE user = ? ORDER BY assigned_at, serial",
            (user,)).fetchall()
        return [_record(row) for row in rows]

    def tokens_of_many(self, users: Sequence[str]) -> dict[str, list[TokenRecord]]:
        """`tokens_of` of each of `users`, one query per 500 users."""
        out: dict[str, list[TokenRecord]] = {user: [] for user in users}
        names = list(out)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            for row in self._conn().execute(
                    f"SELECT {_COLUMNS} FROM tokens WHERE user IN "
                    f"({', '.join('?' * len(chunk))}) ORDER BY assigned_at, serial", chunk):
                out[row[3]].append(_record(row))
        return out

    def list_tokens(self, *, user: str | None = None, kind: str | None = None,
                    assigned: bool | None = None, limit: int = 100,
                    offset: int = 0) -> list[TokenRecord]:
        clause, args = _token_filter(user, kind, assigned)
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM tokens {clause} ORDER BY serial LIMIT ? OFFSET ?",
            (*args, int(limit), int(offset))).fetchall()
        return [_record(row) for row in rows]

    def count_tokens(self, *, user: str | None = None, kind: str | None = None,
                     assigned: bool | None = None) -> int:
        """How many tokens `list_tokens` would page through."""
        clause, args = _token_filter(user, kind, assigned)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM tokens {clause}",
                                        args).fetchone()[0])

    def token_gauges(self, now: float) -> dict[str, int]:
        """`tokens`, `devices_enabled` (assigned) and `tokens_locked` (at `now`): one scan
        of the tokens table, no secret read."""
        total, enabled, locked = self._conn().execute(
            "SELECT COUNT(*), COUNT(user), "
            "COALESCE(SUM(json_extract(state, '$.locked_until') > ?), 0) FROM tokens",
            (float(now),)).fetchone()
        return {"tokens": int(total), "devices_enabled": int(enabled),
                "tokens_locked": int(locked)}

    def audit(self, *, serial: str | None = None, user: str | None = None,
              action: str | None = None, result: str | None = None,
              since: float | None = None, until: float | None = None,
              limit: int = 100, offset: int = 0,
              newest_first: bool = False, request_id: str | None = None) -> list[AuditEntry]:
        """Audit entries matching every given filter, oldest (or newest) first, paginated."""
        clause, args = _audit_filter(serial, user, action, result, since, until,
                                     request_id=request_id)
        order = "DESC" if newest_first else "ASC"
        rows = self._conn().execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {clause} ORDER BY id {order} LIMIT ? OFFSET ?",
            (*args, int(limit), int(offset))).fetchall()
        return [AuditEntry(*row) for row in rows]

    def audit_after(self, after: int | None, *, since: float | None = None,
                    until: float | None = None, newest_first: bool = False,
                    limit: int = 1000) -> list[AuditEntry]:
        """Up to `limit` entries past id `after` (None: from the first, or the newest), in
        id order: keyset paging, so rows deleted or added meanwhile shift nothing."""
        clause, args = _audit_filter(None, None, None, None, since, until)
        if after is not None:
            clause += (" AND " if clause else "WHERE ") + ("id < ?" if newest_first else "id > ?")
            args.append(int(after))
        order = "DESC" if newest_first else "ASC"
        rows = self._conn().execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {clause} ORDER BY id {order} LIMIT ?",
            (*args, int(limit))).fetchall()
        return [AuditEntry(*row) for row in rows]

    def prune_audit(self, *, before: float | None = None, keep: int | None = None,
                    batch: int = 5000) -> int:
        """Delete the entries written before `before` (Unix seconds) and all but the newest
        `keep`; in transactions of at most `batch` rows, so verifications wait for none of
        them long. Returns how many were deleted."""
        return prune_audit_rows(self._db.transaction, before=before, keep=keep, batch=batch)

    def count_audit(self, *, serial: str | None = None, user: str | None = None,
                    action: str | None = None, result: str | None = None,
                    since: float | None = None, until: float | None = None,
                    request_id: str | None = None) -> int:
        """How many entries `audit` would page through."""
        clause, args = _audit_filter(serial, user, action, result, since, until,
                                     request_id=request_id)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM audit {clause}",
                                        args).fetchone()[0])


def _token_filter(user: str | None, kind: str | None, assigned: bool | None, *,
                  mark: str = "?", user_column: str = "user") -> tuple[str, list[object]]:
    """The WHERE clause of a token listing and its arguments; `mark` and `user_column` in
    the database's dialect (PostgreSQL: `%s` and `"user"`)."""
    where: list[str] = []
    args: list[object] = []
    if user is not None:
        where.append(f"{user_column} = {mark}")
        args.append(user)
    if kind is not None:
        where.append(f"kind = {mark}")
        args.append(kind)
    if assigned is not None:
        where.append(f"{user_column} IS NOT NULL" if assigned else f"{user_column} IS NULL")
    return (f"WHERE {' AND '.join(where)}" if where else ""), args


def _audit_filter(serial: str | None, user: str | None, action: str | None,
                  result: str | None, since: float | None, until: float | None, *,
                  request_id: str | None = None, mark: str = "?",
                  user_column: str = "user") -> tuple[str, list[object]]:
    """The WHERE clause of an audit query and its arguments, in the database's dialect.
    (No index serves `request_id`: bound such a search by time on a large audit.)"""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("serial", serial), (user_column, user), ("action", action),
                          ("result", result), ("request_id", request_id)):
        if value is not None:
            where.append(f"{column} = {mark}")
            args.append(value)
    if since is not None:
        where.append(f"time >= {mark}")
        args.append(since)
    if until is not None:
        where.append(f"time < {mark}")
        args.append(until)
    return (f"WHERE {' AND '.join(where)}" if where else ""), args


def prune_audit_rows(transaction: Callable[[], AbstractContextManager[Any]], *,
                     before: float | None, keep: int | None, batch: int,
                     mark: str = "?") -> int:
    """Both stores' `prune_audit`: delete the entries written before `before` and all but
    the newest `keep`, in transactions of at most `batch` rows (so verifications wait for
    none of them long); `transaction()` opens one and yields its connection."""
    deleted = 0
    while before is not None:
        with transaction() as conn:
            n = conn.execute("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE "
                             f"time < {mark} ORDER BY id LIMIT {mark})",
                             (float(before), int(batch))).rowcount
        deleted += n
        if n < batch:
            break
    while keep is not None:
        with transaction() as conn:
            row = conn.execute(f"SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET {mark}",
                               (int(keep),)).fetchone()
            n = 0 if row is None else conn.execute(
                f"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE id <= {mark} "
                f"ORDER BY id LIMIT {mark})", (int(row[0]), int(batch))).rowcount
        deleted += n
        if n < batch:
            break
    return deleted

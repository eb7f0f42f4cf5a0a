"""The PostgreSQL store: the `Store` interface on a database several daemons share.

Chosen by a `postgresql://` URL (`validator.store.open_store`). The behaviour is the
SQLite store's, with these PostgreSQL means:

- **Compare-and-set across daemons.** `UPDATE tokens ... WHERE serial = %s AND version =
  %s`: under READ COMMITTED a second writer of the same row waits for the first to commit
  and then re-checks its WHERE clause against the committed row, so of any number of
  daemons deciding on the same version exactly one updates it; the others get no row
  (`Cas.CONFLICT`), re-read, and the core refuses their code as replayed.
- **Device limit.** An assignment takes a transaction-scoped advisory lock on the user
  (`pg_advisory_xact_lock`) before counting the user's tokens, so two daemons cannot both
  give a user their last free slot.
- **Data keys.** A rotation first locks `data_keys` EXCLUSIVE: it waits for every insert
  of a sealed secret in flight (each holds a `FOR SHARE` lock on the data key it sealed
  under) and holds new ones back until it commits; an insert sealed under a data key a
  rotation (on any daemon) has since dropped raises `StaleDataKey`, and the service
  reseals under the current key.
- **Schema.** Versioned as in SQLite (`schema_version`, the same numbers); migrations run
  under an advisory lock, so daemons starting together migrate once.
- **Unreachable database.** Connections come from a bounded pool (psycopg_pool), checked
  before use and replaced when broken, so the store reconnects by itself when the server is
  back. Getting a connection waits at most `timeout` seconds and every statement is bounded
  by `statement_timeout`; failures raise `StoreUnavailable` (the doors answer 503).

`user` is a reserved word in PostgreSQL, hence the quotes around that column.
"""

from __future__ import annotations

import functools
import itertools
import re
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from validator.core import TokenState
from validator.errors import DuplicateSerial
from validator.store import (
    _IDENTIFIER,
    KEEP,
    SCHEMA_VERSION,
    AuditEntry,
    AuditEvent,
    Cas,
    StaleDataKey,
    StateChange,
    StoreError,
    StoreUnavailable,
    TokenRecord,
    _Keep,
    _record,
    encode_state,
    one_change_per_token,
    prune_audit_rows,
    sealed_key_ids,
)
from validator.store import _audit_filter as store_audit_filter
from validator.store import _token_filter as store_token_filter

# The same versions as validator.store.MIGRATIONS, in PostgreSQL's dialect.
PG_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tokens (
            serial TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            "user" TEXT,
            state TEXT NOT NULL,
            sealed BYTEA NOT NULL,
            version BIGINT NOT NULL DEFAULT 0,
            created DOUBLE PRECISION NOT NULL,
            assigned_at DOUBLE PRECISION
        )""",
        'CREATE INDEX tokens_user ON tokens("user")',
        """CREATE TABLE audit (
            id BIGSERIAL PRIMARY KEY,
            time DOUBLE PRECISION NOT NULL,
            serial TEXT,
            "user" TEXT,
            action TEXT NOT NULL,
            result TEXT NOT NULL,
            reason TEXT
        )""",
        "CREATE INDEX audit_serial ON audit(serial, id)",
        'CREATE INDEX audit_user ON audit("user", id)',
        "CREATE INDEX audit_time ON audit(time)",
    ),
    2: (
        """CREATE TABLE sealed_columns (
            tbl TEXT PRIMARY KEY,
            key_column TEXT NOT NULL,
            aad_prefix TEXT NOT NULL
        )""",
        "INSERT INTO sealed_columns VALUES ('tokens', 'serial', '')",
    ),
    3: (
        "ALTER TABLE audit ADD COLUMN via TEXT",
        "ALTER TABLE audit ADD COLUMN client TEXT",
    ),
    4: ("ALTER TABLE audit ADD COLUMN window_steps INTEGER",),
    5: (
        """CREATE TABLE data_keys (
            id TEXT PRIMARY KEY,
            wrapped BYTEA NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            current BOOLEAN NOT NULL DEFAULT false
        )""",
    ),
    6: ("ALTER TABLE audit ADD COLUMN request_id TEXT",),
}
assert max(PG_MIGRATIONS) == SCHEMA_VERSION

PROBE_INTERVAL = 1.0  # seconds between reconnection probes while the database is down
IDLE_CHECK_SECONDS = 5.0  # a pooled connection idle this long gets a round trip to check it

_MIGRATION_LOCK = 0x666F626C  # "fobl": the advisory lock migrations hold
_COLUMNS = 'serial, state, sealed, "user", version, created, assigned_at'
_AUDIT_COLUMNS = ('id, time, action, result, reason, serial, "user", via, client, window_steps, '
                  'request_id')
# an audit row's columns as written (_write, _set_state, set_states), and their values
_AUDIT_WRITTEN = ('time, serial, "user", action, result, reason, via, client, window_steps, '
                  'request_id')


# The statements of tokens_of_many and set_states list their values (`IN (%s, ...)`,
# `VALUES (...), ...`) rather than pass arrays: the planner then knows how many there are
# in the generic plan of a prepared statement too, which it therefore uses. With arrays it
# guesses 10 elements, finds its custom plans cheaper, and plans every execution afresh,
# which cost more than running it (docs/benchmarks.md). One prepared statement per batch
# size (at most 32).
_STATE_ROW = "(%s::text, %s::bigint, %s::text)"
# an audit row's values, typed (_set_state), and the same after its token's serial
_AUDIT_VALUES = ("%s::double precision, %s::text, %s::text, %s::text, %s::text, %s::text, "
                 "%s::text, %s::text, %s::integer, %s::text")
_AUDIT_ROW = f"(%s::text, {_AUDIT_VALUES})"


@functools.lru_cache(maxsize=256)
def _set_states_sql(changes: int, audit_rows: int) -> str:
    """set_states's statement: the updates, then the audit rows of the changes whose
    update matched, then the serials that did. In PostgreSQL's own placeholders (`$1`,
    ...), run by a RawCursor: psycopg would otherwise parse its `%s` at every execution,
    as it caches its parse only for statements of at most 50 parameters, and a batch of 4
    has 52 (docs/benchmarks.md)."""
    counter = itertools.count(1)
    return re.sub("%s", lambda _: f"${next(counter)}", _set_states_sql_format(
        changes, audit_rows))


def _set_states_sql_format(changes: int, audit_rows: int) -> str:
    audit = "" if not audit_rows else f""", a AS (
    INSERT INTO audit ({_AUDIT_WRITTEN})
    SELECT x.time, x.serial, x."user", x.action, x.result, x.reason, x.via, x.client,
           x.window_steps, x.request_id
    FROM (VALUES {", ".join([_AUDIT_ROW] * audit_rows)})
         AS x(owner, {_AUDIT_WRITTEN})
    WHERE x.owner IN (SELECT serial FROM u)
)"""
    return f"""WITH v(serial, version, state) AS (VALUES {", ".join([_STATE_ROW] * changes)}),
u AS (
    UPDATE tokens t SET state = v.state, version = t.version + 1
    FROM v WHERE t.serial = v.serial AND t.version = v.version
    RETURNING t.serial
){audit}
SELECT serial FROM u"""


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it hands out, so a dead one is replaced before a
    request uses it. A round trip (an empty query) only when the connection's socket has
    something to read, which an idle connection never has unless the server ended it (a
    restart, a failover, `pg_terminate_backend`: the server says FATAL and closes), or when
    it sat idle for `IDLE_CHECK_SECONDS`. Checking every connection with a round trip cost
    each verification two more, a third of its CPU (docs/benchmarks.md)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    used = getattr(conn, "_foblab_used", None)
    if poller.poll(0) or used is None or time.monotonic() - used >= IDLE_CHECK_SECONDS:
        psycopg_pool.ConnectionPool.check_connection(conn)


def _audit_values(e: AuditEvent) -> tuple[Any, ...]:
    """An audit row's values in _AUDIT_WRITTEN's order."""
    return (e.time, e.serial, e.user, e.action, e.result, e.reason, e.via, e.client, e.window,
            e.request_id)


def redact(url: str) -> str:
    """`url` without its password, for messages and repr."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host = info.get("host", "")
    where = f"{host}:{info['port']}" if info.get("port") else str(host)
    return f"postgresql://{info.get('user', '')}@{where}/{info.get('dbname', '')}"


class PostgresStore:
    """The store on a PostgreSQL database (psycopg 3, a bounded connection pool)."""

    remote = True  # every call waits on the network: the HTTP door calls it from threads

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8,
                 timeout: float = 2.0, statement_timeout_ms: int = 5000,
                 connect_timeout: int = 3, migrate: bool = True,
                 readonly: bool = False) -> None:
        self.url = url
        self.max_connections = max_size
        self._down_at: float | None = None  # monotonic time the database last failed
        self._probe_lock = threading.Lock()
        self._pinned = threading.local()  # .conn: this thread's connection inside `pinned`
        self._connect_timeout = connect_timeout
        self.readonly = readonly
        self.timeout = timeout
        options = f"-c statement_timeout={int(statement_timeout_ms)}"
        if readonly:
            options += " -c default_transaction_read_only=on"
        self._options = options
        kwargs = {"autocommit": True, "connect_timeout": connect_timeout, "options": options}
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise StoreError("the database URL cannot be parsed") from None
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=min_size, max_size=max_size, kwargs=kwargs, timeout=timeout,
            check=_check, open=False,
            name="foblab", reconnect_timeout=0)
        try:
            self._pool.open(wait=False)
            if migrate and not readonly:
                self._migrate()
            else:
                current = self.schema_version()
                if current > SCHEMA_VERSION:
                    raise StoreError(f"database schema version {current} is newer than this "
                                     f"validator's ({SCHEMA_VERSION}); upgrade foblab")
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # -- connections and schema -------------------------------------------------------

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """The calls this thread makes inside share one pooled connection: one checkout
        from the pool instead of one per call (a verification reads, then writes)."""
        if getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self._connection() as conn:
            self._pinned.conn = conn
            try:
                yield
            finally:
                self._pinned.conn = None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (this thread's inside `pinned`). Once the database has
        failed, requests fail at once (no wait for the pool's timeout each) until a direct
        probe, at most once a second, connects again."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is None and self._down_at is not None:
            self._probe()
        try:
            if pinned is not None:
                yield pinned
                return
            with self._pool.connection(timeout=self.timeout) as conn:
                yield conn
                conn._foblab_used = time.monotonic()  # type: ignore[attr-defined]
        except psycopg_pool.PoolTimeout:
            self._down_at = time.monotonic()
            raise StoreUnavailable("no database connection within "
                                   f"{self.timeout:g} s") from None
        except psycopg.OperationalError as exc:
            self._down_at = time.monotonic()
            raise StoreUnavailable(f"the database is unreachable ({type(exc).__name__})"
                                   ) from None

    def _probe(self) -> None:
        with self._probe_lock:
            if self._down_at is None:
                return
            if time.monotonic() - self._down_at < PROBE_INTERVAL:
                raise StoreUnavailable("the database is unreachable (checked less than "
                                       f"{PROBE_INTERVAL:g} s ago)")
            try:
                psycopg.connect(self.url, connect_timeout=self._connect_timeout,
                                autocommit=True).close()
            except psycopg.Error as exc:
                self._down_at = time.monotonic()
                raise StoreUnavailable(f"the database is unreachable "
                                       f"({type(exc).__name__})") from None
            self._down_at = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A write transaction, committed on exit, rolled back on an exception or when the
        body raises `_Rollback`."""
        with self._connection() as conn, conn.transaction():
            yield conn

    def _migrate(self) -> None:
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                         "(version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreError(f"database schema version {current} is newer than this "
                                 f"validator's ({SCHEMA_VERSION}); upgrade foblab")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in PG_MIGRATIONS[version]:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._connection() as conn:
            exists = conn.execute("SELECT to_regclass('schema_version')").fetchone()
            if exists is None or exists[0] is None:
                return 0
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        self._pool.close()

    # -- writes ----------------------------------------------------------------------------

    @staticmethod
    def _write(conn: psycopg.Connection[Any], events: Sequence[AuditEvent]) -> None:
        if events:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO audit ({_AUDIT_WRITTEN}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [_audit_values(e) for e in events])

    @staticmethod
    def _hold_data_keys(conn: psycopg.Connection[Any], sealed: Sequence[bytes]) -> None:
        """Lock (FOR SHARE) the data keys `sealed` were sealed under; `StaleDataKey` if a
        rotation has dropped one."""
        wanted = sorted(k.hex() for k in sealed_key_ids(sealed))
        if not wanted:
            return
        have = {row[0] for row in conn.execute(
            "SELECT id FROM data_keys WHERE id = ANY(%s) FOR SHARE", (wanted,))}
        if set(wanted) - have:
            raise StaleDataKey("sealed under a data key that a rotation has replaced")

    def insert_tokens(self, records: Sequence[TokenRecord], audit: Sequence[AuditEvent],
                      *, skip_existing: bool = False) -> list[str]:
        try:
            with self.transaction() as conn:
                self._hold_data_keys(conn, [r.sealed for r in records])
                serials = [r.serial for r in records]
                existing = {row[0] for row in conn.execute(
                    "SELECT serial FROM tokens WHERE serial = ANY(%s)", (serials,))}
                if existing and not skip_existing:
                    raise DuplicateSerial(sorted(existing))
                fresh = [r for r in records if r.serial not in existing]
                with conn.cursor() as cur:
                    cur.executemany(
                        'INSERT INTO tokens (serial, kind, "user", state, sealed, version, '
                        "created, assigned_at) VALUES (%s, %s, %s, %s, %s, 0, %s, %s)",
                        [(r.serial, r.state.kind.value, r.user, encode_state(r.state), r.sealed,
                          r.created, r.assigned_at) for r in fresh])
                inserted = {r.serial for r in fresh}
                self._write(conn, [e for e in audit
                                   if e.serial is None or e.serial in inserted])
        except psycopg.errors.UniqueViolation:  # another daemon inserted one meanwhile
            raise DuplicateSerial(sorted(
                r.serial for r in records if self.get(r.serial) is not None)) from None
        return [r.serial for r in fresh]

    def compare_and_set(self, serial: str, version: int, state: TokenState, *,
                        user: str | None | _Keep = KEEP, assigned_at: float | None = None,
                        max_devices: int | None = None,
                        audit: Sequence[AuditEvent] = ()) -> Cas:
        if isinstance(user, _Keep):  # verify's path: one statement, one round trip
            return self._set_state(serial, version, state, audit)
        with self._connection() as conn:
            with conn.transaction():
                if user is not None and max_devices is not None:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                 ("user:" + user,))
                    (held,) = conn.execute(
                        'SELECT count(*) FROM tokens WHERE "user" = %s AND serial != %s',
                        (user, serial)).fetchone() or (0,)
                    if held >= max_devices:
                        return Cas.DEVICE_LIMIT  # nothing written: the commit is empty
                cur = conn.execute(
                    'UPDATE tokens SET state = %s, "user" = %s, assigned_at = %s, '
                    "version = version + 1 WHERE serial = %s AND version = %s",
                    (encode_state(state), user, assigned_at, serial, version))
                if cur.rowcount != 1:
                    return Cas.CONFLICT
                self._write(conn, audit)
        return Cas.OK

    def _set_state(self, serial: str, version: int, state: TokenState,
                   audit: Sequence[AuditEvent]) -> Cas:
        """The compare-and-set of a state and its audit rows as one statement (atomic on
        its own in autocommit mode): the rows are inserted only if the update matched."""
        update = ("UPDATE tokens SET state = %s, version = version + 1 "
                  "WHERE serial = %s AND version = %s RETURNING 1")
        args: list[Any] = [encode_state(state), serial, version]
        with self._connection() as conn:
            if not audit:
                return Cas.OK if conn.execute(update, args).rowcount == 1 else Cas.CONFLICT
            row = f"({_AUDIT_VALUES})"
            for e in audit:
                args += _audit_values(e)
            cur = conn.execute(
                f"WITH u AS ({update}) INSERT INTO audit ({_AUDIT_WRITTEN}) "
                "SELECT v.* FROM (VALUES "
                f"{', '.join([row] * len(audit))}) AS v WHERE EXISTS (SELECT 1 FROM u)", args)
            return Cas.OK if cur.rowcount == len(audit) else Cas.CONFLICT

    def set_states(self, changes: Sequence[StateChange]) -> list[Cas]:
        """Every change's compare-and-set and audit rows in one statement, one round trip
        (atomic on its own in autocommit mode): a change's rows are inserted only if its
        update matched. The serials must differ."""
        if not changes:
            return []
        one_change_per_token(changes)
        ordered = sorted(changes, key=lambda c: c.serial)  # rows locked in one order
        args: list[Any] = []
        for c in ordered:
            args += [c.serial, c.version, encode_state(c.state)]
        rows = 0
        for c in ordered:
            for e in c.audit:
                args += [c.serial, *_audit_values(e)]
                rows += 1
        query = _set_states_sql(len(ordered), rows)
        with self._connection() as conn:
            try:
                with psycopg.RawCursor(conn) as cur:
                    won = {row[0] for row in cur.execute(query, args)}
            except psycopg.errors.DeadlockDetected:
                # Another daemon's statement held some of these rows and waited for ours:
                # PostgreSQL undid this one whole. Nothing was written, so every change
                # lost its race; the caller decides each again.
                return [Cas.CONFLICT] * len(changes)
        return [Cas.OK if c.serial in won else Cas.CONFLICT for c in changes]

    def delete(self, serial: str, version: int, audit: Sequence[AuditEvent] = ()) -> Cas:
        with self.transaction() as conn:
            cur = conn.execute("DELETE FROM tokens WHERE serial = %s AND version = %s",
                               (serial, version))
            if cur.rowcount != 1:
                return Cas.CONFLICT
            self._write(conn, audit)
        return Cas.OK

    def add_audit(self, events: Sequence[AuditEvent]) -> None:
        if events:
            with self.transaction() as conn:
                self._write(conn, events)

    def register_sealed_table(self, table: str, key_column: str, aad_prefix: str) -> None:
        if not (_IDENTIFIER.fullmatch(table) and _IDENTIFIER.fullmatch(key_column)):
            raise ValueError("table and column names must be plain identifiers")
        with self.transaction() as conn:
            conn.execute("INSERT INTO sealed_columns VALUES (%s, %s, %s) ON CONFLICT (tbl) "
                         "DO UPDATE SET key_column = EXCLUDED.key_column, "
                         "aad_prefix = EXCLUDED.aad_prefix", (table, key_column, aad_prefix))

    @staticmethod
    def _sealed_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
        tables = conn.execute("SELECT tbl, key_column, aad_prefix FROM sealed_columns "
                              "ORDER BY tbl").fetchall()
        for table, key_column, _ in tables:
            if not (_IDENTIFIER.fullmatch(table) and _IDENTIFIER.fullmatch(key_column)):
                raise StoreError(f"sealed_columns names a bad table {table!r}")
        return [(str(t), str(k), str(p)) for t, k, p in tables]

    def rotate_data_key(self, key_id: bytes, wrapped: bytes, now: float,
                        reseal: Callable[[str, bytes], bytes],
                        audit: Sequence[AuditEvent] = (),
                        before_commit: Callable[[], None] = lambda: None) -> int:
        """As `SQLiteStore.rotate_data_key`, in one transaction that first locks
        `data_keys` against every insert of a sealed secret (see the module's doc)."""
        with self.transaction() as conn:
            conn.execute("LOCK TABLE data_keys IN EXCLUSIVE MODE")
            conn.execute("INSERT INTO data_keys (id, wrapped, created, current) "
                         "VALUES (%s, %s, %s, false)", (key_id.hex(), wrapped, now))
            count = 0
            referenced: set[str] = set()
            for table, key_column, prefix in self._sealed_tables(conn):
                bump = ", version = version + 1" if table == "tokens" else ""
                rows = conn.execute(
                    f"SELECT {key_column}, sealed FROM {table} FOR UPDATE").fetchall()
                with conn.cursor() as cur:
                    cur.executemany(
                        f"UPDATE {table} SET sealed = %s{bump} WHERE {key_column} = %s",
                        [(reseal(prefix + key, bytes(sealed)), key) for key, sealed in rows])
                count += len(rows)
                referenced.update(row[0] for row in conn.execute(
                    f"SELECT DISTINCT encode(substring(sealed from 2 for 8), 'hex') "
                    f"FROM {table}"))
            referenced.add(key_id.hex())
            conn.execute("UPDATE data_keys SET current = (id = %s)", (key_id.hex(),))
            conn.execute("DELETE FROM data_keys WHERE NOT (id = ANY(%s))", (sorted(referenced),))
            self._write(conn, audit)
            before_commit()
        return count

    def rewrap_data_keys(self, rewrap: Callable[[bytes, bytes], bytes],
                         audit: Sequence[AuditEvent] = (),
                         before_commit: Callable[[], None] = lambda: None) -> int:
        with self.transaction() as conn:
            conn.execute("LOCK TABLE data_keys IN EXCLUSIVE MODE")
            rows = conn.execute("SELECT id, wrapped FROM data_keys").fetchall()
            with conn.cursor() as cur:
                cur.executemany("UPDATE data_keys SET wrapped = %s WHERE id = %s",
                                [(rewrap(bytes.fromhex(kid), bytes(wrapped)), kid)
                                 for kid, wrapped in rows])
            self._write(conn, audit)
            before_commit()
        return len(rows)

    def data_keys(self) -> list[tuple[bytes, bytes, bool]]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, wrapped, current FROM data_keys ORDER BY created, id").fetchall()
        return [(bytes.fromhex(kid), bytes(wrapped), bool(current))
                for kid, wrapped, current in rows]

    def data_key(self, key_id: bytes) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute("SELECT wrapped FROM data_keys WHERE id = %s",
                               (key_id.hex(),)).fetchone()
        return None if row is None else bytes(row[0])

    def legacy_samples(self) -> dict[bytes, tuple[str, bytes]]:
        found: dict[bytes, tuple[str, bytes]] = {}
        with self._connection() as conn:
            for table, key_column, prefix in self._sealed_tables(conn):
                for key, sealed in conn.execute(
                        f"SELECT DISTINCT ON (substring(sealed from 2 for 8)) {key_column}, "
                        f"sealed FROM {table} WHERE get_byte(sealed, 0) = 1"):
                    found.setdefault(bytes(sealed)[1:9], (prefix + key, bytes(sealed)))
        return found

    def sealed_rows(self, limit: int | None = None) -> Iterator[tuple[str, str, bytes]]:
        with self._connection() as conn:
            rows: list[tuple[str, str, bytes]] = []
            for table, key_column, prefix in self._sealed_tables(conn):
                if limit is None:
                    query = f"SELECT {key_column}, sealed FROM {table}"
                else:
                    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    every = max(1, (row[0] if row else 0) // max(1, limit))
                    query = (f"SELECT k, sealed FROM (SELECT {key_column} AS k, sealed, "
                             f"row_number() OVER (ORDER BY {key_column}) AS n FROM {table}) s "
                             f"WHERE n % {int(every)} = 0 LIMIT {int(limit)}")
                rows.extend((table, prefix + key, bytes(sealed))
                            for key, sealed in conn.execute(query))
        yield from rows

    def check(self) -> None:
        """Raise unless the database answers now: a fresh connection (a pooled one could
        wait for the pool's timeout while the server is down), which also ends the fast
        failing of `_connection` when it succeeds."""
        try:
            with psycopg.connect(self.url, connect_timeout=self._connect_timeout,
                                 autocommit=True, options=self._options) as conn:
                conn.execute("SELECT version FROM schema_version").fetchone()
                conn.execute("SELECT count(*) FROM data_keys").fetchone()
                conn.execute("SELECT serial FROM tokens LIMIT 1").fetchone()
        except psycopg.OperationalError as exc:
            self._down_at = time.monotonic()
            raise StoreUnavailable(f"the database is unreachable ({type(exc).__name__})"
                                   ) from None
        self._down_at = None

    # -- reads -----------------------------------------------------------------------------

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(query, args).fetchall()

    def get(self, serial: str) -> TokenRecord | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM tokens WHERE serial = %s", (serial,))
        return _record(rows[0]) if rows else None

    def tokens_of(self, user: str) -> list[TokenRecord]:
        return [_record(row) for row in self._rows(
            f'SELECT {_COLUMNS} FROM tokens WHERE "user" = %s '
            "ORDER BY assigned_at NULLS FIRST, serial", (user,))]

    def tokens_of_many(self, users: Sequence[str]) -> dict[str, list[TokenRecord]]:
        """`tokens_of` of each of `users`, one query per 500 users."""
        out: dict[str, list[TokenRecord]] = {user: [] for user in users}
        names = list(out)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            for row in self._rows(
                    f'SELECT {_COLUMNS} FROM tokens WHERE "user" IN '
                    f"({', '.join(['%s'] * len(chunk))}) "
                    "ORDER BY assigned_at NULLS FIRST, serial", chunk):
                out[row[3]].append(_record(row))
        return out

    def list_tokens(self, *, user: str | None = None, kind: str | None = None,
                    assigned: bool | None = None, limit: int = 100,
                    offset: int = 0) -> list[TokenRecord]:
        clause, args = _token_filter(user, kind, assigned)
        return [_record(row) for row in self._rows(
            f"SELECT {_COLUMNS} FROM tokens {clause} ORDER BY serial COLLATE \"C\" "
            "LIMIT %s OFFSET %s", (*args, int(limit), int(offset)))]

    def count_tokens(self, *, user: str | None = None, kind: str | None = None,
                     assigned: bool | None = None) -> int:
        clause, args = _token_filter(user, kind, assigned)
        return int(self._rows(f"SELECT count(*) FROM tokens {clause}", args)[0][0])

    def audit(self, *, serial: str | None = None, user: str | None = None,
              action: str | None = None, result: str | None = None,
              since: float | None = None, until: float | None = None,
              limit: int = 100, offset: int = 0,
              newest_first: bool = False, request_id: str | None = None) -> list[AuditEntry]:
        clause, args = _audit_filter(serial, user, action, result, since, until, request_id)
        order = "DESC" if newest_first else "ASC"
        return [AuditEntry(*row) for row in self._rows(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {clause} ORDER BY id {order} "
            "LIMIT %s OFFSET %s", (*args, int(limit), int(offset)))]

    def count_audit(self, *, serial: str | None = None, user: str | None = None,
                    action: str | None = None, result: str | None = None,
                    since: float | None = None, until: float | None = None,
                    request_id: str | None = None) -> int:
        clause, args = _audit_filter(serial, user, action, result, since, until, request_id)
        return int(self._rows(f"SELECT count(*) FROM audit {clause}", args)[0][0])

    def token_gauges(self, now: float) -> dict[str, int]:
        """`tokens`, `devices_enabled` (assigned) and `tokens_locked` (at `now`): one scan
        of the tokens table, no secret read."""
        total, enabled, locked = self._rows(
            'SELECT count(*), count("user"), count(*) FILTER (WHERE '
            "(state::jsonb ->> 'locked_until')::double precision > %s) FROM tokens",
            (float(now),))[0]
        return {"tokens": int(total), "devices_enabled": int(enabled),
                "tokens_locked": int(locked)}

    def audit_after(self, after: int | None, *, since: float | None = None,
                    until: float | None = None, newest_first: bool = False,
                    limit: int = 1000) -> list[AuditEntry]:
        """Up to `limit` entries past id `after` (None: from the first, or the newest), in
        id order: keyset paging, so rows deleted or added meanwhile shift nothing."""
        clause, args = _audit_filter(None, None, None, None, since, until)
        if after is not None:
            clause += (" AND " if clause else "WHERE ") + \
                ("id < %s" if newest_first else "id > %s")
            args.append(int(after))
        order = "DESC" if newest_first else "ASC"
        return [AuditEntry(*row) for row in self._rows(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {clause} ORDER BY id {order} LIMIT %s",
            (*args, int(limit)))]

    def prune_audit(self, *, before: float | None = None, keep: int | None = None,
                    batch: int = 5000) -> int:
        """Delete the entries written before `before` (Unix seconds) and all but the newest
        `keep`, in transactions of at most `batch` rows; returns how many were deleted."""
        return prune_audit_rows(self.transaction, before=before, keep=keep, batch=batch,
                                mark="%s")

    # -- copy (foblab validator copy) ------------------------------------------------------

    def dump(self) -> Iterator[tuple[str, list[str], list[tuple[Any, ...]]]]:
        with self._connection() as conn:
            for table in COPIED_TABLES:
                cur = conn.execute(f"SELECT * FROM {table} ORDER BY 1")
                names = [d.name for d in cur.description or ()]
                yield table, names, cur.fetchall()


COPIED_TABLES = ("tokens", "audit", "sealed_columns", "data_keys")


def _token_filter(user: str | None, kind: str | None,
                  assigned: bool | None) -> tuple[str, list[object]]:
    return store_token_filter(user, kind, assigned, mark="%s", user_column='"user"')


def _audit_filter(serial: str | None, user: str | None, action: str | None,
                  result: str | None, since: float | None, until: float | None,
                  request_id: str | None = None) -> tuple[str, list[object]]:
    return store_audit_filter(serial, user, action, result, since, until,
                              request_id=request_id, mark="%s", user_column='"user"')

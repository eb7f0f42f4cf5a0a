"""The AWS endpoint's own tables, beside the core's in the validator's database.

- `aws_access_keys`: long-term access keys issued by `foblab validator aws-keys`, each
  optionally bound to one user (`user`: it may then manage only that user's MFA devices).
- `aws_sessions`: temporary credentials from STS GetSessionToken (usable to sign requests
  until they expire, with their session token). `parent` is the access key that asked for
  them (deleting it revokes them); `serial` is the MFA device whose code was presented,
  NULL when none was (such a session may call no IAM action, as in AWS).
- `aws_virtual_mfa`: what AWS keeps about a virtual MFA device and the core does not (name,
  path, creation date); the device itself (seed, state, assignment) is a core token whose
  serial is the device's ARN.
- `aws_mfa_tags`: tags of MFA devices.

SigV4 needs the secret access key itself, so secrets are sealed with the core's seed box
(AES-GCM, the access key id bound in); session tokens are kept as SHA-256 digests only.
Both tables of secrets are registered in the core's `sealed_columns`, so a data-key
rotation (on any process or daemon sharing the database) reseals them with the seeds.
Tables are created IF NOT EXISTS (and columns added since added in place): the core's
schema migrations never see them.

One interface (`AwsStore`), two implementations with the same SQL and behaviour:
`SQLiteAwsStore` on the SQLite file, and `validator.aws.store_pg.PostgresAwsStore` on the
PostgreSQL store's connection pool (several daemons on one database). `open_aws_store`
picks the one that matches the validator's store.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from validator.secrets_box import SecretBox, unwrap
from validator.store import (
    Connections,
    SQLiteStore,
    StaleDataKey,
    Store,
    register_sealed_table,
    sealed_key_ids,
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aws_access_keys (
        access_key_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        created REAL NOT NULL,
        user TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS aws_sessions (
        access_key_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        token_sha256 TEXT NOT NULL,
        user TEXT,
        serial TEXT,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        parent TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS aws_sessions_expires ON aws_sessions(expires)",
    """CREATE TABLE IF NOT EXISTS aws_virtual_mfa (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS aws_mfa_tags (
        serial TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (serial, key)
    )""",
)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _aad(kind: str, access_key_id: str) -> str:
    # Bound into the AES-GCM seal; distinct from any token serial's use of the box.
    return f"aws-{kind}-secret:{access_key_id}"


def _key_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_B32) for _ in range(16))


def _secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode("ascii")  # 40 chars, like AWS


# Columns added after the first release: (table, column, declaration). Added in place on
# an older database (sessions made before `parent` existed have no parent to revoke them
# with; `aws-keys sessions --revoke` does).
_ADDED_COLUMNS = (("aws_access_keys", "user", "TEXT"), ("aws_sessions", "parent", "TEXT"))

# Every AWS table and its columns, as `foblab validator copy` moves them (the secrets
# still sealed). `user` quoted: a reserved word in PostgreSQL, a plain name in SQLite.
COPIED_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aws_access_keys", ("access_key_id", "sealed", "created", '"user"')),
    ("aws_sessions", ("access_key_id", "sealed", "token_sha256", '"user"', "serial",
                      "created", "expires", "parent")),
    ("aws_virtual_mfa", ("serial", "name", "path", "created")),
    ("aws_mfa_tags", ("serial", "key", "value", "position")),
)
# (table, key column, AAD prefix) of the tables of sealed secrets.
SEALED_TABLES = (("aws_access_keys", "access_key_id", "aws-access-key-secret:"),
                 ("aws_sessions", "access_key_id", "aws-session-secret:"))


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key_id: str
    created: float
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A secret found for an access key id; `token_sha256`/`expires` for session keys.
    `mfa`: session credentials obtained with an MFA code (always True for a long-term key,
    which is not a session). `user`: the one user the key (or the session's parent key)
    is bound to, or None for a key that may act on every user."""

    secret: str
    token_sha256: str | None = None
    expires: float | None = None
    mfa: bool = True
    user: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as `aws-keys sessions` lists it (never its secret or token)."""

    access_key_id: str
    parent: str | None
    user: str | None
    serial: str | None
    created: float
    expires: float

    @property
    def mfa(self) -> bool:
        return self.serial is not None


@dataclass(frozen=True, slots=True)
class Session:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires: float


@dataclass(frozen=True, slots=True)
class VirtualDevice:
    serial: str
    name: str
    path: str
    created: float


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class AwsStore(Protocol):
    """What the AWS endpoint, `foblab validator aws-keys` and the console need of the AWS
    tables; `SQLiteAwsStore` and `PostgresAwsStore` behave the same."""

    @property
    def box(self) -> SecretBox: ...

    def close(self) -> None: ...

    def create_key(self, now: float, user: str | None = None) -> tuple[str, str]: ...

    def list_keys(self) -> list[AccessKey]: ...

    def delete_key(self, access_key_id: str) -> int | None: ...

    def list_sessions(self, now: float) -> list[SessionInfo]: ...

    def revoke_sessions(self, access_key_ids: list[str] | None = None, *,
                        parent: str | None = None) -> int: ...

    def credentials(self, access_key_id: str) -> Credentials | None: ...

    def create_session(self, user: str | None, serial: str | None, expires: float,
                       now: float, parent: str | None = None) -> Session: ...

    def add_virtual(self, device: VirtualDevice, tags: list[tuple[str, str]]) -> None: ...

    def get_virtual(self, serial: str) -> VirtualDevice | None: ...

    def virtual_from(self, first: str | None, limit: int) -> list[VirtualDevice]: ...

    def delete_virtual(self, serial: str) -> None: ...

    def tags(self, serial: str) -> list[tuple[str, str]]: ...

    def tag(self, serial: str, tags: list[tuple[str, str]], limit: int) -> bool: ...

    def untag(self, serial: str, keys: list[str]) -> None: ...


def _create_sqlite_tables(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: the AWS tables, if missing, in the current shape."""
    for statement in _SCHEMA:
        conn.execute(statement)
    for table, column, declaration in _ADDED_COLUMNS:
        have = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    # so that Validator.rotate_key re-encrypts these secrets with the seeds
    for table, key_column, prefix in SEALED_TABLES:
        register_sealed_table(conn, table, key_column, prefix)


def create_tables(store: Store) -> None:
    """The AWS tables on the database of the validator's `store`, if missing (what
    opening an AWS store does, without a seed box: `foblab validator copy`)."""
    if isinstance(store, SQLiteStore):
        db = Connections(store.path)
        try:
            with db.transaction() as conn:
                _create_sqlite_tables(conn)
        finally:
            db.close()
        return
    from validator.aws.store_pg import create_tables as create_pg_tables
    from validator.aws.store_pg import is_postgres

    if not is_postgres(store):
        raise TypeError(f"no AWS tables for {type(store).__name__}")
    create_pg_tables(store)


def open_aws_store(store: Store, box: SecretBox | Callable[[], SecretBox]) -> AwsStore:
    """The AWS tables on the database of the validator's `store` (a SQLite file or the
    PostgreSQL store's pool). `box`: the validator's seed box, or a callable answering its
    current one (it follows a key rotation)."""
    if isinstance(store, SQLiteStore):
        return SQLiteAwsStore(store.path, box)
    from validator.aws.store_pg import PostgresAwsStore, is_postgres

    if is_postgres(store):
        return PostgresAwsStore(store, box)
    raise TypeError(f"no AWS store for {type(store).__name__}")


class _Tables:
    """The SQL of both implementations, written once: `?` placeholders (PostgreSQL's
    `_sql` turns them into `%s`) and `"user"` quoted (valid in both dialects). A subclass
    gives its connections (`_transaction`, `_reading`) and its locking (`_share`,
    `_serialize`)."""

    _share = ""  # appended to a SELECT that must hold its rows until the commit
    _bytewise = ""  # after a serial compared or sorted: bytewise, as SQLite's default is

    def __init__(self, box: SecretBox | Callable[[], SecretBox]) -> None:
        # A callable follows the validator's current box across a key rotation.
        self._box: Callable[[], SecretBox] = (lambda: box) if isinstance(box, SecretBox) else box

    @property
    def box(self) -> SecretBox:
        return self._box()

    # -- what a dialect provides ---------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _reading(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query

    def _serialize(self, conn: Any, name: str) -> None:
        """Inside a write transaction: keep other writers of `name` out until it ends (in
        SQLite the transaction holds the file's write lock already)."""

    def _x(self, conn: Any, query: str, args: Sequence[Any] = ()) -> Any:
        return conn.execute(self._sql(query), args)

    def _many(self, conn: Any, query: str, rows: Sequence[Sequence[Any]]) -> int:
        """`query` once per row; how many rows it changed in all."""
        total = 0
        for row in rows:
            total += self._x(conn, query, row).rowcount
        return total

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._reading() as conn:
            return list(self._x(conn, query, args).fetchall())

    def _seal(self, conn: Any, aad: str, secret: str) -> bytes:
        """`secret` sealed under the current data key, inside the write transaction that
        inserts it: the data key is held there (`_share`) against a rotation, and if a
        rotation by another process has dropped the key the box sealed under, the box
        follows the data key the database marks current and seals again."""
        box = self.box
        for _ in range(3):
            sealed = box.seal(aad, secret.encode())
            kids = sealed_key_ids([sealed])
            if not kids or self._x(conn, "SELECT 1 FROM data_keys WHERE id = ?" + self._share,
                                   (next(iter(kids)).hex(),)).fetchone() is not None:
                return sealed
            for kid, wrapped, current in self._x(
                    conn, "SELECT id, wrapped, current FROM data_keys").fetchall():
                if current:
                    kid = bytes.fromhex(kid)
                    box.add_data_key(kid, unwrap(box.master, kid, bytes(wrapped)),
                                     current=True)
        raise StaleDataKey("the data key keeps changing; try again")

    # -- long-term access keys ---------------------------------------------------------

    def create_key(self, now: float, user: str | None = None) -> tuple[str, str]:
        """A new access key: (access key id, secret access key). The secret is shown once.
        `user`: bind the key to that one user."""
        akid, secret = _key_id("AKIA"), _secret_key()
        # Sealed inside the write transaction, so that a key rotation (which locks the
        # data keys, or the whole file) sees this row, or this row is sealed under its
        # new key.
        with self._transaction() as conn:
            sealed = self._seal(conn, _aad("access-key", akid), secret)
            self._x(conn, 'INSERT INTO aws_access_keys (access_key_id, sealed, created, "user") '
                    "VALUES (?, ?, ?, ?)", (akid, sealed, now, user))
        return akid, secret

    def list_keys(self) -> list[AccessKey]:
        rows = self._rows('SELECT access_key_id, created, "user" FROM aws_access_keys '
                          "ORDER BY created, access_key_id")
        return [AccessKey(str(a), float(c), u) for a, c, u in rows]

    def delete_key(self, access_key_id: str) -> int | None:
        """Delete a key and revoke every session it issued, in one transaction; answers how
        many sessions were revoked, or None if there was no such key."""
        with self._transaction() as conn:
            cur = self._x(conn, "DELETE FROM aws_access_keys WHERE access_key_id = ?",
                          (access_key_id,))
            if cur.rowcount != 1:
                return None
            revoked: int = self._x(conn, "DELETE FROM aws_sessions WHERE parent = ?",
                                   (access_key_id,)).rowcount
        return revoked

    def list_sessions(self, now: float) -> list[SessionInfo]:
        """The sessions that have not expired, oldest first."""
        rows = self._rows('SELECT access_key_id, parent, "user", serial, created, expires '
                          "FROM aws_sessions WHERE expires > ? ORDER BY created, access_key_id",
                          (now,))
        return [SessionInfo(str(a), p, u, s, float(c), float(e)) for a, p, u, s, c, e in rows]

    def revoke_sessions(self, access_key_ids: list[str] | None = None, *,
                        parent: str | None = None) -> int:
        """Revoke the named sessions, or every session of `parent`, or (neither given)
        every session; answers how many were revoked."""
        with self._transaction() as conn:
            if access_key_ids is not None:
                return self._many(conn, "DELETE FROM aws_sessions WHERE access_key_id = ?",
                                  [(a,) for a in access_key_ids])
            if parent is not None:
                return int(self._x(conn, "DELETE FROM aws_sessions WHERE parent = ?",
                                   (parent,)).rowcount)
            return int(self._x(conn, "DELETE FROM aws_sessions").rowcount)

    def credentials(self, access_key_id: str) -> Credentials | None:
        """The secret of a long-term or session access key, or None if unknown."""
        with self._reading() as conn:
            row = self._x(conn, 'SELECT sealed, "user" FROM aws_access_keys '
                          "WHERE access_key_id = ?", (access_key_id,)).fetchone()
            if row is None:
                # A session whose parent key is gone is dead even if a delete raced it: the
                # join finds no parent row. Sessions from before `parent` existed have none.
                session = self._x(
                    conn, 'SELECT s.sealed, s.token_sha256, s.expires, s.serial, s.parent, '
                    'k.access_key_id, k."user" FROM aws_sessions s LEFT JOIN aws_access_keys '
                    "k ON k.access_key_id = s.parent WHERE s.access_key_id = ?",
                    (access_key_id,)).fetchone()
        if row is not None:
            secret = self.box.open(_aad("access-key", access_key_id), bytes(row[0]))
            return Credentials(secret.decode(), user=row[1])
        if session is None or (session[4] is not None and session[5] is None):
            return None
        secret = self.box.open(_aad("session", access_key_id), bytes(session[0]))
        return Credentials(secret.decode(), str(session[1]), float(session[2]),
                           mfa=session[3] is not None, user=session[6])

    # -- sessions (STS) ----------------------------------------------------------------

    def create_session(self, user: str | None, serial: str | None, expires: float,
                       now: float, parent: str | None = None) -> Session:
        """Session credentials: `serial` the MFA device whose code was presented (None: no
        MFA), `parent` the access key that asked (None only for the lab switch)."""
        akid, secret = _key_id("ASIA"), _secret_key()
        token = base64.b64encode(b"foblab-session\x00" + secrets.token_bytes(96)).decode()
        with self._transaction() as conn:  # sealed inside it: see create_key
            # The parent's row is held to the commit: a delete of the key waits, then
            # revokes this session with the others.
            if parent is not None and self._x(
                    conn, "SELECT 1 FROM aws_access_keys WHERE access_key_id = ?" + self._share,
                    (parent,)).fetchone() is None:
                raise LookupError(f"access key {parent} was deleted")
            sealed = self._seal(conn, _aad("session", akid), secret)
            self._x(conn, "DELETE FROM aws_sessions WHERE expires < ?", (now,))
            self._x(conn, 'INSERT INTO aws_sessions (access_key_id, sealed, token_sha256, '
                    '"user", serial, created, expires, parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                    (akid, sealed, token_digest(token), user, serial, now, expires, parent))
        return Session(akid, secret, token, expires)

    # -- virtual MFA devices -----------------------------------------------------------

    def add_virtual(self, device: VirtualDevice, tags: list[tuple[str, str]]) -> None:
        with self._transaction() as conn:
            self._x(conn, "INSERT INTO aws_virtual_mfa (serial, name, path, created) "
                    "VALUES (?, ?, ?, ?)",
                    (device.serial, device.name, device.path, device.created))
            self._x(conn, "DELETE FROM aws_mfa_tags WHERE serial = ?", (device.serial,))
            self._many(conn, "INSERT INTO aws_mfa_tags (serial, key, value, position) "
                       "VALUES (?, ?, ?, ?)",
                       [(device.serial, k, v, i) for i, (k, v) in enumerate(tags)])

    def get_virtual(self, serial: str) -> VirtualDevice | None:
        rows = self._rows("SELECT serial, name, path, created FROM aws_virtual_mfa "
                          "WHERE serial = ?", (serial,))
        return None if not rows else VirtualDevice(rows[0][0], rows[0][1], rows[0][2],
                                                   float(rows[0][3]))

    def virtual_from(self, first: str | None, limit: int) -> list[VirtualDevice]:
        """Up to `limit` virtual devices in serial order, from serial `first` on."""
        c = self._bytewise
        rows = self._rows(f"SELECT serial, name, path, created FROM aws_virtual_mfa WHERE "
                          f"serial{c} >= ? ORDER BY serial{c} LIMIT ?", (first or "", int(limit)))
        return [VirtualDevice(r[0], r[1], r[2], float(r[3])) for r in rows]

    def delete_virtual(self, serial: str) -> None:
        with self._transaction() as conn:
            self._x(conn, "DELETE FROM aws_virtual_mfa WHERE serial = ?", (serial,))
            self._x(conn, "DELETE FROM aws_mfa_tags WHERE serial = ?", (serial,))

    # -- tags --------------------------------------------------------------------------

    def tags(self, serial: str) -> list[tuple[str, str]]:
        rows = self._rows("SELECT key, value FROM aws_mfa_tags WHERE serial = ? "
                          "ORDER BY position, key", (serial,))
        return [(str(k), str(v)) for k, v in rows]

    def tag(self, serial: str, tags: list[tuple[str, str]], limit: int) -> bool:
        """Add or overwrite tags (keys compare case-insensitively, as IAM's do); False
        (nothing written) if the result would exceed `limit` tags."""
        with self._transaction() as conn:
            self._serialize(conn, "aws-tags:" + serial)
            existing = {str(k).lower(): str(k) for (k,) in self._x(
                conn, "SELECT key FROM aws_mfa_tags WHERE serial = ?", (serial,)).fetchall()}
            if len(existing.keys() | {k.lower() for k, _ in tags}) > limit:
                return False
            (top,) = self._x(conn, "SELECT coalesce(max(position), -1) FROM aws_mfa_tags "
                             "WHERE serial = ?", (serial,)).fetchone()
            for i, (key, value) in enumerate(tags, start=int(top) + 1):
                if key.lower() in existing:
                    self._x(conn, "UPDATE aws_mfa_tags SET key = ?, value = ? "
                            "WHERE serial = ? AND key = ?",
                            (key, value, serial, existing[key.lower()]))
                else:
                    self._x(conn, "INSERT INTO aws_mfa_tags (serial, key, value, position) "
                            "VALUES (?, ?, ?, ?)", (serial, key, value, i))
        return True

    def untag(self, serial: str, keys: list[str]) -> None:
        with self._transaction() as conn:
            self._many(conn, "DELETE FROM aws_mfa_tags WHERE serial = ? AND lower(key) = ?",
                       [(serial, k.lower()) for k in keys])


class SQLiteAwsStore(_Tables):
    """The AWS tables on the SQLite file at `db_path` (WAL, one connection per thread,
    `BEGIN IMMEDIATE` write transactions: a writer holds the whole file)."""

    def __init__(self, db_path: str | os.PathLike[str],
                 box: SecretBox | Callable[[], SecretBox], *,
                 busy_timeout_ms: int = 10_000) -> None:
        super().__init__(box)
        self.path = os.fspath(db_path)
        self._db = Connections(db_path, busy_timeout_ms=busy_timeout_ms)
        with self._db.transaction() as conn:
            _create_sqlite_tables(conn)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        yield self._db.get()

    def close(self) -> None:
        self._db.close()

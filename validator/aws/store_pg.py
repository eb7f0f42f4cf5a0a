"""`PostgresAwsStore`: the AWS endpoint's tables on the validator's PostgreSQL database.

The SQL and the behaviour are `validator.aws.store`'s (one interface, two
implementations); what PostgreSQL adds is what several daemons on one database need:

- **Connections** are the core store's (`validator.store_pg.PostgresStore`): its bounded
  pool, its timeouts, its fast failing while the database is down and its reconnection,
  so an unreachable database raises `StoreUnavailable` here too (the doors answer 503).
- **Tables** are created IF NOT EXISTS and added columns `ADD COLUMN IF NOT EXISTS`, under
  the core's migration advisory lock (daemons starting together create them once), and
  registered in `sealed_columns` so a data-key rotation on any daemon reseals them.
- **Sealing against a rotation.** An insert of a sealed secret holds the data key it was
  sealed under `FOR SHARE` until it commits: a rotation (which locks `data_keys`
  EXCLUSIVE) waits for it and then reseals the new row, or the insert waits for the
  rotation, finds its key dropped, follows the new current key and seals again.
- **Sessions die with their key.** A session insert holds its parent key's row `FOR
  SHARE`: a concurrent delete of the key waits and then revokes it with the others.
- **Tags** of one device are changed under a transaction-scoped advisory lock on its
  serial, so two daemons cannot both pass the tag limit.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeGuard

import psycopg

from validator.aws.store import _ADDED_COLUMNS, SEALED_TABLES, _Tables
from validator.secrets_box import SecretBox
from validator.store import Store
from validator.store_pg import _MIGRATION_LOCK, PostgresStore

# validator.aws.store._SCHEMA in PostgreSQL's dialect.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aws_access_keys (
        access_key_id TEXT PRIMARY KEY,
        sealed BYTEA NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        "user" TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS aws_sessions (
        access_key_id TEXT PRIMARY KEY,
        sealed BYTEA NOT NULL,
        token_sha256 TEXT NOT NULL,
        "user" TEXT,
        serial TEXT,
        created DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION NOT NULL,
        parent TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS aws_sessions_expires ON aws_sessions(expires)",
    """CREATE TABLE IF NOT EXISTS aws_virtual_mfa (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS aws_mfa_tags (
        serial TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (serial, key)
    )""",
)


def is_postgres(store: Store) -> TypeGuard[PostgresStore]:
    return isinstance(store, PostgresStore)


def create_tables(store: PostgresStore) -> None:
    """The AWS tables on `store`'s database, if missing, registered as sealed tables."""
    with store.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        for statement in _SCHEMA:
            conn.execute(statement)
        for table, column, declaration in _ADDED_COLUMNS:
            conn.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{column}" '
                         f"{declaration}")
        for table, key_column, prefix in SEALED_TABLES:
            conn.execute("INSERT INTO sealed_columns VALUES (%s, %s, %s) ON CONFLICT (tbl) "
                         "DO UPDATE SET key_column = EXCLUDED.key_column, "
                         "aad_prefix = EXCLUDED.aad_prefix", (table, key_column, prefix))


class PostgresAwsStore(_Tables):
    """The AWS tables on the database of `store`, through its connection pool (closing
    this store leaves the pool to its owner)."""

    _share = " FOR SHARE"
    _bytewise = ' COLLATE "C"'

    def __init__(self, store: PostgresStore,
                 box: SecretBox | Callable[[], SecretBox]) -> None:
        super().__init__(box)
        self.store = store
        if not store.readonly:
            create_tables(store)

    def __repr__(self) -> str:
        return f"PostgresAwsStore({self.store!r})"

    def _transaction(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self.store.transaction()

    def _reading(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self.store._connection()

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def _serialize(self, conn: Any, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))

    def close(self) -> None:
        """Nothing to close: the connections are the core store's."""

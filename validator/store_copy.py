"""`foblab validator copy`: move a whole validator between SQLite and PostgreSQL.

Tokens (with their state and assignment), the data keys (still wrapped by the master key),
the audit trail and the AWS endpoint's tables (access keys, sessions, virtual MFA devices,
tags) are copied row by row; sealed secrets are copied as they are, so the destination
opens with the same seed key file and nothing is ever decrypted here. The destination must
be empty (a fresh file, or a database with no tokens, data keys, audit rows or AWS rows);
it is migrated to the current schema first (and given the AWS tables when the source has
them). The copy is one transaction on the destination: it is there completely or not at
all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from validator.store import SQLiteStore, Store, StoreError, open_store

# (table, columns) in copy order: the data keys first (a token's sealed seed names one).
_TABLES = (
    ("data_keys", ("id", "wrapped", "created", "current")),
    ("tokens", ("serial", "kind", '"user"', "state", "sealed", "version", "created",
                "assigned_at")),
    ("audit", ("time", "serial", '"user"', "action", "result", "reason", "via", "client",
               "window_steps", "request_id")),
)
_BATCH = 1000


@contextmanager
def _transaction(store: Store) -> Iterator[tuple[Any, str]]:
    """A write transaction on either store's own connection, and its placeholder."""
    if isinstance(store, SQLiteStore):
        with store._db.transaction() as conn:
            yield conn, "?"
    else:
        with store.transaction() as conn:  # type: ignore[attr-defined]
            yield conn, "%s"


def _select(store: Store, query: str) -> Iterator[tuple[Any, ...]]:
    if isinstance(store, SQLiteStore):
        yield from store._conn().execute(query)
    else:
        with store._connection() as conn:  # type: ignore[attr-defined]
            yield from conn.execute(query).fetchall()


def _exists(store: Store, table: str) -> bool:
    if isinstance(store, SQLiteStore):
        return store._conn().execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                     "AND name = ?", (table,)).fetchone() is not None
    with store._connection() as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] is not None


def copy_database(source: str | os.PathLike[str], destination: str | os.PathLike[str]
                  ) -> dict[str, int]:
    """Copy every table of the validator (the core's and the AWS endpoint's) from
    `source` to the empty `destination` (each a SQLite path or a postgresql:// URL); how
    many rows per table."""
    if not isinstance(source, str) or "://" not in source:
        if not os.path.isfile(source):
            raise StoreError(f"no database at {source}")
    src = open_store(source, readonly=True)
    try:
        dst = open_store(destination)
        try:
            return _copy(src, dst)
        finally:
            dst.close()
    finally:
        src.close()


def _aws_tables(src: Store, dst: Store) -> list[tuple[str, tuple[str, ...]]]:
    """The AWS tables the source has (each column it lacks, from an older release, is
    read as NULL), created on the destination if missing; none without validator.aws."""
    try:
        from validator.aws.store import COPIED_TABLES, create_tables
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("validator.aws"):
            return []
        raise
    tables = [(t, c) for t, c in COPIED_TABLES if _exists(src, t)]
    if tables:
        create_tables(dst)
    return tables


def _names(store: Store, table: str) -> set[str]:
    if isinstance(store, SQLiteStore):
        return {str(r[1]) for r in store._conn().execute(f"PRAGMA table_info({table})")}
    with store._connection() as conn:  # type: ignore[attr-defined]
        cur = conn.execute(f"SELECT * FROM {table} LIMIT 0")
        return {d.name for d in cur.description or ()}


def _copy(src: Store, dst: Store) -> dict[str, int]:
    aws = _aws_tables(src, dst)
    if dst.count_tokens() or dst.data_keys() or dst.count_audit() or any(
            next(iter(_select(dst, f"SELECT count(*) FROM {t}")))[0] for t, _ in aws):
        raise StoreError("the destination already holds tokens, data keys, audit or AWS "
                         "rows; copy only into an empty database")
    counts: dict[str, int] = {}
    with _transaction(dst) as (conn, mark):
        for table, columns in [*_TABLES, *aws]:
            names = ", ".join(columns)
            have = _names(src, table)
            read = ", ".join(c if c.strip('"') in have else "NULL" for c in columns)
            rows = list(_select(src, f"SELECT {read} FROM {table} ORDER BY "
                                     f"{'id' if table == 'audit' else '1'}"))
            if table == "data_keys":  # 0/1 in SQLite, a boolean in PostgreSQL
                rows = [(*r[:3], bool(r[3]) if mark == "%s" else int(bool(r[3])))
                        for r in rows]
            rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in rows]
            statement = (f"INSERT INTO {table} ({names}) VALUES "
                         f"({', '.join([mark] * len(columns))})")
            for i in range(0, len(rows), _BATCH):
                if mark == "?":
                    conn.executemany(statement, rows[i : i + _BATCH])
                else:
                    with conn.cursor() as cur:
                        cur.executemany(statement, rows[i : i + _BATCH])
            counts[table] = len(rows)
    return counts

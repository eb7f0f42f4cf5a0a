"""The SQLite store on a real file, through its own interface: inserts and duplicates, the
compare-and-set and the device limit, listings and counts with every filter, the audit log
(filters, time bounds, paging, keyset paging, pruning), the sealed-secret registry, data
keys, schema versions and read-only opening. Written from the survivors of `make mutation`
on validator/store.py (docs/benchmarks.md)."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_h

from protocol import Kind
from validator import store as st
from validator.core import TokenState
from validator.errors import DuplicateSerial
from validator.store import (
    KEEP,
    AuditEntry,
    AuditEvent,
    Cas,
    Durability,
    SQLiteStore,
    StaleDataKey,
    StoreError,
    TokenRecord,
)

T = 1_700_000_000.0
KID = bytes.fromhex("0102030405060708")


def _sealed(kid: bytes = KID, body: bytes = b"x" * 40) -> bytes:
    return b"\x02" + kid + body


def _record(serial: str, *, user: str | None = None, kind: Kind = Kind.TOTP,
            created: float = T, assigned_at: float | None = None,
            state: TokenState | None = None) -> TokenRecord:
    return TokenRecord(serial, state or TokenState(kind=kind), _sealed(), user=user,
                       created=created, assigned_at=assigned_at)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "v.db")
    s.rotate_data_key(KID, b"wrapped", T, lambda aad, sealed: sealed)
    yield s
    s.close()


def test_a_new_file_is_at_the_current_schema_and_reopens(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "v.db", durability=Durability.FULL)
    assert s.schema_version() == st.SCHEMA_VERSION == 6
    assert repr(s) == f"SQLiteStore({str(tmp_path / 'v.db')!r}, durability=FULL)"
    assert s._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    s.close()
    again = SQLiteStore(tmp_path / "v.db", busy_timeout_ms=2_500)
    assert again.schema_version() == 6 and again.durability is Durability.NORMAL
    assert again._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert again._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 2_500
    rows = again._conn().execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(6,)]
    again.close()


def test_an_old_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (3)")
        for version in (1, 2, 3):
            for statement in st.MIGRATIONS[version]:
                conn.execute(statement)
    conn.close()
    s = SQLiteStore(path)
    assert s.schema_version() == 6
    assert s._conn().execute("SELECT version FROM schema_version").fetchall() == [(6,)]
    assert s.data_keys() == []  # the table exists now, empty
    s.close()


def test_audit_rows_from_before_request_ids_read_back_without_one(tmp_path: Path) -> None:
    """Schema 5 to 6: the audit gains request_id; the rows written before have none, and
    new rows carry theirs."""
    path = tmp_path / "v5.db"
    _old_database(path, 5)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO audit (time, action, result, serial) "
                     "VALUES (1.0, 'verify', 'ok', 'OLD1')")
    conn.close()
    s = SQLiteStore(path)
    try:
        assert s.schema_version() == 6
        s.add_audit([st.AuditEvent(2.0, "verify", "refused", serial="OLD1",
                                   request_id="r-42")])
        assert [(e.time, e.request_id) for e in s.audit()] == [(1.0, None), (2.0, "r-42")]
        assert [e.request_id for e in s.audit_after(None)] == [None, "r-42"]
    finally:
        s.close()


def _old_database(path: Path, version: int) -> None:
    """A database file left at schema `version`, with one token row."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        for v in range(1, version + 1):
            for statement in st.MIGRATIONS[v]:
                conn.execute(statement)
        conn.execute("INSERT INTO tokens (serial, kind, state, sealed, created) "
                     "VALUES ('OLD1', 'totp', '{}', ?, 0)", (_sealed(),))
    conn.close()


def test_sealed_rows_of_old_databases_opened_read_only(tmp_path: Path) -> None:
    # from before the registry of sealed tables (schema 1): the tokens table
    _old_database(tmp_path / "v1.db", 1)
    v1 = SQLiteStore(tmp_path / "v1.db", readonly=True)
    assert list(v1.sealed_rows()) == [("tokens", "OLD1", _sealed())]
    v1.close()
    # with the registry (schema 2): every table it names
    _old_database(tmp_path / "v2.db", 2)
    with sqlite3.connect(tmp_path / "v2.db") as conn:
        conn.execute("CREATE TABLE extra (name TEXT PRIMARY KEY, sealed BLOB NOT NULL)")
        st.register_sealed_table(conn, "extra", "name", "x:")
        conn.execute("INSERT INTO extra VALUES ('k1', ?)", (_sealed(),))
    conn.close()
    v2 = SQLiteStore(tmp_path / "v2.db", readonly=True)
    assert sorted(v2.sealed_rows()) == [("extra", "x:k1", _sealed()),
                                        ("tokens", "OLD1", _sealed())]
    v2.close()


def test_connections_default_to_normal_durability_and_a_10_second_busy_wait(
        tmp_path: Path) -> None:
    db = st.Connections(tmp_path / "c.db")  # as other stores on the file open it
    conn = db.get()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    db.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_connection_per_thread_closed_by_any_thread(store: SQLiteStore) -> None:
    store.insert_tokens([_record("A")], [])
    before = _open_fds()
    for _ in range(200):  # a long-running daemon's reads: no connection (file) per call
        assert store.get("A") is not None
    assert _open_fds() <= before + 1
    # a worker thread gets its own connection; close() from this thread closes it too
    worker = threading.Thread(target=lambda: store.insert_tokens([_record("B")], []))
    worker.start()
    worker.join()
    store.close()
    # and the store opens fresh connections if used again
    assert [r.serial for r in store.list_tokens()] == ["A", "B"]


def test_a_newer_schema_is_refused_read_write_and_read_only(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 7")
    conn.close()
    message = ("database schema version 7 is newer than this validator's (6); "
               "upgrade foblab")
    with pytest.raises(StoreError) as raised:
        SQLiteStore(path)
    assert str(raised.value) == message
    with pytest.raises(StoreError) as raised:
        SQLiteStore(path, readonly=True)
    assert str(raised.value) == message


def test_read_only_reads_and_never_writes(tmp_path: Path, store: SQLiteStore) -> None:
    store.insert_tokens([_record("A")], [])
    ro = SQLiteStore(store.path, readonly=True)
    try:
        assert ro.get("A") is not None and ro.schema_version() == 6
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro._conn().execute("DELETE FROM tokens")
        assert ro._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
        # a worker thread's read-only connection, closed from this thread by close()
        found: list[object] = []
        worker = threading.Thread(target=lambda: found.append(ro.get("A")))
        worker.start()
        worker.join()
        assert found and found[0] is not None
    finally:
        ro.close()
    assert store.get("A") is not None


def test_insert_get_and_duplicates(store: SQLiteStore) -> None:
    state = TokenState(kind=Kind.HOTP, digits=8, watermark=4)
    rec = TokenRecord("A", state, _sealed(), user="alice", created=T + 1, assigned_at=T + 2)
    audit = [AuditEvent(T, "import", "ok", serial="A"), AuditEvent(T, "import", "ok"),
             AuditEvent(T, "import", "ok", serial="B")]
    assert store.insert_tokens([rec], audit) == ["A"]
    got = store.get("A")
    assert got == TokenRecord("A", state, _sealed(), user="alice", version=0, created=T + 1,
                              assigned_at=T + 2)
    assert type(got.version) is int and type(got.created) is float  # type: ignore[union-attr]
    assert store.get("nope") is None
    # Only the events of rows inserted (or of none) are written.
    assert [(e.serial, e.action) for e in store.audit()] == [("A", "import"), (None, "import")]
    assert store._conn().execute("SELECT kind FROM tokens").fetchall() == [("hotp",)]
    with pytest.raises(DuplicateSerial) as raised:
        store.insert_tokens([_record("B"), _record("A")], [AuditEvent(T, "x", "ok")])
    assert raised.value.serials == ["A"]  # type: ignore[attr-defined]
    assert store.get("B") is None and store.count_audit(action="x") == 0
    assert store.insert_tokens([_record("B"), _record("A")],
                               [AuditEvent(T, "y", "ok", serial="A"),
                                AuditEvent(T, "y", "ok", serial="B")],
                               skip_existing=True) == ["B"]
    assert [e.serial for e in store.audit(action="y")] == ["B"]
    assert store.get("A") == got


def test_duplicates_are_found_beyond_the_first_chunk_of_500(store: SQLiteStore) -> None:
    # the first of the second chunk, one inside it and the very last of 1,000
    store.insert_tokens([_record(s) for s in ("S0500", "S0750", "S0999")], [])
    batch = [_record(f"S{i:04d}") for i in range(1000)]
    with pytest.raises(DuplicateSerial) as raised:
        store.insert_tokens(batch, [])
    assert raised.value.serials == ["S0500", "S0750", "S0999"]
    assert store.count_tokens() == 3
    assert len(store.insert_tokens(batch, [], skip_existing=True)) == 997
    assert store.count_tokens() == 1000


def test_a_secret_sealed_under_a_dropped_data_key_is_refused(store: SQLiteStore) -> None:
    stale = TokenRecord("A", TokenState(kind=Kind.TOTP), _sealed(bytes(8)))
    with pytest.raises(StaleDataKey, match="^sealed under a data key that a rotation has "
                       "replaced$"):
        store.insert_tokens([stale], [])
    assert store.get("A") is None
    # one stale secret in a batch of current ones: the whole batch is refused
    with pytest.raises(StaleDataKey):
        store.insert_tokens([_record("B"), stale, _record("C")], [])
    assert store.count_tokens() == 0
    legacy = TokenRecord("L", TokenState(kind=Kind.TOTP), b"\x01" + bytes(48))
    assert store.insert_tokens([legacy, _record("B")], []) == ["L", "B"]
    assert st.sealed_key_ids([_sealed(), b"\x01" + bytes(48), b"\x02" + bytes(8), b""]) == \
        {KID}


def test_compare_and_set(store: SQLiteStore) -> None:
    store.insert_tokens([_record("A")], [])
    new = TokenState(kind=Kind.TOTP, watermark=7)
    assert store.compare_and_set("A", 1, new) is Cas.CONFLICT
    assert store.compare_and_set("nope", 0, new) is Cas.CONFLICT
    ok = store.compare_and_set("A", 0, new, audit=[AuditEvent(T, "verify", "ok",
                                                              serial="A", window=3)])
    assert ok is Cas.OK
    got = store.get("A")
    assert got is not None and got.version == 1 and got.state == new and got.user is None
    assert store.compare_and_set("A", 0, new, audit=[AuditEvent(T, "lost", "ok")]) \
        is Cas.CONFLICT
    assert store.count_audit(action="lost") == 0
    [entry] = store.audit(action="verify")
    assert entry.window == 3 and entry.serial == "A"
    # An assignment and back; KEEP leaves it as it is.
    assert store.compare_and_set("A", 1, new, user="alice", assigned_at=T + 5) is Cas.OK
    got = store.get("A")
    assert got is not None and (got.user, got.assigned_at, got.version) == ("alice", T + 5, 2)
    assert store.compare_and_set("A", 2, new, user=KEEP) is Cas.OK
    got = store.get("A")
    assert got is not None and (got.user, got.assigned_at) == ("alice", T + 5)
    assert store.compare_and_set("A", 3, new, user=None) is Cas.OK
    got = store.get("A")
    assert got is not None and (got.user, got.assigned_at, got.version) == (None, None, 4)
    assert store.compare_and_set("A", 3, new, user="bob") is Cas.CONFLICT


def test_the_device_limit_counts_the_users_other_tokens(store: SQLiteStore) -> None:
    store.insert_tokens([_record("A", user="alice"), _record("B", user="alice"),
                         _record("C"), _record("D", user="bob")], [])
    state = TokenState(kind=Kind.TOTP)
    audit = [AuditEvent(T, "assign", "ok")]
    assert store.compare_and_set("C", 0, state, user="alice", max_devices=2,
                                 audit=audit) is Cas.DEVICE_LIMIT
    assert store.get("C").user is None and store.count_audit() == 0  # type: ignore[union-attr]
    # Re-assigning a token the user already holds does not count it twice.
    assert store.compare_and_set("A", 0, state, user="alice", max_devices=2) is Cas.OK
    assert store.compare_and_set("C", 0, state, user="alice", max_devices=3) is Cas.OK
    assert store.compare_and_set("C", 1, state, user=None, max_devices=0) is Cas.OK
    assert store.compare_and_set("D", 0, state, user="bob", max_devices=1) is Cas.OK


def test_delete(store: SQLiteStore) -> None:
    store.insert_tokens([_record("A")], [])
    assert store.delete("A", 1, [AuditEvent(T, "delete", "ok")]) is Cas.CONFLICT
    assert store.get("A") is not None and store.count_audit() == 0
    assert store.delete("A", 0, [AuditEvent(T, "delete", "ok", serial="A")]) is Cas.OK
    assert store.get("A") is None and store.count_audit(action="delete") == 1
    assert store.delete("A", 0) is Cas.CONFLICT


def test_listings_filters_and_counts(store: SQLiteStore) -> None:
    store.insert_tokens([
        _record("D", user="alice", kind=Kind.HOTP, assigned_at=T + 3),
        _record("B", user="alice", assigned_at=T + 1),
        _record("A", user="bob", assigned_at=T + 2),
        _record("C", kind=Kind.HOTP),
        _record("E")], [])

    def serials(**kw: object) -> list[str]:
        return [r.serial for r in store.list_tokens(**kw)]  # type: ignore[arg-type]

    assert serials() == ["A", "B", "C", "D", "E"]
    assert serials(limit=2) == ["A", "B"] and serials(limit=2, offset=3) == ["D", "E"]
    assert serials(user="alice") == ["B", "D"]
    assert serials(kind="hotp") == ["C", "D"]
    assert serials(assigned=True) == ["A", "B", "D"]
    assert serials(assigned=False) == ["C", "E"]
    assert serials(user="alice", kind="hotp") == ["D"]
    assert serials(kind="hotp", assigned=False) == ["C"]
    assert store.count_tokens() == 5
    assert store.count_tokens(user="alice") == 2
    assert store.count_tokens(kind="totp", assigned=True) == 2
    assert store.count_tokens(assigned=False) == 2
    assert [r.serial for r in store.tokens_of("alice")] == ["B", "D"]  # by assigned_at
    assert store.tokens_of("carol") == []


def test_token_gauges(store: SQLiteStore) -> None:
    locked = TokenState(kind=Kind.TOTP, failures=5, locked_until=T + 30)
    store.insert_tokens([_record("A", user="alice", state=locked), _record("B"),
                         _record("C", user="bob")], [])
    assert store.token_gauges(T) == {"tokens": 3, "devices_enabled": 2, "tokens_locked": 1}
    assert store.token_gauges(T + 30) == {"tokens": 3, "devices_enabled": 2,
                                          "tokens_locked": 0}


def _events(store: SQLiteStore) -> None:
    store.add_audit([
        AuditEvent(T + 0, "verify", "ok", serial="A", user="alice", window=3),
        AuditEvent(T + 1, "verify", "fail", reason="invalid_code", serial="A", user="alice"),
        AuditEvent(T + 2, "verify", "ok", serial="B", user="bob", via="radius",
                   client="nas1"),
        AuditEvent(T + 3, "resync", "ok", serial="A", user="alice"),
        AuditEvent(T + 4, "import", "ok"),
    ])


def test_audit_filters_time_bounds_order_and_paging(store: SQLiteStore) -> None:
    _events(store)
    everything = store.audit()
    assert [e.time for e in everything] == [T, T + 1, T + 2, T + 3, T + 4]
    assert everything[2] == AuditEntry(everything[2].id, T + 2, "verify", "ok", None, "B",
                                       "bob", "radius", "nas1", None)
    assert everything[1].reason == "invalid_code" and everything[0].window == 3
    ids = [e.id for e in everything]
    assert ids == sorted(ids)

    def times(**kw: object) -> list[float]:
        return [e.time - T for e in store.audit(**kw)]  # type: ignore[arg-type]

    assert times(serial="A") == [0, 1, 3]
    assert times(user="bob") == [2]
    assert times(action="verify", result="ok") == [0, 2]
    assert times(since=T + 1, until=T + 3) == [1, 2]  # since inclusive, until exclusive
    assert times(newest_first=True) == [4, 3, 2, 1, 0]
    assert times(limit=2, offset=1) == [1, 2]
    assert times(newest_first=True, limit=1) == [4]
    assert store.count_audit() == 5
    assert store.count_audit(serial="A", action="verify") == 2
    assert store.count_audit(since=T + 1, until=T + 3) == 2
    assert store.count_audit(user="alice", result="ok") == 2


def test_audit_after_pages_by_id(store: SQLiteStore) -> None:
    _events(store)
    ids = [e.id for e in store.audit()]
    assert [e.id for e in store.audit_after(None, limit=2)] == ids[:2]
    assert [e.id for e in store.audit_after(ids[1], limit=2)] == ids[2:4]
    assert [e.id for e in store.audit_after(ids[3])] == ids[4:]
    assert [e.id for e in store.audit_after(None, newest_first=True, limit=2)] == \
        ids[::-1][:2]
    assert [e.id for e in store.audit_after(ids[3], newest_first=True)] == ids[2::-1]
    assert [e.id for e in store.audit_after(ids[0], since=T + 2)] == ids[2:]
    assert [e.id for e in store.audit_after(ids[0], until=T + 2)] == ids[1:2]
    assert [e.id for e in store.audit_after(None, since=T + 1, until=T + 3)] == ids[1:3]
    entry = store.audit_after(ids[1], limit=1)[0]
    assert (entry.via, entry.client) == ("radius", "nas1")


def test_prune_audit_by_age_and_by_count_in_batches(store: SQLiteStore) -> None:
    store.add_audit([AuditEvent(T + i, "verify", "ok") for i in range(12)])
    assert store.prune_audit() == 0
    assert store.prune_audit(before=T + 5, batch=2) == 5
    assert [e.time - T for e in store.audit()] == list(range(5, 12))
    assert store.prune_audit(before=T + 5, batch=2) == 0
    assert store.prune_audit(keep=3, batch=2) == 4
    assert [e.time - T for e in store.audit()] == [9, 10, 11]
    assert store.prune_audit(keep=3) == 0 and store.prune_audit(keep=5) == 0
    assert store.prune_audit(before=T + 10, keep=2) == 1
    assert [e.time - T for e in store.audit()] == [10, 11]
    assert store.prune_audit(keep=0, batch=1) == 2 and store.audit() == []


def test_data_keys_rotation_and_rewrap(store: SQLiteStore) -> None:
    assert store.data_keys() == [(KID, b"wrapped", True)]
    assert store.data_key(KID) == b"wrapped" and store.data_key(bytes(8)) is None
    store.insert_tokens([_record("A"), _record("B")], [])
    new = bytes.fromhex("1112131415161718")
    seen: list[tuple[str, bytes]] = []

    def reseal(aad: str, sealed: bytes) -> bytes:
        seen.append((aad, sealed))
        return _sealed(new, aad.encode() * 20)

    marks: list[str] = []
    count = store.rotate_data_key(new, b"w2", T + 1, reseal,
                                  [AuditEvent(T + 1, "rotate_key", "ok", "data_key")],
                                  lambda: marks.append("before commit"))
    assert count == 2 and marks == ["before commit"]
    assert sorted(seen) == [("A", _sealed()), ("B", _sealed())]
    assert store.data_keys() == [(new, b"w2", True)]  # the old key: no row needs it
    a = store.get("A")
    assert a is not None and a.sealed == _sealed(new, b"A" * 20) and a.version == 1
    assert store.count_audit(action="rotate_key") == 1
    # A key some row still names is kept, not current.
    store._conn().execute("UPDATE tokens SET sealed = ? WHERE serial = 'B'", (_sealed(new),))
    third = bytes.fromhex("2122232425262728")
    store.rotate_data_key(third, b"w3", T + 2,
                          lambda aad, sealed: _sealed(third) if aad == "A" else sealed)
    assert store.data_keys() == [(new, b"w2", False), (third, b"w3", True)]
    # Rewrap: every wrapped key replaced, in one transaction.
    assert store.rewrap_data_keys(lambda kid, wrapped: kid + wrapped,
                                  [AuditEvent(T, "rotate_key", "ok", "master_key")]) == 2
    assert store.data_keys() == [(new, new + b"w2", False), (third, third + b"w3", True)]
    assert store.count_audit(action="rotate_key") == 2


def test_a_failed_rotation_changes_nothing(store: SQLiteStore) -> None:
    store.insert_tokens([_record("A")], [])

    def broken(aad: str, sealed: bytes) -> bytes:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.rotate_data_key(bytes(8), b"w", T, broken)
    assert store.data_keys() == [(KID, b"wrapped", True)] and store.get("A").version == 0  # type: ignore[union-attr]

    def late() -> None:
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        store.rewrap_data_keys(lambda kid, wrapped: b"other", [], late)
    assert store.data_keys() == [(KID, b"wrapped", True)]
    assert not store._conn().in_transaction


def test_sealed_tables_legacy_samples_and_sealed_rows(store: SQLiteStore) -> None:
    conn = store._conn()
    conn.execute("CREATE TABLE extra (name TEXT PRIMARY KEY, sealed BLOB NOT NULL)")
    st.register_sealed_table(conn, "extra", "name", "x:")
    st.register_sealed_table(conn, "extra", "name", "x:")  # idempotent
    with pytest.raises(ValueError, match="^table and column names must be plain identifiers$"):
        st.register_sealed_table(conn, "extra; drop", "name", "")
    with pytest.raises(ValueError):
        st.register_sealed_table(conn, "extra", "Name", "")
    legacy1 = b"\x01" + b"M" * 8 + b"1" * 40
    legacy2 = b"\x01" + b"N" * 8 + b"2" * 40
    conn.execute("INSERT INTO extra VALUES ('k1', ?), ('k2', ?)", (legacy1, legacy2))
    store.insert_tokens([_record(f"T{i}") for i in range(10)], [])
    conn.execute("UPDATE tokens SET sealed = ? WHERE serial = 'T3'", (legacy1,))
    samples = store.legacy_samples()
    assert set(samples) == {b"M" * 8, b"N" * 8}
    assert samples[b"N" * 8] == ("x:k2", legacy2)
    assert samples[b"M" * 8] in {("x:k1", legacy1), ("T3", legacy1)}
    rows = list(store.sealed_rows())
    assert [r for r in rows if r[0] == "extra"] == [("extra", "x:k1", legacy1),
                                                    ("extra", "x:k2", legacy2)]
    assert sorted(aad for t, aad, _ in rows if t == "tokens") == sorted(
        f"T{i}" for i in range(10))
    # A sample spreads over the table: every (total // limit)-th row, at most `limit`.
    sample = [aad for t, aad, _ in store.sealed_rows(3) if t == "tokens"]
    assert sample == ["T2", "T5", "T8"]
    assert [aad for t, aad, _ in store.sealed_rows(20) if t == "tokens"] == [
        f"T{i}" for i in range(10)]
    assert [aad for t, aad, _ in store.sealed_rows(1) if t == "extra"] == ["x:k2"]
    assert [aad for t, aad, _ in store.sealed_rows(0) if t == "extra"] == []
    # Every registered table is resealed by a rotation.
    new = bytes.fromhex("1112131415161718")
    assert store.rotate_data_key(new, b"w", T, lambda aad, sealed: _sealed(new)) == 12
    assert conn.execute("SELECT sealed FROM extra").fetchall() == [(_sealed(new),)] * 2
    # A bad name in the registry is refused, not spliced into SQL.
    conn.execute("INSERT INTO sealed_columns VALUES ('bad table', 'name', '')")
    with pytest.raises(StoreError, match="sealed_columns names a bad table 'bad table'"):
        list(store.sealed_rows())


def test_check_reads_the_file_afresh(tmp_path: Path, store: SQLiteStore) -> None:
    store.check()
    store._conn().execute("DROP TABLE data_keys")
    with pytest.raises(sqlite3.OperationalError, match="data_keys"):
        store.check()


def test_open_store_and_urls(tmp_path: Path) -> None:
    assert st.is_url("postgresql://u@h/db") and st.is_url("postgres://h/db")
    assert not st.is_url("postgresql.db") and not st.is_url(Path("postgresql://x"))
    s = st.open_store(tmp_path / "a.db")
    assert isinstance(s, SQLiteStore) and s.durability is Durability.NORMAL
    s.close()
    s = st.open_store(str(tmp_path / "b.db"), durability=Durability.FULL)
    assert isinstance(s, SQLiteStore) and s.durability is Durability.FULL
    s.close()
    ro = st.open_store(tmp_path / "b.db", readonly=True)
    assert isinstance(ro, SQLiteStore) and ro._db.readonly
    ro.close()


def test_a_database_url_without_psycopg_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "validator.store_pg", None)  # as if psycopg were absent
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"^a postgresql:// database needs psycopg: pip "
                       r"install 'foblab\[postgresql\]' \(.+\)$"):
        st.open_store("postgresql://127.0.0.1:1/foblab")
    assert list(tmp_path.iterdir()) == []  # never taken for a SQLite file name


def test_a_transaction_rolls_back_on_error_and_commits_otherwise(store: SQLiteStore) -> None:
    with pytest.raises(RuntimeError):
        with store._db.transaction() as conn:
            conn.execute("INSERT INTO audit (time, action, result) VALUES (1, 'a', 'ok')")
            raise RuntimeError
    assert store.count_audit() == 0 and not store._conn().in_transaction
    with store._db.transaction() as conn:
        conn.execute("INSERT INTO audit (time, action, result) VALUES (1, 'a', 'ok')")
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT count(*) FROM audit").fetchone() == (1,)
    other.close()


def test_audit_pages_default_to_100_and_keyset_pages_to_1000(store: SQLiteStore) -> None:
    store.add_audit([AuditEvent(T + i, "verify", "ok") for i in range(1001)])
    assert len(store.audit()) == 100
    page = store.audit_after(None)
    assert len(page) == 1000 and page[-1].time == T + 999
    assert len(store.list_tokens()) == 0
    store.insert_tokens([_record(f"S{i:03d}") for i in range(101)], [])
    assert len(store.list_tokens()) == 100


@given(drifts=st_h.lists(st_h.floats(min_value=-400, max_value=400), min_size=1,
                         max_size=12),
       gap=st_h.floats(min_value=31, max_value=86_400 * 90))
@settings(max_examples=60, deadline=None)
def test_a_drifted_state_is_stored_and_read_back_exactly(drifts: list[float],
                                                         gap: float) -> None:
    """`encode_state` (orjson) keeps every float of a drifted token's state exactly, writes
    JSON the json module reads to the same values, and reads what the json module wrote
    (the stores' rows from before)."""
    import json

    from validator import core
    from validator.otp import hotp

    key = bytes(range(20))
    t = 1_700_000_000.0
    s = int(t // 30)
    state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1),
                              hotp(key, s), t).state
    for drift in drifts:  # the token's clock off by `drift` seconds, `gap` later each time
        t += gap
        state = core.verify(state, key, hotp(key, int((t + drift) // 30)), t).state
    text = st.encode_state(state)
    assert st.decode_state(text) == state
    assert json.loads(text) == state.to_json()
    old = json.dumps(state.to_json(), separators=(",", ":"))
    assert st.decode_state(old) == state

"""Envelope keys, in-process: the box's formats, what a moved or tampered secret does, the
data keys in the store, the health sample and the offline check."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from pg import Database  # type: ignore[import-not-found]

from validator import keys
from validator.secrets_box import (
    KeyFileError,
    SealError,
    SecretBox,
    key_id,
    new_data_key,
    read_key,
    unwrap,
    wrap,
    write_key_atomically,
)
from validator.service import Validator
from validator.store import SQLiteStore

T0 = 1_700_000_000.0
SEED_A = bytes.fromhex("00112233445566778899aabbccddeeff00112233")
SEED_B = bytes.fromhex("ffeeddccbbaa99887766554433221100ffeeddcc")


def _box() -> SecretBox:
    box = SecretBox(os.urandom(32))
    kid, data_key = new_data_key()
    box.add_data_key(kid, data_key, current=True)
    return box


def test_seal_binds_the_serial_and_the_format() -> None:
    box = _box()
    sealed = box.seal("TOK1", SEED_A)
    assert sealed[0] == 2 and sealed[1:9].hex() == box.data_key_id
    assert len(sealed) == 1 + 8 + 12 + len(SEED_A) + 16
    assert box.open("TOK1", sealed) == SEED_A
    assert box.seal("TOK1", SEED_A) != sealed  # a fresh nonce each time
    with pytest.raises(SealError, match="does not authenticate"):
        box.open("TOK2", sealed)
    for bad in (b"\x03" + sealed[1:], sealed[:36], b""):
        with pytest.raises(SealError, match="unknown format"):
            box.open("TOK1", bad)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError, match="does not authenticate"):
        box.open("TOK1", flipped)
    other = _box()
    with pytest.raises(SealError, match="does not hold"):
        other.open("TOK1", sealed)


def test_a_sealed_seed_moved_to_another_serials_row_does_not_open(db_path: Path) -> None:
    """In the database file itself: token B's row given token A's sealed seed."""
    v = Validator.open(db_path)
    v.register_token("GAHT00000001", SEED_A, now=T0)
    v.register_token("GAHT00000002", SEED_B, now=T0)
    v.close()
    with sqlite3.connect(db_path) as conn:
        (sealed_a,) = conn.execute(
            "SELECT sealed FROM tokens WHERE serial = 'GAHT00000001'").fetchone()
        conn.execute("UPDATE tokens SET sealed = ? WHERE serial = 'GAHT00000002'", (sealed_a,))
    conn.close()
    v = Validator.open(db_path)
    try:
        record = v.store.get("GAHT00000002")
        assert record is not None
        with pytest.raises(SealError):
            v.box.open("GAHT00000002", record.sealed)
        # The health sample and the full check both see it.
        assert v.check_keys() is not None and "do not open" in v.health()  # type: ignore[operator]
        result = keys.check(v.store, v.box)
        assert (result.total_opened, result.total_failed) == (1, 1)
    finally:
        v.close()


def test_wrap_binds_the_data_key_id() -> None:
    master = os.urandom(32)
    kid, data_key = new_data_key()
    wrapped = wrap(master, kid, data_key)
    assert unwrap(master, kid, wrapped) == data_key
    with pytest.raises(SealError):
        unwrap(master, os.urandom(8), wrapped)
    with pytest.raises(SealError):
        unwrap(os.urandom(32), kid, wrapped)
    with pytest.raises(SealError, match="unknown format"):
        unwrap(master, kid, wrapped[:-1])
    with pytest.raises(SealError, match="unknown format"):
        unwrap(master, kid, b"\x01" + wrapped[1:])


def test_a_box_fetches_a_data_key_another_process_made(database: Database) -> None:
    """Two validators on one database (as two daemons would be): a data-key rotation on one
    and the other opens the resealed rows, fetching the new key from the store."""
    first = database.open()
    first.register_token("TOK1", SEED_A, now=T0)
    second = database.open(create_key=False)
    try:
        first.rotate_key(now=T0)
        record = second.store.get("TOK1")
        assert record is not None and record.sealed[1:9].hex() == first.box.data_key_id
        assert second.box.open("TOK1", record.sealed) == SEED_A
    finally:
        first.close()
        second.close()


def test_data_keys_in_the_store(database: Database) -> None:
    v = database.open()
    try:
        v.register_token("TOK1", SEED_A, now=T0)
        [(kid, wrapped, current)] = v.store.data_keys()
        assert current and kid.hex() == v.box.data_key_id
        master = read_key(database.key_file)
        assert len(wrapped) == 1 + 12 + 32 + 16 and unwrap(master, kid, wrapped)
        assert v.store.data_key(kid) == wrapped and v.store.data_key(b"\0" * 8) is None
        assert v.rotate_key(now=T0) == 1
        [(new, _, current)] = v.store.data_keys()  # the old one went: no row needs it
        assert current and new != kid and new.hex() == v.box.data_key_id
        # Secrets sealed before the rotation, in memory, still open: the box keeps it.
        assert v.box.open("TOK1", v.box.seal("TOK1", SEED_A, kid)) == SEED_A
        # A new secret is sealed under the new data key.
        v.register_token("TOK2", SEED_B, now=T0)
        record = v.store.get("TOK2")
        assert record is not None and record.sealed[1:9] == new
        assert [e.reason for e in v.audit(action="rotate_key")] == ["data_key"]
    finally:
        v.close()


def test_a_failed_reseal_changes_nothing(db_path: Path) -> None:
    v = Validator.open(db_path)
    try:
        v.register_token("TOK1", SEED_A, now=T0)
        v.register_token("TOK2", SEED_B, now=T0)
        with v.store._db.transaction() as conn:  # one row that no key opens
            conn.execute("UPDATE tokens SET sealed = ? WHERE serial = 'TOK2'",
                         (b"\x02" + bytes(8) + bytes(40),))
        before = v.store.data_keys()
        current = v.box.data_key_id
        with pytest.raises(SealError):
            v.rotate_key(now=T0)
        assert v.store.data_keys() == before and v.box.data_key_id == current
        assert v.key_problem is not None  # checked again after the rotation
        record = v.store.get("TOK1")
        assert record is not None and v.box.open("TOK1", record.sealed) == SEED_A
        v.register_token("TOK3", SEED_A, now=T0)  # sealed under the old, still stored, key
        assert v.store.get("TOK3").sealed[1:9].hex() == current  # type: ignore[union-attr]
    finally:
        v.close()


def test_a_failed_master_rotation_leaves_a_key_file_that_the_next_open_removes(
        db_path: Path) -> None:
    v = Validator.open(db_path)
    key_file = Path(f"{db_path}.key")
    v.register_token("TOK1", SEED_A, now=T0)
    old = key_file.read_bytes()

    def broken(*args: object, **kwargs: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    v.store.rewrap_data_keys = broken  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        v.rotate_key(now=T0, master=True)
    v.close()
    assert key_file.read_bytes() == old and key_file.with_name(key_file.name + ".next").exists()
    v = Validator.open(db_path, create_key=False)
    try:
        assert not key_file.with_name(key_file.name + ".next").exists()
        assert v.box.open("TOK1", v.store.get("TOK1").sealed) == SEED_A  # type: ignore[union-attr]
    finally:
        v.close()


def test_key_files_are_written_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = os.urandom(32)
    write_key_atomically(path, key)
    assert read_key(path) == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "k.tmp").exists()
    (tmp_path / "k.tmp").write_bytes(b"half")  # a leftover of an interrupted write
    write_key_atomically(path, os.urandom(32))
    assert read_key(path) != key and not (tmp_path / "k.tmp").exists()
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        read_key(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"zz" * 32)
    with pytest.raises(KeyFileError, match="hex"):
        read_key(path)
    path.write_bytes(b"00" * 31)
    with pytest.raises(KeyFileError, match="32 bytes"):
        read_key(path)


def test_open_refuses_a_missing_key_file_rather_than_inventing_one(database: Database) -> None:
    v = database.open()
    v.register_token("TOK1", SEED_A, now=T0)
    v.close()
    key_file = database.key_file
    key_file.rename(key_file.with_name("moved"))
    with pytest.raises(KeyFileError, match="does not exist, and the database's secrets"):
        database.open()
    # A key file that opens nothing, and the right key only in a file no rotation step
    # would have left it in: what opens the rows decides, not the names.
    right = key_file.with_name("moved").read_bytes()
    tmp = key_file.with_name(key_file.name + ".next.tmp")
    key_file.with_name("moved").rename(tmp)
    key_file.write_bytes(b"55" * 32 + b"\n")
    os.chmod(key_file, 0o600)
    v = database.open(create_key=False)
    v.close()
    assert key_file.read_bytes() == right and not tmp.exists()


def test_check_reads_without_writing(db_path: Path) -> None:
    v = Validator.open(db_path)
    v.register_token("TOK1", SEED_A, now=T0)
    v.close()
    key_file = Path(f"{db_path}.key")
    pending = key_file.with_name(key_file.name + ".next")
    pending.write_bytes(b"44" * 32 + b"\n")  # as a rotation under way beside it would
    os.chmod(pending, 0o600)
    store = SQLiteStore(db_path, readonly=True)
    try:
        box = keys.open_box(store, key_file, settle=False)
        result = keys.check(store, box)
        assert result.ok and result.opened == {"tokens": 1} and result.data_keys == 1
        with pytest.raises(sqlite3.OperationalError):
            store._conn().execute("DELETE FROM tokens")
    finally:
        store.close()
    assert pending.exists()  # a check never settles


def test_a_master_rotation_rewraps_every_data_key_and_swaps_the_file(
        database: Database) -> None:
    v = database.open()
    key_file = database.key_file
    try:
        v.register_token("TOK1", SEED_A, now=T0)
        old = read_key(key_file)
        stored = v.store.data_keys()
        assert keys.rotate_master_key(v.store, v.box, T0) == len(stored) == 1
        new = read_key(key_file)
        assert new != old and v.box.master == new
        assert sorted(key_file.parent.glob(key_file.name + ".*")) == []  # no .next left
        [(kid, wrapped, current)] = v.store.data_keys()
        assert current and kid == stored[0][0]
        assert unwrap(new, kid, wrapped) == unwrap(old, kid, stored[0][1])
        with pytest.raises(SealError):
            unwrap(old, kid, wrapped)
        assert [(e.time, e.result, e.reason) for e in v.audit(action="rotate_key")] == [
            (T0, "ok", "master_key")]
        assert v.box.open("TOK1", v.store.get("TOK1").sealed) == SEED_A
    finally:
        v.close()
    again = database.open(create_key=False)  # what a restart reads: the new file
    try:
        assert again.box.master == new
        assert again.box.open("TOK1", again.store.get("TOK1").sealed) == SEED_A
    finally:
        again.close()


@pytest.mark.parametrize("leftover", [".next", ".next.tmp"])
def test_a_master_rotation_refuses_while_an_interrupted_one_holds_the_rows(
        database: Database, leftover: str) -> None:
    """A rotation that committed under the pending key file and stopped before the swap
    (the process died): the next rotation must not overwrite that file, which alone opens
    the data keys now. A restart finishes the first (open_box)."""
    v = database.open()
    key_file = database.key_file
    try:
        v.register_token("TOK1", SEED_A, now=T0)
        old, pending = read_key(key_file), os.urandom(32)
        pending_file = key_file.with_name(key_file.name + leftover)
        write_key_atomically(pending_file, pending)
        v.store.rewrap_data_keys(lambda kid, wrapped: wrap(pending, kid,
                                                           unwrap(old, kid, wrapped)))
        with pytest.raises(keys.KeyRecoveryError) as exc:
            keys.rotate_master_key(v.store, v.box, T0)
        assert str(exc.value) == (f"{key_file.with_name(key_file.name + '.next')} opens "
                                  "stored data keys: restart the validator to finish the "
                                  "interrupted rotation first")
        assert read_key(pending_file) == pending and read_key(key_file) == old
        assert v.audit(action="rotate_key") == []
    finally:
        v.close()
    again = database.open(create_key=False)  # the restart: the pending file becomes the key
    try:
        assert read_key(key_file) == pending and not pending_file.exists()
        assert again.box.open("TOK1", again.store.get("TOK1").sealed) == SEED_A
    finally:
        again.close()


def test_a_box_without_a_key_file_cannot_rotate_its_master(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        with pytest.raises(KeyFileError, match="^this box has no key file$"):
            keys.rotate_master_key(store, _box(), T0)
    finally:
        store.close()


def test_what_opens_no_data_key_is_refused_with_what_was_tried(database: Database) -> None:
    """No key file opens a stored data key: refused, naming the key, every file tried and
    why an unreadable one was not, and nothing changed; a master rotation says the same."""
    v = database.open()
    key_file = database.key_file
    v.register_token("TOK1", SEED_A, now=T0)
    [(kid, _, _)] = v.store.data_keys()
    right = key_file.read_bytes()
    try:
        write_key_atomically(key_file, os.urandom(32))  # a wrong key where the right one was
        pending = key_file.with_name(key_file.name + ".next")
        pending.write_bytes(b"66" * 32 + b"\n")
        os.chmod(pending, 0o644)  # unreadable for us: readable by others
        for attempt in (lambda: keys.open_box(v.store, key_file),
                        lambda: keys.rotate_master_key(v.store, SecretBox(
                            read_key(key_file), path=key_file), T0)):
            wrong = key_file.read_bytes()
            with pytest.raises(keys.KeyRecoveryError) as exc:
                attempt()
            message = str(exc.value)
            assert message.startswith(f"no key file opens data key {kid.hex()} (key files "
                                      f"tried: {key_file.name}; ")
            assert "readable by others" in message
            assert message.endswith("nothing was changed: restore the key file the "
                                    f"database was sealed with to {key_file}")
            assert key_file.read_bytes() == wrong and pending.read_bytes() == b"66" * 32 + b"\n"
        key_file.unlink()  # only the unreadable file left: none tried
        with pytest.raises(keys.KeyRecoveryError, match=r"\(key files tried: none; "):
            keys.open_box(v.store, key_file)
        pending.unlink()  # no file at all
        with pytest.raises(KeyFileError, match="does not exist, and the database's secrets"):
            keys.open_box(v.store, key_file)
    finally:
        key_file.write_bytes(right)
        os.chmod(key_file, 0o600)
        v.close()


def test_a_refusal_names_at_most_three_missing_keys(tmp_path: Path) -> None:
    found = keys._Found(missing=[f"data key {i}" for i in range(5)])
    message = str(keys._refuse(found, tmp_path / "seed.key"))
    assert "data key 0, data key 1, data key 2 (key files tried: none)" in message
    assert "data key 3" not in message


def _one_token(database: Database) -> tuple[Path, bytes]:
    """`database` with one token in it, closed; its key file and the file's bytes."""
    v = database.open()
    v.register_token("TOK1", SEED_A, now=T0)
    v.close()
    return database.key_file, database.key_file.read_bytes()


def test_an_unreadable_key_file_in_place_is_refused_with_its_reason(
        database: Database) -> None:
    """The data keys open under the pending file, but the key file itself cannot be read:
    refused with the reason, rather than a silent switch to the other file."""
    key_file, right = _one_token(database)
    pending = key_file.with_name(key_file.name + ".next")
    pending.write_bytes(right)
    os.chmod(pending, 0o600)
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="readable by others") as exc:
        database.open(create_key=False)
    assert not isinstance(exc.value, keys.KeyRecoveryError)
    assert key_file.read_bytes() == right and pending.exists()


def test_a_box_follows_the_data_key_another_process_made_current(
        database: Database) -> None:
    """Two validators on one database: after a rotation on the first, the second, once it
    follows the store's current key, seals new secrets under that key, not its old one."""
    first = database.open()
    first.register_token("TOK1", SEED_A, now=T0)
    second = database.open(create_key=False)
    try:
        before = second.box.data_key_id
        first.rotate_key(now=T0)
        assert second.box.data_key_id == before != first.box.data_key_id
        keys.follow_current(second.store, second.box)
        assert second.box.data_key_id == first.box.data_key_id
        sealed = second.box.seal("TOK2", SEED_B)
        assert sealed[1:9].hex() == first.box.data_key_id
        assert first.box.open("TOK2", sealed) == SEED_B
    finally:
        first.close()
        second.close()


def test_a_rewrap_committed_in_part_is_finished_under_the_newest_key(db_path: Path) -> None:
    """Should the data keys ever be wrapped under two key files (one rewrap cannot commit
    in part, but open_box does not count on it), start-up re-wraps the stray ones under
    the newest file's key, which becomes the key file; everything opens under it."""
    v = Validator.open(db_path)
    key_file = Path(f"{db_path}.key")
    v.register_token("TOK1", SEED_A, now=T0)
    v.close()
    store = SQLiteStore(db_path)
    try:
        old, newest = read_key(key_file), os.urandom(32)
        [(first, _, _)] = store.data_keys()
        second, data_key = new_data_key()  # a second data key, the rows left under the first
        store.rotate_data_key(second, wrap(old, second, data_key), T0,
                              lambda aad, sealed: sealed, [], lambda: None)
        store.rewrap_data_keys(lambda kid, wrapped: wrap(newest, kid, unwrap(old, kid, wrapped))
                               if kid == second else wrapped)
        pending = key_file.with_name(key_file.name + ".next")
        write_key_atomically(pending, newest)
        box = keys.open_box(store, key_file, now=T0 + 5)  # settle, by default
        assert box.master == newest and read_key(key_file) == newest
        assert not pending.exists()
        wrapped = {kid: w for kid, w, _ in store.data_keys()}
        assert set(wrapped) == {first, second}
        assert unwrap(newest, second, wrapped[second]) == data_key
        unwrap(newest, first, wrapped[first])  # re-wrapped: opens under the newest key
        with pytest.raises(SealError):
            unwrap(old, first, wrapped[first])
        assert [(e.time, e.result, e.reason) for e in store.audit(action="recover_keys")] \
            == [(T0 + 5, "ok", "rewrapped")]
        assert box.open("TOK1", store.get("TOK1").sealed) == SEED_A  # type: ignore[union-attr]
    finally:
        store.close()


def test_open_box_by_default_makes_no_key_file(db_path: Path) -> None:
    key_file = Path(f"{db_path}.key")
    store = SQLiteStore(db_path)
    try:
        for kwargs in ({}, {"settle": False, "create": True}):  # a check makes none either
            with pytest.raises(KeyFileError, match=f"^seed key file {key_file} does not "
                                                   "exist$"):
                keys.open_box(store, key_file, **kwargs)
            assert not key_file.exists()
        box = keys.open_box(store, key_file, create=True)
        assert read_key(key_file) == box.master and box.data_key_id is not None
    finally:
        store.close()


def test_a_refusal_lists_every_file_tried_and_every_reason(database: Database) -> None:
    key_file, right = _one_token(database)
    pending = key_file.with_name(key_file.name + ".next")
    tmp = key_file.with_name(key_file.name + ".next.tmp")

    def why_unreadable(path: Path) -> str:
        os.chmod(path, 0o644)
        with pytest.raises(KeyFileError) as exc:
            read_key(path)
        return str(exc.value)

    def refusal() -> str:
        with pytest.raises(keys.KeyRecoveryError) as refused:
            database.open(create_key=False)
        return str(refused.value)

    try:
        for path in (key_file, pending, tmp):
            write_key_atomically(path, os.urandom(32))  # keys that open nothing
        first = why_unreadable(pending)
        assert f"(key files tried: {key_file.name}, {tmp.name}; {first}); " in refusal()
        second = why_unreadable(tmp)
        assert f"(key files tried: {key_file.name}; {first}; {second}); " in refusal()
    finally:
        for path in (pending, tmp):
            path.unlink(missing_ok=True)
        key_file.write_bytes(right)
        os.chmod(key_file, 0o600)


def test_legacy_secrets_open_in_a_check_and_are_named_when_no_file_opens_them(
        tmp_path: Path) -> None:
    """A database from before envelope keys (secrets sealed under the key file's own key):
    a check beside it (no settling) opens them; with that key gone, the refusal names the
    key they are sealed under."""
    from test_key_crash import _legacy

    db, key, plain = _legacy(tmp_path / "v")
    store = SQLiteStore(db, readonly=True)
    try:
        box = keys.open_box(store, key, settle=False)
        assert {aad: box.open(aad, sealed) for _, aad, sealed in store.sealed_rows()} == plain
        master = read_key(key)
        write_key_atomically(key, os.urandom(32))
        with pytest.raises(keys.KeyRecoveryError,
                           match="no key file opens secrets sealed under master key "
                                 f"{key_id(master).hex()} "):
            keys.open_box(store, key, settle=False)
    finally:
        store.close()
    write_key_atomically(key, master)  # the right key back: the first settling open migrates
    store = SQLiteStore(db)
    try:
        box = keys.open_box(store, key, now=T0)
        rows = list(store.sealed_rows())
        assert {sealed[0] for _, _, sealed in rows} == {2}  # under a data key now
        assert {aad: box.open(aad, sealed) for _, aad, sealed in rows} == plain
        assert [(e.time, e.result, e.reason) for e in store.audit(action="rotate_key")] == [
            (T0, "ok", "migrated")]
    finally:
        store.close()


def test_the_health_sample_counts_what_it_read_and_names_a_failure(db_path: Path) -> None:
    v = Validator.open(db_path)
    try:
        for i in range(6):
            v.register_token(f"TOK{i}", SEED_A, now=T0)
        assert keys.spot_check(v.store, v.box) is None
        with v.store._db.transaction() as conn:  # one secret that no key opens
            conn.execute("UPDATE tokens SET sealed = ? WHERE serial = 'TOK3'",
                         (b"\x02" + bytes(8) + bytes(40),))
        assert keys.spot_check(v.store, v.box) == (
            "1 of 6 sampled sealed secrets do not open under the key file's key")
        with v.store._db.transaction() as conn:  # now none opens
            conn.execute("UPDATE tokens SET sealed = ?", (b"\x02" + bytes(8) + bytes(40),))
        assert keys.spot_check(v.store, v.box, sample=2) == (
            "2 of 2 sampled sealed secrets do not open under the key file's key")
        for i in range(6, 40):
            v.register_token(f"TOK{i}", SEED_A, now=T0)
        assert keys.spot_check(v.store, v.box) == (  # 32 of a table by default
            "6 of 32 sampled sealed secrets do not open under the key file's key")
        with v.store._db.transaction() as conn:  # where the sealed columns are: gone
            conn.execute("DROP TABLE sealed_columns")
        # a store that cannot be read: the error's type, never a traceback or its text
        assert keys.spot_check(v.store, v.box) == (
            "the sealed secrets cannot be read: OperationalError")
    finally:
        v.close()


def test_a_rotation_whose_commit_fails_keeps_sealing_under_the_old_key(db_path: Path) -> None:
    """The new data key is switched in just before the commit; if the commit then fails,
    the box goes back to the old key, which is the one still stored."""
    v = Validator.open(db_path)
    try:
        v.register_token("TOK1", SEED_A, now=T0)
        current, stored = v.box.data_key_id, v.store.data_keys()
        real = v.store.rotate_data_key

        def commit_fails(key_id: bytes, wrapped: bytes, now: float, reseal: Any,
                         audit: Any = (), before_commit: Any = lambda: None) -> int:
            def switched_then_failed() -> None:
                before_commit()
                raise sqlite3.OperationalError("disk I/O error")
            return real(key_id, wrapped, now, reseal, audit, switched_then_failed)

        v.store.rotate_data_key = commit_fails  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            v.rotate_key(now=T0)
        assert v.box.data_key_id == current and v.store.data_keys() == stored
        v.register_token("TOK2", SEED_B, now=T0)
        assert v.store.get("TOK2").sealed[1:9].hex() == current  # type: ignore[union-attr]
        v.store.rotate_data_key = real  # type: ignore[method-assign]
        assert v.rotate_key(now=T0 + 1) == 2
        assert [(e.time, e.result, e.reason) for e in v.audit(action="rotate_key")] == [
            (T0 + 1, "ok", "data_key")]
    finally:
        v.close()


def test_a_reseal_leaves_what_is_already_under_the_new_key_as_it_is() -> None:
    box = _box()
    kid, data_key = new_data_key()
    box.add_data_key(kid, data_key)
    under_old = box.seal("TOK1", SEED_A)
    under_new = box.seal("TOK1", SEED_A, kid)
    assert keys._reseal(box, kid, "TOK1", under_new) is under_new
    moved = keys._reseal(box, kid, "TOK1", under_old)
    assert moved[0] == 2 and moved[1:9] == kid and box.open("TOK1", moved) == SEED_A


def test_check_counts_every_secret_and_names_the_first_five_failures(db_path: Path) -> None:
    v = Validator.open(db_path)
    try:
        for i in range(9):
            v.register_token(f"TOK{i}", SEED_A, now=T0)
        with v.store._db.transaction() as conn:  # seven that no key opens
            conn.execute("UPDATE tokens SET sealed = ? WHERE serial > 'TOK1'",
                         (b"\x02" + bytes(8) + bytes(40),))
        result = keys.check(v.store, v.box)
        assert (result.opened, result.failed) == ({"tokens": 2}, {"tokens": 7})
        assert not result.ok and result.data_keys == 1
        assert len(result.examples) == 5
        assert all(e.startswith("tokens: ") and "TOK" in e for e in result.examples)
        sampled = keys.check(v.store, v.box, sample=3)
        assert sum(sampled.opened.values()) + sum(sampled.failed.values()) == 3
    finally:
        v.close()

"""The AWS store's contract (`validator.aws.store.AwsStore`) on both implementations: the
SQLite file and a fresh PostgreSQL database on the session's server (tests/pg.py), each
opened as the daemon opens it (`open_aws_store` over the validator's own store)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from validator.aws.store import (
    AwsStore,
    SQLiteAwsStore,
    VirtualDevice,
    open_aws_store,
    token_digest,
)
from validator.secrets_box import SealError
from validator.service import Validator

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "v.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def validator(target: str | Path, tmp_path: Path) -> Iterator[Validator]:
    v = Validator.open(target, tmp_path / "seed.key")
    yield v
    v.close()


@pytest.fixture
def store(validator: Validator) -> Iterator[AwsStore]:
    s = open_aws_store(validator.store, lambda: validator.box)
    yield s
    s.close()


def test_the_factory_picks_the_validator_s_database(store: AwsStore, target: str | Path,
                                                    validator: Validator) -> None:
    if isinstance(target, str):
        from validator.aws.store_pg import PostgresAwsStore

        assert isinstance(store, PostgresAwsStore)
    else:
        assert isinstance(store, SQLiteAwsStore)
    # the secret tables are registered for key rotation in that database's own registry
    tables = {table for table, _, _ in validator.store.sealed_rows()}
    store.create_key(T0)
    tables = {table for table, _, _ in validator.store.sealed_rows()} - tables
    assert tables == {"aws_access_keys"}


def test_access_keys_open_list_bind_and_delete(store: AwsStore) -> None:
    a, secret_a = store.create_key(T0)
    b, secret_b = store.create_key(T0 + 1, user="alice")
    assert a.startswith("AKIA") and len(a) == 20 and len(secret_a) == 40
    assert [(k.access_key_id, k.created, k.user) for k in store.list_keys()] == [
        (a, T0, None), (b, T0 + 1, "alice")]
    found = store.credentials(b)
    assert found is not None and found.secret == secret_b and found.user == "alice"
    assert found.token_sha256 is None and found.mfa
    assert store.credentials("AKIANOSUCHKEY0000000") is None
    assert store.delete_key(a) == 0 and store.delete_key(a) is None
    assert store.credentials(a) is None
    assert [k.access_key_id for k in store.list_keys()] == [b]


def test_sessions_carry_their_token_digest_mfa_and_parent_user(store: AwsStore) -> None:
    parent, _ = store.create_key(T0, user="bob")
    plain = store.create_session("bob", None, T0 + 900, T0, parent=parent)
    mfa = store.create_session("bob", "arn:aws:iam::123456789012:mfa/bob", T0 + 900, T0 + 1,
                               parent=parent)
    c = store.credentials(plain.access_key_id)
    assert c is not None and c.secret == plain.secret_access_key
    assert c.token_sha256 == token_digest(plain.session_token) and c.expires == T0 + 900
    assert not c.mfa and c.user == "bob"
    m = store.credentials(mfa.access_key_id)
    assert m is not None and m.mfa
    listed = store.list_sessions(T0 + 2)
    assert [(s.access_key_id, s.parent, s.mfa) for s in listed] == [
        (plain.access_key_id, parent, False), (mfa.access_key_id, parent, True)]
    assert store.list_sessions(T0 + 900) == []  # expired ones are not listed...
    store.create_session(None, None, T0 + 2000, T0 + 1000, parent=parent)
    assert store.credentials(plain.access_key_id) is None  # ...and dropped by the next one


def test_revoking_sessions_by_id_by_parent_and_all(store: AwsStore) -> None:
    k1, _ = store.create_key(T0)
    k2, _ = store.create_key(T0)
    s = [store.create_session(None, None, T0 + 900, T0, parent=k) for k in (k1, k1, k2, k2)]
    assert store.revoke_sessions([s[0].access_key_id, "ASIANOSUCH0000000000"]) == 1
    assert store.revoke_sessions(parent=k1) == 1
    assert store.credentials(s[1].access_key_id) is None
    assert store.delete_key(k2) == 2  # a key's delete revokes its sessions
    assert store.credentials(s[2].access_key_id) is None
    k3, _ = store.create_key(T0)
    store.create_session(None, None, T0 + 900, T0, parent=k3)
    assert store.revoke_sessions() == 1 and store.list_sessions(T0) == []
    with pytest.raises(LookupError):
        store.create_session(None, None, T0 + 900, T0, parent=k2)


def test_sessions_created_while_their_key_is_deleted_never_outlive_it(
        store: AwsStore) -> None:
    """Threads keep asking for sessions while the key is deleted: every session either
    failed (LookupError) or was revoked with the key; none opens afterwards."""
    key, _ = store.create_key(T0)
    made: list[str] = []
    start = threading.Barrier(5)

    def ask() -> None:
        start.wait()
        for _ in range(15):
            try:
                made.append(store.create_session(None, None, T0 + 900, T0,
                                                 parent=key).access_key_id)
            except LookupError:
                return

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    store.delete_key(key)
    for t in threads:
        t.join()
    assert all(store.credentials(akid) is None for akid in made)
    assert store.list_sessions(T0) == []


def test_virtual_devices_page_in_bytewise_serial_order(store: AwsStore) -> None:
    serials = [f"arn:aws:iam::123456789012:mfa/{n}" for n in ("b", "B", "a-1", "a", "Z")]
    for i, s in enumerate(serials):
        store.add_virtual(VirtualDevice(s, s.rsplit("/", 1)[1], "/", T0 + i),
                          [("team", str(i))])
    ordered = sorted(serials)  # bytewise: "B" < "Z" < "a" < "a-1" < "b"
    assert [d.serial for d in store.virtual_from(None, 10)] == ordered
    assert [d.serial for d in store.virtual_from(ordered[2], 2)] == ordered[2:4]
    got = store.get_virtual(serials[1])
    assert got == VirtualDevice(serials[1], "B", "/", T0 + 1)
    store.delete_virtual(serials[1])
    assert store.get_virtual(serials[1]) is None and store.tags(serials[1]) == []
    assert store.tags(serials[0]) == [("team", "0")]


def test_tags_overwrite_case_insensitively_and_respect_the_limit(store: AwsStore) -> None:
    s = "arn:aws:iam::123456789012:mfa/t"
    store.add_virtual(VirtualDevice(s, "t", "/", T0), [("Team", "a"), ("env", "lab")])
    assert store.tag(s, [("TEAM", "b"), ("owner", "c")], limit=3)
    assert store.tags(s) == [("TEAM", "b"), ("env", "lab"), ("owner", "c")]
    assert not store.tag(s, [("more", "x")], limit=3)  # refused: nothing written
    assert len(store.tags(s)) == 3
    store.untag(s, ["ENV", "nope"])
    assert store.tags(s) == [("TEAM", "b"), ("owner", "c")]


def test_tagging_from_many_threads_never_passes_the_limit(store: AwsStore) -> None:
    s = "arn:aws:iam::123456789012:mfa/many"
    store.add_virtual(VirtualDevice(s, "many", "/", T0), [])
    start = threading.Barrier(6)
    results: list[bool] = []

    def tag(i: int) -> None:
        start.wait()
        results.append(store.tag(s, [(f"k{i}a", "v"), (f"k{i}b", "v")], limit=5))

    threads = [threading.Thread(target=tag, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 2 and len(store.tags(s)) == 4


def test_secrets_follow_a_data_key_rotation(store: AwsStore, validator: Validator) -> None:
    akid, secret = store.create_key(T0)
    parent_session = store.create_session(None, None, T0 + 900, T0, parent=akid)
    before = validator.box.data_key_id
    assert validator.rotate_key(now=T0 + 1) >= 2  # the AWS secrets were resealed too
    assert validator.box.data_key_id != before
    found = store.credentials(akid)
    assert found is not None and found.secret == secret
    session = store.credentials(parent_session.access_key_id)
    assert session is not None and session.secret == parent_session.secret_access_key
    sealed = {table: blob for table, _, blob in validator.store.sealed_rows()}
    assert sealed["aws_access_keys"][1:9].hex() == validator.box.data_key_id
    assert validator.check_keys() is None


def test_a_rotation_by_another_process_is_followed_when_sealing(
        target: str | Path, tmp_path: Path, store: AwsStore, validator: Validator) -> None:
    """`other` (a second daemon or worker on the same database) rotates the data key; this
    store's box still holds the dropped one, and must seal its next secret under the new
    one, which `other` then opens."""
    other = Validator.open(target, tmp_path / "seed.key", create_key=False)
    try:
        stale = validator.box.data_key_id
        other.rotate_key(now=T0 + 1)
        akid, secret = store.create_key(T0 + 2)
        assert validator.box.data_key_id == other.box.data_key_id != stale
        theirs = open_aws_store(other.store, other.box)
        try:
            found = theirs.credentials(akid)
            assert found is not None and found.secret == secret
        finally:
            theirs.close()
        assert other.check_keys() is None
    finally:
        other.close()


def test_a_wrong_box_cannot_open_the_secrets(store: AwsStore, tmp_path: Path,
                                             target: str | Path) -> None:
    akid, _ = store.create_key(T0)
    stranger = Validator.open(tmp_path / "other.db", tmp_path / "other.key")
    same_db = Validator.open(target, tmp_path / "seed.key", create_key=False)
    try:
        wrong = open_aws_store(same_db.store, stranger.box)
        with pytest.raises(SealError):
            wrong.credentials(akid)
        wrong.close()
    finally:
        stranger.close()
        same_db.close()

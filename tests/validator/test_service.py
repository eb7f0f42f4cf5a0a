"""The service over a real SQLite file: enable, verify, resync, throttle, audit, keys."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from pg import Database  # type: ignore[import-not-found]

from validator.core import Policy, Reason
from validator.errors import (
    AlreadyAssigned,
    DeleteConflict,
    DeviceLimit,
    DuplicateSerial,
    InvalidAuthenticationCode,
    InvalidUser,
    NotAssigned,
    UnknownSerial,
)
from validator.otp import hotp
from validator.service import Validator
from validator.store import SCHEMA_VERSION, SQLiteStore, StoreError

T0 = 1_700_000_000.0
SEED = bytes.fromhex("8f1c2d3e4a5b6c7d8e9fa0b1c2d3e4f5a6b7c8d9")


def step(t: float) -> int:
    return int(t // 30)


def enable(v: Validator, user: str, serial: str, t: float = T0, key: bytes = SEED) -> None:
    s = step(t)
    v.enable(user, serial, hotp(key, s - 1), hotp(key, s), now=t)


def test_enable_verify_replay_deactivate(validator: Validator) -> None:
    validator.register_token("TOK1", SEED, now=T0)
    assert validator.verify("alice", "123456", now=T0).reason is Reason.NO_DEVICE
    enable(validator, "alice", "TOK1")
    info = validator.get_token("TOK1")
    assert info.user == "alice" and info.watermark == step(T0)
    with pytest.raises(AlreadyAssigned):
        enable(validator, "bob", "TOK1")
    t = T0 + 30
    code = hotp(SEED, step(t))
    assert validator.verify("alice", code, now=t).accepted
    assert validator.verify("alice", code, now=t + 1).reason is Reason.REPLAYED
    assert validator.verify("bob", code, now=t).reason is Reason.NO_DEVICE
    assert validator.verify("alice", code, now=t, serial="OTHER").reason is Reason.NOT_ENABLED
    with pytest.raises(NotAssigned):
        validator.deactivate("bob", "TOK1", now=t)
    validator.deactivate("alice", "TOK1", now=t)
    # Re-enabling with old codes fails: the watermark survived deactivation.
    with pytest.raises(InvalidAuthenticationCode) as info_:
        validator.enable("bob", "TOK1", hotp(SEED, step(t) - 1), code, now=t + 2)
    assert info_.value.code == "invalid_authentication_code"
    enable(validator, "bob", "TOK1", t + 60)
    assert [d.serial for d in validator.list_devices("bob")] == ["TOK1"]


def test_enable_refuses_wrong_pair_and_counts_failure(validator: Validator) -> None:
    validator.register_token("TOK1", SEED, now=T0)
    with pytest.raises(InvalidAuthenticationCode):
        validator.enable("alice", "TOK1", "000000", "111111", now=T0)
    assert validator.get_token("TOK1").failures == 1
    assert validator.get_token("TOK1").user is None
    with pytest.raises(UnknownSerial):
        validator.enable("alice", "NOPE", "000000", "111111", now=T0)


def test_device_limit(database: Database) -> None:
    v = database.open(policy=Policy(max_devices=2))
    try:
        for i in range(3):
            v.register_token(f"T{i}", SEED + bytes([i]), now=T0)
        enable(v, "alice", "T0", key=SEED + b"\x00")
        enable(v, "alice", "T1", key=SEED + b"\x01")
        with pytest.raises(DeviceLimit):
            enable(v, "alice", "T2", key=SEED + b"\x02")
        # A code from either device verifies; the other device counts no failure.
        t = T0 + 30
        r = v.verify("alice", hotp(SEED + b"\x01", step(t)), now=t)
        assert r.accepted and r.serial == "T1"
        assert v.get_token("T0").failures == 0
    finally:
        v.close()


@pytest.mark.parametrize("user", ["", "a" * 65, "al ice", "bob!", "é"])
def test_invalid_user_names(validator: Validator, user: str) -> None:
    with pytest.raises(InvalidUser) as info:
        validator.verify(user, "123456", now=T0)
    assert info.value.code == "invalid_user"


def test_user_name_length_is_a_parameter(database: Database) -> None:
    v = database.open(max_user_length=128)
    try:
        assert v.verify("a" * 128, "123456", now=T0).reason is Reason.NO_DEVICE
        assert v.verify("+=,.@_-x9", "123456", now=T0).reason is Reason.NO_DEVICE
    finally:
        v.close()


def test_resync_then_next_code_and_throttle(validator: Validator) -> None:
    validator.register_token("TOK1", SEED, now=T0)
    enable(validator, "alice", "TOK1")
    t = T0 + 3600
    for _ in range(5):
        assert validator.verify("alice", "000000", now=t).reason is Reason.INVALID_CODE
    locked = validator.verify("alice", hotp(SEED, step(t)), now=t + 1)
    assert locked.reason is Reason.LOCKED and 0 < locked.retry_after <= 30
    with pytest.raises(InvalidAuthenticationCode) as info:
        validator.resync("alice", "TOK1", "000000", "111111", now=t + 2)
    assert info.value.reason == "locked"
    validator.unlock("TOK1", now=t + 3)
    # The token's clock jumped 2 hours ahead: outside the window, inside the resync range.
    s = step(t + 7200)
    assert not validator.verify("alice", hotp(SEED, s), now=t + 4).accepted
    validator.resync("alice", "TOK1", hotp(SEED, s - 1), hotp(SEED, s), now=t + 5)
    assert validator.verify("alice", hotp(SEED, s + 1), now=t + 35).accepted
    assert validator.get_token("TOK1").failures == 0


def test_verify_result_carries_the_window_over_devices(validator: Validator) -> None:
    validator.register_token("TOKW", SEED, now=T0)
    enable(validator, "wendy", "TOKW")
    one = validator.verify("wendy", hotp(SEED, step(T0) + 200), now=T0 + 30 * 200)
    assert one.accepted and one.window is not None and 3 <= one.window <= 9
    assert validator.verify("nobody", "123456", now=T0).window is None


def test_audit_records_actions_never_codes(validator: Validator, database: Database) -> None:
    validator.register_token("TOK1", SEED, now=T0)
    enable(validator, "alice", "TOK1")
    codes = set()
    for i in range(1, 6):
        c = hotp(SEED, step(T0) + i)
        codes.add(c)
        validator.verify("alice", c, now=T0 + 30 * i)
    validator.verify("alice", "999999", now=T0 + 200)
    validator.deactivate("alice", "TOK1", now=T0 + 300)
    validator.unlock("TOK1", now=T0 + 301)
    validator.delete_token("TOK1", now=T0 + 302)
    entries = validator.audit(limit=1000)
    actions = [e.action for e in entries]
    assert actions[:2] == ["register", "enable"]
    assert actions.count("verify") == 6
    assert {"deactivate", "unlock", "delete"} <= set(actions)
    assert validator.audit(action="verify", result="refused")[0].reason == "invalid_code"
    page1 = validator.audit(limit=3)
    page2 = validator.audit(limit=3, offset=3)
    assert [e.id for e in page1 + page2] == [e.id for e in entries[:6]]
    assert validator.audit(user="bob") == []
    assert validator.audit(since=T0 + 299, until=T0 + 301.5)[0].action == "deactivate"
    # every verify row carries its guessing surface: steps after the watermark in the window
    windows = [e.window for e in entries if e.action == "verify"]
    assert all(w is not None and 1 <= w <= 9 for w in windows), windows
    assert all(e.window is None for e in entries if e.action != "verify")
    rows = database.rows("SELECT * FROM audit")
    assert len(rows) == len(entries)
    for c in codes | {"999999"}:
        for row in rows:
            assert all(c not in str(cell) for cell in row)


def test_delete_requires_deactivation(validator: Validator) -> None:
    validator.register_token("TOK1", SEED, now=T0)
    enable(validator, "alice", "TOK1")
    with pytest.raises(DeleteConflict):
        validator.delete_token("TOK1", now=T0)
    with pytest.raises(DuplicateSerial):
        validator.register_token("TOK1", SEED, now=T0)


def test_seeds_encrypted_at_rest_and_key_file_0600(db_path: Path) -> None:
    v = Validator.open(db_path)
    secrets_ = [os.urandom(20), os.urandom(32), os.urandom(64)]
    for i, s in enumerate(secrets_):
        v.register_token(f"T{i}", s, hash=["sha1", "sha256", "sha512"][i], now=T0)
    v.rotate_key(now=T0 + 1)
    key_file = Path(f"{db_path}.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    dump = b"".join(p.read_bytes() for p in db_path.parent.iterdir()
                    if p.name.startswith("validator.db") and not p.name.endswith(".key"))
    assert len(dump) > 4096
    for s in secrets_:
        for form in (s, s.hex().encode(), s.hex().upper().encode(),
                     base64.b32encode(s), base64.b32encode(s).rstrip(b"="),
                     base64.b64encode(s)):
            assert form not in dump
        assert repr(s) not in repr(v.get_token("T0"))
    v.close()


def test_key_rotation_reencrypts_everything(database: Database) -> None:
    v = database.open()
    for i in range(20):
        v.register_token(f"T{i}", SEED + bytes([i]), now=T0)
    before = {r.serial: r.sealed for r in v.store.list_tokens(limit=100)}
    key_file = database.key_file
    old_key = key_file.read_text()
    old_data_key = v.box.data_key_id
    # The data key: every row resealed under a new one; the key file stays.
    assert v.rotate_key(now=T0) == 20
    assert key_file.read_text() == old_key and v.box.data_key_id != old_data_key
    after = {r.serial: r.sealed for r in v.store.list_tokens(limit=100)}
    assert all(before[s][1:9] != after[s][1:9] for s in before)  # new key id on every row
    assert [kid.hex() for kid, _, _ in v.store.data_keys()] == [v.box.data_key_id]
    # The master key: a new key file, the data keys re-wrapped, the rows untouched.
    wrapped = v.store.data_keys()
    assert v.rotate_key(now=T0, master=True) == 1
    assert key_file.read_text() != old_key
    assert not database.key_file.with_name(database.key_file.name + ".next").exists()
    assert {r.serial: r.sealed for r in v.store.list_tokens(limit=100)} == after
    assert v.store.data_keys() != wrapped
    v.close()
    # A fresh process with only the new key file opens and verifies every token.
    v2 = database.open()
    try:
        enable(v2, "alice", "T7", key=SEED + bytes([7]))
        assert [e.reason for e in v2.audit(action="rotate_key")] == ["data_key", "master_key"]
        assert v2.health() is None
    finally:
        v2.close()


def test_verify_during_a_key_rotation_opens_every_seed(database: Database) -> None:
    """The daemon verifies on its event loop while a rotation runs in a worker thread. From
    the reseal's commit until the rotation ends (the key file is replaced and fsynced),
    every row holds the new key id: the box in use must already open it, or a verify in
    that window raised SealError (an HTTP 500)."""
    v = database.open()
    v.register_token("TOK1", SEED, now=T0)
    enable(v, "alice", "TOK1")
    reseal_all = v.store.rotate_data_key
    seen: list[Reason] = []

    def reseal_then_verify(*args: object, **kwargs: object) -> int:
        count = reseal_all(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(v.verify("alice", hotp(SEED, step(T0) + 1), now=T0 + 30).reason)
        return count

    v.store.rotate_data_key = reseal_then_verify  # type: ignore[method-assign]
    assert v.rotate_key(now=T0 + 30) == 1
    assert seen == [Reason.ACCEPTED]
    v.close()


def test_a_registration_racing_a_rotation_is_not_left_under_the_old_key(
        database: Database) -> None:
    """A seed sealed under the old key just before a rotation and inserted just after it
    would stay under a key the rotation deletes. The rotation waits for the insert."""
    v = database.open()
    insert_tokens = v.store.insert_tokens
    entered, proceed = threading.Event(), threading.Event()

    def slow_insert(*args: object, **kwargs: object) -> list[str]:
        entered.set()  # sealed already, not yet committed
        assert proceed.wait(10)
        return insert_tokens(*args, **kwargs)  # type: ignore[arg-type]

    v.store.insert_tokens = slow_insert  # type: ignore[method-assign]
    register = threading.Thread(target=v.register_token, args=("RACE1", SEED),
                                kwargs={"now": T0})
    register.start()
    assert entered.wait(10)
    rotate = threading.Thread(target=v.rotate_key, kwargs={"now": T0})
    rotate.start()
    rotate.join(0.3)
    assert rotate.is_alive()  # waits for the registration in flight
    proceed.set()
    register.join(10)
    rotate.join(10)
    assert not register.is_alive() and not rotate.is_alive()
    v.close()
    # Only the new key file is left: the token must open under it.
    v2 = database.open()
    try:
        enable(v2, "alice", "RACE1")
    finally:
        v2.close()


def test_concurrent_same_code_exactly_one_wins(database: Database) -> None:
    v = database.open()
    v.register_token("TOK1", SEED, now=T0)
    enable(v, "alice", "TOK1")
    t = T0 + 30
    code = hotp(SEED, step(t))
    barrier = threading.Barrier(8)
    results = []

    def worker() -> None:
        barrier.wait()
        results.append(v.verify("alice", code, now=t))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    v.close()
    assert sum(r.accepted for r in results) == 1
    assert sorted(r.reason.value for r in results if not r.accepted) == ["replayed"] * 7


def test_schema_version_and_newer_schema_refused(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    assert store.schema_version() == SCHEMA_VERSION
    store._conn().execute("UPDATE schema_version SET version = 99")
    store.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(db_path)


def test_reprs_hide_secrets(validator: Validator) -> None:
    validator.register_token("TOK1", SEED, now=T0)
    record = validator.store.get("TOK1")
    assert record is not None
    assert "sealed" not in repr(record) and SEED.hex() not in repr(validator.box)

"""`Validator.verify_many` and the two store calls it shares (`tokens_of_many`,
`set_states`), on both stores: the same answers, states and audit rows as `verify` called
for each request in turn, with one read and one write for every accepted code, and each
request that is not the common case decided again on its own."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from store_calls import count_calls  # type: ignore[import-not-found]

from validator.core import Reason, TokenState
from validator.errors import InvalidUser
from validator.otp import hotp
from validator.service import Validator, VerifyRequest, VerifyResult
from validator.store import AuditEvent, Cas, StateChange

T0 = 1_700_000_000.0
SEED = bytes.fromhex("8f1c2d3e4a5b6c7d8e9fa0b1c2d3e4f5a6b7c8d9")


def _key(i: int) -> bytes:
    return bytes([i]) * 20


def _enable(v: Validator, user: str, serial: str, key: bytes, t: float = T0) -> None:
    v.register_token(serial, key, now=t)
    s = int(t // 30)
    v.enable(user, serial, hotp(key, s - 1), hotp(key, s), now=t)


def test_tokens_of_many_reads_each_users_devices_in_order(validator: Validator) -> None:
    _enable(validator, "alice", "A2", _key(2), T0)
    _enable(validator, "alice", "A1", _key(1), T0 + 60)
    _enable(validator, "bob", "B1", _key(3))
    got = validator.store.tokens_of_many(["alice", "bob", "nobody"])
    assert {u: [r.serial for r in rs] for u, rs in got.items()} == {
        "alice": ["A2", "A1"], "bob": ["B1"], "nobody": []}
    assert got["alice"] == validator.store.tokens_of("alice")
    assert validator.store.tokens_of_many([]) == {}


def test_set_states_writes_the_winners_and_only_their_audit_rows(
        validator: Validator) -> None:
    store = validator.store
    for i, user in enumerate(("u1", "u2", "u3")):
        _enable(validator, user, f"S{i}", _key(i + 1))
    before = {r.serial: r for r in store.list_tokens()}
    new = TokenState(kind=before["S0"].state.kind, watermark=123)

    def change(serial: str, version: int) -> StateChange:
        return StateChange(serial, version, new, [AuditEvent(
            T0, "verify", "ok", Reason.ACCEPTED, serial, "u", "radius", "vpn", 3)])

    audit_before = store.count_audit(action="verify")
    # S1 is stale (a version behind), "GONE" does not exist: each loses alone.
    got = store.set_states([change("S2", before["S2"].version), change("GONE", 0),
                            change("S0", before["S0"].version),
                            change("S1", before["S1"].version - 1)])
    assert got == [Cas.OK, Cas.CONFLICT, Cas.OK, Cas.CONFLICT]
    after = {r.serial: r for r in store.list_tokens()}
    for serial in ("S0", "S2"):
        assert after[serial].version == before[serial].version + 1
        assert after[serial].state.watermark == 123
        assert after[serial].user == before[serial].user  # the assignment is kept
    assert after["S1"] == before["S1"]
    rows = store.audit(action="verify")
    assert len(rows) == audit_before + 2
    assert sorted((e.serial, e.via, e.client, e.window) for e in rows[-2:]) == [
        ("S0", "radius", "vpn", 3), ("S2", "radius", "vpn", 3)]
    assert store.set_states([]) == []
    with pytest.raises(ValueError, match="one change per token"):
        store.set_states([change("S0", 0), change("S0", 1)])


def test_a_mixed_batch_answers_as_one_verify_after_another(validator: Validator) -> None:
    t = T0 + 30
    for i, user in enumerate(("alice", "bob", "dave", "erin")):
        _enable(validator, user, f"T-{user}", _key(i + 1))
    code = {user: hotp(_key(i + 1), int(t // 30)) for i, user in
            enumerate(("alice", "bob", "dave", "erin"))}
    wrong = f"{(int(code['bob']) + 1) % 1_000_000:06d}"
    requests = [
        VerifyRequest("alice", code["alice"]),
        VerifyRequest("alice", code["alice"]),  # the same code again: a replay
        VerifyRequest("bob", wrong),
        VerifyRequest("carol", "123456"),  # no device
        VerifyRequest("bad user\n", "123456"),
        VerifyRequest("dave", code["dave"], serial="T-erin"),  # not dave's token
        VerifyRequest("erin", code["erin"], via="radius", client="vpn"),
    ]
    calls = count_calls(validator, "tokens_of_many", "set_states", "tokens_of")
    out = validator.verify_many(requests, now=t)
    assert isinstance(out[4], InvalidUser)
    answers = [(r.accepted, r.reason, r.serial) for r in out
               if isinstance(r, VerifyResult)]
    assert answers == [
        (True, Reason.ACCEPTED, "T-alice"), (False, Reason.REPLAYED, "T-alice"),
        (False, Reason.INVALID_CODE, "T-bob"), (False, Reason.NO_DEVICE, None),
        (False, Reason.NOT_ENABLED, "T-erin"), (True, Reason.ACCEPTED, "T-erin")]
    # One shared read and one shared write; the four others each read alone.
    assert calls == {"tokens_of_many": 1, "set_states": 1, "tokens_of": 4}
    audit = [(e.user, e.result, e.reason, e.via) for e in validator.audit(action="verify")]
    assert sorted(audit, key=str) == sorted([
        ("alice", "ok", "accepted", None), ("alice", "refused", "replayed", None),
        ("bob", "refused", "invalid_code", None), ("carol", "refused", "no_device", None),
        ("dave", "refused", "not_enabled", None), ("erin", "ok", "accepted", "radius")],
        key=str)
    assert validator.get_token("T-bob").failures == 1
    # And verify itself agrees: alice's and erin's codes are spent.
    assert validator.verify("erin", code["erin"], now=t).reason is Reason.REPLAYED


def test_accepted_codes_share_one_read_and_one_write(validator: Validator) -> None:
    t = T0 + 30
    users = [f"user{i}" for i in range(6)]
    for i, user in enumerate(users):
        _enable(validator, user, f"S-{user}", _key(i + 1))
    calls = count_calls(validator, "tokens_of_many", "set_states", "tokens_of",
                   "compare_and_set", "add_audit")
    out = validator.verify_many(
        [VerifyRequest(u, hotp(_key(i + 1), int(t // 30))) for i, u in enumerate(users)],
        now=t)
    assert [(r.accepted, r.serial) for r in out] == [  # type: ignore[union-attr]
        (True, f"S-{u}") for u in users]
    assert calls == {"tokens_of_many": 1, "set_states": 1, "tokens_of": 0,
                     "compare_and_set": 0, "add_audit": 0}
    assert validator.store.count_audit(action="verify", result="ok") == len(users)


def test_a_code_another_daemon_spends_meanwhile_is_a_replay(validator: Validator,
                                                            database: Any) -> None:
    """Between the shared read and the shared write, another validator on the same
    database accepts alice's code: her change loses its compare-and-set, she is decided
    again alone (a replay), and bob's accepted code is written all the same."""
    t = T0 + 30
    _enable(validator, "alice", "A", _key(1))
    _enable(validator, "bob", "B", _key(2))
    ca, cb = (hotp(_key(i), int(t // 30)) for i in (1, 2))
    other = database.open()
    real = validator.store.set_states

    def racing(changes: Any) -> Any:
        assert other.verify("alice", ca, now=t).accepted
        return real(changes)

    validator.store.set_states = racing  # type: ignore[method-assign]
    try:
        out = validator.verify_many([VerifyRequest("alice", ca), VerifyRequest("bob", cb)],
                                    now=t)
    finally:
        other.close()
    assert [(r.accepted, r.reason) for r in out] == [  # type: ignore[union-attr]
        (False, Reason.REPLAYED), (True, Reason.ACCEPTED)]
    assert validator.store.count_audit(serial="A", action="verify", result="ok") == 1


def test_a_store_error_in_the_shared_read_is_raised_for_all(validator: Validator) -> None:
    _enable(validator, "alice", "A", _key(1))

    def down(users: Any) -> Any:
        raise OSError("disk gone")

    validator.store.tokens_of_many = down  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk gone"):
        validator.verify_many([VerifyRequest("alice", "123456"),
                               VerifyRequest("bob", "123456")], now=T0 + 30)
    # One request alone shares nothing: it is verify's own two statements.
    [alone] = validator.verify_many([VerifyRequest("alice", "123456")], now=T0 + 30)
    assert isinstance(alone, VerifyResult) and alone.reason is Reason.INVALID_CODE


def test_two_validators_batching_the_same_codes_accept_each_once(
        validator: Validator, database: Any) -> None:
    """Two validators on one database verify_many the same six codes at once, many
    rounds: every code is accepted exactly once."""
    other = database.open()
    users = [f"racer{i}" for i in range(6)]
    for i, user in enumerate(users):
        _enable(validator, user, f"R-{user}", _key(i + 1))
    try:
        for round_ in range(1, 9):
            t = T0 + 30 * round_
            requests = [VerifyRequest(u, hotp(_key(i + 1), int(t // 30)))
                        for i, u in enumerate(users)]
            results: list[list[Any]] = []
            barrier = threading.Barrier(2)

            def run(v: Validator, reqs: list[VerifyRequest], t: float,
                    barrier: threading.Barrier, results: list[list[Any]]) -> None:
                barrier.wait()
                results.append(v.verify_many(reqs, now=t))

            threads = [threading.Thread(target=run, args=(v, reqs, t, barrier, results))
                       for v, reqs in ((validator, requests), (other, requests[::-1]))]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert len(results) == 2
            for user in users:
                won = [r for out in results for r in out
                       if isinstance(r, VerifyResult) and r.serial == f"R-{user}"
                       and r.accepted]
                assert len(won) == 1, (round_, user, results)
    finally:
        other.close()


def test_each_audit_row_names_its_own_request(validator: Validator) -> None:
    """A batch runs in one context: the request ids of its rows come with the requests,
    the shared write's and those decided alone after it (a refusal, a second request for
    the same user) alike."""
    for i, user in enumerate(("ann", "ben")):
        _enable(validator, user, f"R{i}", _key(i + 1))
    s = int(T0 // 30)
    results = validator.verify_many([
        VerifyRequest("ann", hotp(_key(1), s + 1), request_id="req-ann"),
        VerifyRequest("ben", "000000", request_id="req-ben-wrong"),
        VerifyRequest("ann", hotp(_key(1), s + 1), request_id="req-ann-again"),
        VerifyRequest("ben", hotp(_key(2), s + 1), request_id="req-ben")], T0 + 30)
    assert [r.reason for r in results if isinstance(r, VerifyResult)] == [
        Reason.ACCEPTED, Reason.INVALID_CODE, Reason.REPLAYED, Reason.ACCEPTED]
    rows = {e.request_id: (e.user, e.result, e.reason)
            for e in validator.audit(action="verify")}
    assert rows == {"req-ann": ("ann", "ok", "accepted"),
                    "req-ben-wrong": ("ben", "refused", "invalid_code"),
                    "req-ann-again": ("ann", "refused", "replayed"),
                    "req-ben": ("ben", "ok", "accepted")}
    # and the audit is searched by it
    found = validator.audit(request_id="req-ann-again")
    assert [(e.user, e.reason) for e in found] == [("ann", "replayed")]
    assert validator.count_audit(request_id="req-ann-again") == 1
    assert validator.count_audit(request_id="req-nobody") == 0
    assert validator.count_audit(request_id="req-ben", result="refused") == 0

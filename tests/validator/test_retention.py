"""Audit retention, `now` passed in: what `Retention` decides, and what `prune_audit` then
deletes from a real SQLite store (the daemon's loop is tested in tests/daemon); and the
keyset export that pruning cannot shift."""

from __future__ import annotations

import pytest

from validator.retention import DAY, Retention
from validator.service import Validator
from validator.store import AuditEvent

T = 1_800_000_000.0


def test_limits_at_now() -> None:
    assert Retention().limits(T) == (None, None) and not Retention().active
    assert Retention(max_age_days=30).limits(T) == (T - 30 * DAY, None)
    assert Retention(max_rows=1000).limits(T) == (None, 1000)
    assert Retention(max_age_days=0.5, max_rows=7).limits(T) == (T - DAY / 2, 7)
    with pytest.raises(ValueError):
        Retention(max_age_days=-1)


def _fill(v: Validator, days: range) -> None:
    v.store.add_audit([AuditEvent(T - d * DAY, "verify", "refused", "no_device", None,
                                  f"user{d}") for d in days])


def test_prune_by_age_keeps_what_is_younger(validator: Validator) -> None:
    _fill(validator, range(10, 0, -1))  # ten entries, 10 days old to 1 day old
    assert validator.prune_audit(Retention(), now=T) == 0
    assert validator.prune_audit(Retention(max_age_days=3.5), now=T) == 7
    rows = validator.audit(limit=100)
    assert [r.user for r in rows if r.action == "verify"] == ["user3", "user2", "user1"]
    (note,) = [r for r in rows if r.action == "audit_prune"]
    assert (note.time, note.result, note.reason) == (T, "ok", "7 deleted")
    assert validator.prune_audit(Retention(max_age_days=3.5), now=T) == 0  # nothing left


def test_prune_by_rows_keeps_the_newest(validator: Validator) -> None:
    _fill(validator, range(10, 0, -1))
    before = validator.count_audit()
    assert validator.prune_audit(Retention(max_rows=4), now=T) == before - 4
    rows = validator.audit(limit=100)
    assert [r.user for r in rows][:4] == ["user4", "user3", "user2", "user1"]
    assert rows[-1].action == "audit_prune"  # written after the pruning


def test_both_limits_and_small_batches(validator: Validator) -> None:
    _fill(validator, range(40, 0, -1))
    total = validator.count_audit()
    assert validator.store.prune_audit(before=T - 20.5 * DAY, batch=3) == total - 20
    assert validator.store.prune_audit(before=T - 20.5 * DAY, keep=5, batch=3) == 15
    assert [r.user for r in validator.audit(limit=10)] == [f"user{d}" for d in range(5, 0, -1)]


def test_export_is_keyset_paged_in_both_orders(validator: Validator) -> None:
    _fill(validator, range(25, 0, -1))
    ids = [e.id for batch in validator.audit_export(batch=4) for e in batch]
    assert ids == sorted(ids) and len(ids) == validator.count_audit()
    newest = [e.id for batch in validator.audit_export(newest_first=True, batch=7)
              for e in batch]
    assert newest == ids[::-1]
    recent = [e.user for batch in validator.audit_export(since=T - 3 * DAY) for e in batch]
    assert recent == ["user3", "user2", "user1"]
    # pruning between two batches neither repeats nor skips a surviving entry
    batches = validator.audit_export(batch=5)
    first = next(batches)
    validator.store.prune_audit(before=T - 22.5 * DAY)
    rest = [e.id for batch in batches for e in batch]
    assert rest == [i for i in ids if i > first[-1].id]


def test_gauges_count_tokens_devices_and_locks_at_now(validator: Validator) -> None:
    """The /metrics gauges from one read of the store, on both stores: a lock counts while
    it lasts and no longer."""
    from validator.otp import hotp

    seed = bytes(range(20))
    for serial in ("G1", "G2", "G3"):
        validator.register_token(serial, seed, now=T)
    assert validator.gauges(now=T) == {"tokens": 3, "devices_enabled": 0, "tokens_locked": 0}
    s = int(T // 30)
    validator.enable("alice", "G1", hotp(seed, s - 1), hotp(seed, s), now=T)
    validator.enable("bob", "G2", hotp(seed, s - 1), hotp(seed, s), now=T)
    for i in range(validator.policy.max_failures):  # wrong codes until bob's token locks
        validator.verify("bob", "000000" if hotp(seed, s) != "000000" else "111111",
                         now=T + i)
    locked = validator.get_token("G2", now=T + 10).locked_until
    assert locked is not None and locked > T + 10
    assert validator.gauges(now=T + 10) == {"tokens": 3, "devices_enabled": 2,
                                            "tokens_locked": 1}
    assert validator.gauges(now=locked + 1)["tokens_locked"] == 0

"""The pure core: RFC vectors, window, replay, HOTP look-ahead, resync, throttling."""

from __future__ import annotations

import base64

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Kind
from validator import core
from validator.core import Policy, Reason, TokenState
from validator.otp import hotp, totp

RFC4226_KEY = b"12345678901234567890"
RFC4226 = ["755224", "287082", "359152", "969429", "338314",
           "254676", "287922", "162583", "399871", "520489"]
RFC6238_KEYS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC6238 = [  # (time, sha1, sha256, sha512), RFC 6238 Appendix B
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


def test_rfc4226_vectors_through_otp_and_core() -> None:
    state = TokenState(kind=Kind.HOTP)
    for counter, expected in enumerate(RFC4226):
        assert hotp(RFC4226_KEY, counter) == expected
        decision = core.verify(state, RFC4226_KEY, expected, 0.0)
        assert decision.accepted and decision.matched == counter
        state = decision.state
    assert state.watermark == 9


@pytest.mark.parametrize("row", RFC6238)
@pytest.mark.parametrize("index,algorithm", [(1, "sha1"), (2, "sha256"), (3, "sha512")])
def test_rfc6238_vectors_through_core(row: tuple, index: int, algorithm: str) -> None:
    t, expected = row[0], row[index]
    key = RFC6238_KEYS[algorithm]
    assert totp(key, t, 8, algorithm) == expected
    state = TokenState(kind=Kind.TOTP, digits=8, hash=algorithm)
    decision = core.verify(state, key, expected, float(t))
    assert decision.accepted, decision.reason
    assert decision.matched == t // 30


def test_matches_pyotp_for_other_periods_and_t0() -> None:
    key = bytes(range(20))
    secret = base64.b32encode(key).decode()
    for t in (0, 59, 61, 1_000_000_007, 1_700_000_123):
        assert totp(key, t, 6, "sha1", period=60) == pyotp.TOTP(secret, interval=60).at(t)
    # T0 shifts the step origin: step = (t - T0) // P
    assert totp(key, 1000 + 45, 6, "sha1", 30, 1000) == hotp(key, 1)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", " 12345", "१२३४५६",
                                  "+12345", "12 456"])
def test_malformed_codes_refused_without_hmac(code: str, monkeypatch) -> None:
    calls = []
    real = core.hotp
    monkeypatch.setattr(core, "hotp", lambda *a: calls.append(a) or real(*a))
    decision = core.verify(TokenState(kind=Kind.TOTP), b"k" * 20, code, 1e9)
    assert decision.reason is Reason.INVALID_CODE and not calls
    assert decision.state.failures == 1


KEY = b"0123456789abcdefghij"
NOW = 1_700_000_000.0


def code_at(step: int, digits: int = 6) -> str:
    return hotp(KEY, step, digits)


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(-6, 6), window=st.integers(0, 3), frac=st.floats(0, 29.9))
def test_window_accepts_exactly_the_window(offset: int, window: int, frac: float) -> None:
    """With no drift known, a code `offset` steps from now is accepted iff |offset| <= window
    (the believed step is the one holding now - typing_allowance/2)."""
    policy = Policy(window=window, typing_allowance=0.0)
    now = NOW - NOW % 30 + frac
    step = int(now // 30) + offset
    decision = core.verify(TokenState(kind=Kind.TOTP), KEY, code_at(step), now, policy)
    assert decision.accepted == (abs(offset) <= window)
    if decision.accepted:
        assert decision.matched == step


@settings(max_examples=60, deadline=None)
@given(first=st.integers(-1, 1), second=st.integers(-1, 1))
def test_replay_never_accepts_at_or_before_watermark(first: int, second: int) -> None:
    base = int(NOW // 30)
    state = TokenState(kind=Kind.TOTP)
    d1 = core.verify(state, KEY, code_at(base + first), NOW)
    assert d1.accepted
    d2 = core.verify(d1.state, KEY, code_at(base + second), NOW + 1)
    if second <= first:
        # Refused as replayed, in the (re-centred) window or not, and never counted.
        assert d2.reason is Reason.REPLAYED and d2.state == d1.state
    elif second == first + 1:  # the token's next step is always inside the window
        assert d2.accepted and d2.state.watermark == base + second
    else:  # two steps past a code that showed the token behind: may fall outside
        assert d2.state.watermark == (base + second if d2.accepted else base + first)


def test_a_code_used_long_ago_stays_a_replay_and_never_locks() -> None:
    """A code accepted once, re-sent minutes later (out of the window), is answered
    `replayed` however often: it never counts toward the lock (docs/validator.md). Only
    codes older than `replay_memory` steps before the watermark are plain wrong codes."""
    policy = Policy(max_failures=3)
    base = int(NOW // 30)
    state = TokenState(kind=Kind.TOTP)
    used = []
    for i in range(4):  # four logins, a minute apart
        d = core.verify(state, KEY, code_at(base + 2 * i), NOW + 60 * i, policy)
        assert d.accepted
        used.append(base + 2 * i)
        state = d.state
    later = NOW + 600  # ten minutes on: every used step is far out of the window
    for step in used * 3:
        d = core.verify(state, KEY, code_at(step), later, policy)
        assert d.reason is Reason.REPLAYED and d.state is state
    # An unused step before the watermark but within memory: a code valid once too.
    assert core.verify(state, KEY, code_at(base + 1), later, policy).reason is Reason.REPLAYED
    # Older than the memory: an ordinary wrong code, counted.
    old = state.watermark - policy.replay_memory  # type: ignore[operator]
    d = core.verify(state, KEY, code_at(old), later, policy)
    assert d.reason is Reason.INVALID_CODE and d.state.failures == 1
    assert core.verify(state, KEY, code_at(old + 1), later, policy).reason is Reason.REPLAYED
    with pytest.raises(ValueError):
        Policy(replay_memory=-1)
    # Without memory only the window's replays are seen.
    assert core.verify(state, KEY, code_at(used[0]), later,
                       Policy(replay_memory=0)).reason is Reason.INVALID_CODE


def test_hotp_replays_as_far_back_as_the_memory() -> None:
    policy = Policy(hotp_lookahead=2, replay_memory=16)
    state = TokenState(kind=Kind.HOTP, watermark=39)
    for counter in (39, 30, 24):
        d = core.verify(state, KEY, code_at(counter), NOW, policy)
        assert d.reason is Reason.REPLAYED and d.state is state
    d = core.verify(state, KEY, code_at(23), NOW, policy)
    assert d.reason is Reason.INVALID_CODE and d.state.failures == 1
    # The memory is never shorter than the look-ahead's replay range.
    wide = Policy(hotp_lookahead=20, replay_memory=4)
    assert core.verify(state, KEY, code_at(19), NOW, wide).reason is Reason.REPLAYED
    assert core.verify(state, KEY, code_at(18), NOW, wide).reason is Reason.INVALID_CODE
    assert core.verify(TokenState(kind=Kind.HOTP), KEY, code_at(30), NOW,
                       policy).reason is Reason.INVALID_CODE


def test_hotp_lookahead_and_replay() -> None:
    state = TokenState(kind=Kind.HOTP)
    assert core.verify(state, KEY, code_at(11), NOW).reason is Reason.INVALID_CODE
    d = core.verify(state, KEY, code_at(10), NOW)
    assert d.accepted and d.state.next_counter == 11
    assert core.verify(d.state, KEY, code_at(10), NOW).reason is Reason.REPLAYED
    assert core.verify(d.state, KEY, code_at(3), NOW).reason is Reason.REPLAYED
    assert core.verify(d.state, KEY, code_at(11), NOW).accepted


@settings(max_examples=40, deadline=None)
@given(shift=st.integers(-2880, 2880))
def test_resync_within_a_day_then_next_code_accepted(shift: int) -> None:
    """A token `shift` steps off (up to ±24 h) resyncs from a pair, and its very next code
    (one step later) is accepted: no dead step."""
    state = TokenState(kind=Kind.TOTP)
    s = int(NOW // 30) + shift
    d = core.resync(state, KEY, code_at(s - 1), code_at(s), NOW)
    assert d.accepted and d.state.watermark == s
    assert core.verify(d.state, KEY, code_at(s), NOW + 1).reason is Reason.REPLAYED
    nxt = core.verify(d.state, KEY, code_at(s + 1), NOW + 30)
    assert nxt.accepted


def test_resync_refuses_beyond_range_and_non_consecutive() -> None:
    state = TokenState(kind=Kind.TOTP)
    s = int(NOW // 30) + 2881 + 1
    assert not core.resync(state, KEY, code_at(s - 1), code_at(s), NOW).accepted
    s = int(NOW // 30)
    assert not core.resync(state, KEY, code_at(s - 2), code_at(s), NOW).accepted


def test_hotp_resync_within_1000_counters() -> None:
    state = TokenState(kind=Kind.HOTP)
    d = core.resync(state, KEY, code_at(999), code_at(1000), NOW)
    assert d.accepted and d.state.next_counter == 1001
    assert core.verify(d.state, KEY, code_at(1001), NOW).accepted
    assert not core.resync(state, KEY, code_at(1001), code_at(1002), NOW).accepted


def test_throttle_locks_doubles_caps_and_clears() -> None:
    policy = Policy(lock_cap=100.0)
    state = TokenState(kind=Kind.TOTP)
    now = NOW
    for _ in range(4):
        state = core.verify(state, KEY, "000000", now, policy).state
    assert state.locked_until == 0.0
    state = core.verify(state, KEY, "000000", now, policy).state  # 5th failure
    assert state.locked_until == now + 30
    # While locked: refused as locked, even the right code, without counting a failure.
    good = code_at(int(now // 30))
    locked = core.verify(state, KEY, good, now + 10, policy)
    assert locked.reason is Reason.LOCKED and locked.retry_after == pytest.approx(20)
    assert locked.state.failures == 5
    assert core.resync(state, KEY, good, good, now + 10, policy).reason is Reason.LOCKED
    waits = []
    for _ in range(4):
        now = state.locked_until
        state = core.verify(state, KEY, "000000", now, policy).state
        waits.append(state.locked_until - now)
    assert waits == [60, 100, 100, 100]  # doubling, capped
    now = state.locked_until
    ok = core.verify(state, KEY, code_at(int(now // 30)), now, policy)
    assert ok.accepted and ok.state.failures == 0 and ok.state.locked_until == 0
    assert core.unlock(state).failures == 0


def test_state_json_roundtrip_keeps_drift() -> None:
    state = TokenState(kind=Kind.TOTP, digits=8, hash="sha256", period=60, t0=5)
    s = int((NOW - 5) // 60)
    d = core.resync(state, KEY, hotp(KEY, s - 1, 8, "sha256"), hotp(KEY, s, 8, "sha256"),
                    NOW)
    assert d.accepted
    assert TokenState.from_json(d.state.to_json()) == d.state


def test_steps_before_t0_are_refused_not_crashed() -> None:
    """Near T0 the window (and a resync search) reaches negative steps: no such code."""
    key = bytes(range(20))
    fresh = TokenState(kind=Kind.TOTP)
    assert core.verify(fresh, key, "123456", 10.0).reason is Reason.INVALID_CODE
    assert core.verify(fresh, key, hotp(key, 0), 10.0).accepted
    assert core.resync(fresh, key, "123456", "654321", 10.0).reason is Reason.INVALID_CODE
    late = TokenState(kind=Kind.TOTP, t0=1_000)
    assert core.verify(late, key, "123456", 0.0).reason is Reason.INVALID_CODE


def test_stored_state_json_from_before_still_loads_and_round_trips() -> None:
    """A state as the store wrote it before the hot-path rework (same JSON form)."""
    stored = {
        "kind": "totp", "digits": 6, "algorithm": "sha1", "period": 30, "t0": 0,
        "window": None, "watermark": 56666700, "failures": 2, "locked_until": 0.0,
        "drift": {"offset": 0.5, "tref": 1700000998.0,
                  "poly": [[-2.0, -0.0001], [33.0, -0.0001], [33.0, 0.0001], [-2.0, 0.0001]],
                  "history": [[1700000998.0, -2.0, 33.0]],
                  "soft": [[-2.0, -0.0001], [3.0, -0.0001], [3.0, 0.0001], [-2.0, 0.0001]]},
    }
    state = TokenState.from_json(stored)
    assert state.to_json() == stored
    assert TokenState.from_json(state.to_json()) == state
    assert hash(state) == hash(TokenState.from_json(stored))  # hashable, as before
    key = bytes(range(20))
    decision = core.verify(state, key, hotp(key, 56666701), 56666701 * 30 + 3.0)
    assert decision.accepted and decision.state.failures == 0
    assert decision.state.drift.history[-1][0] == 56666701 * 30 + 3.0
    assert state.watermark == 56666700  # the input state is never changed in place


@pytest.mark.parametrize("kind", [Kind.TOTP, Kind.HOTP])
def test_wrong_and_malformed_codes_lock_at_now(kind: Kind) -> None:
    """The lock is timed from `now` for malformed and wrong codes alike (mutation testing
    found neither path's `now` checked)."""
    policy = Policy(max_failures=2, lock_base=30.0)
    base = int(NOW // 30)
    near = {code_at(n) for n in (*range(0, 20), *range(base - 30, base + 30))}
    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in near)
    for bad in ("12345", wrong):
        state = TokenState(kind=kind, watermark=3)
        for i in range(2):
            d = core.verify(state, KEY, bad, NOW + i, policy)
            assert d.reason is Reason.INVALID_CODE
            state = d.state
        assert state.failures == 2 and state.locked_until == NOW + 1 + 30.0


@pytest.mark.parametrize("hash_", ["sha256", "sha512"])
def test_replays_are_found_with_the_tokens_own_hash(hash_: str) -> None:
    """A SHA-256/512 token's old codes are replays too: the replay memory computes them
    with the token's hash, not SHA-1."""
    base = int(NOW // 30)
    state = TokenState(kind=Kind.TOTP, hash=hash_)
    d = core.verify(state, KEY, hotp(KEY, base, 6, hash_), NOW)
    assert d.accepted
    late = core.verify(d.state, KEY, hotp(KEY, base, 6, hash_), NOW + 300)
    assert late.reason is Reason.REPLAYED and late.state is d.state
    hstate = TokenState(kind=Kind.HOTP, hash=hash_, watermark=40)
    d = core.verify(hstate, KEY, hotp(KEY, 33, 6, hash_), NOW, Policy(hotp_lookahead=2))
    assert d.reason is Reason.REPLAYED
    d = core.verify(hstate, KEY, hotp(KEY, 41, 6, hash_), NOW)
    assert d.accepted and d.state.watermark == 41


def test_replay_memory_reaches_counter_zero_and_no_further() -> None:
    policy = Policy(replay_memory=8, hotp_lookahead=1)
    state = TokenState(kind=Kind.HOTP, watermark=2)
    assert core.verify(state, KEY, code_at(0), NOW, policy).reason is Reason.REPLAYED
    wrong = next(f"{n:06d}" for n in range(10**6)
                 if f"{n:06d}" not in {code_at(c) for c in range(0, 6)})
    assert core.verify(state, KEY, wrong, NOW, policy).reason is Reason.INVALID_CODE
    totp = TokenState(kind=Kind.TOTP, watermark=1, t0=int(NOW) - 45)
    assert core.verify(totp, KEY, code_at(0), NOW + 600, policy).reason is Reason.REPLAYED

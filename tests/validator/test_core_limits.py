"""The core's edges: what a policy and a token state accept and refuse (with the message an
operator sees), the stored form, and the exact decisions at the boundaries of the window,
the lock, the replay memory, the near-miss search and resync. Written from the survivors of
`make mutation` (docs/benchmarks.md): each test pins a behaviour that a one-token change in
validator/core.py altered without any other test noticing."""

from __future__ import annotations

import pytest
from window_spec import window_spec

from protocol import Hash, Kind
from validator import core
from validator.core import Policy, Reason, TokenState
from validator.drift import Drift, DriftPolicy
from validator.otp import hotp

KEY = b"12345678901234567890"

COUNTS_MSG = ("window, max_window, hotp_lookahead, near_miss_steps, replay_memory must be "
              ">= 0 and max_failures >= 1")
RATES_MSG = ("window_rate_ppm, window_rate_change_ppm, window_unsteady_ppm and "
             "window_young_ppm must be within 0-10000")
LOCK_MSG = "lock_base > 0, lock_cap >= lock_base and history >= 1 required"


@pytest.mark.parametrize("field", ["window", "hotp_lookahead", "near_miss_steps",
                                   "max_window", "replay_memory"])
def test_policy_counts_may_be_zero_but_not_negative(field: str) -> None:
    assert getattr(Policy(**{field: 0}), field) == 0
    with pytest.raises(ValueError) as raised:
        Policy(**{field: -1})
    assert str(raised.value) == COUNTS_MSG


def test_policy_needs_at_least_one_failure_before_a_lock() -> None:
    assert Policy(max_failures=1).max_failures == 1
    with pytest.raises(ValueError) as raised:
        Policy(max_failures=0)
    assert str(raised.value) == COUNTS_MSG


@pytest.mark.parametrize("field", ["window_rate_ppm", "window_rate_change_ppm",
                                   "window_unsteady_ppm", "window_young_ppm"])
def test_policy_rates_are_bounded_to_0_to_10000_ppm(field: str) -> None:
    for ok in (0.0, 10_000.0):
        assert getattr(Policy(**{field: ok}), field) == ok
    for bad in (-0.001, 10_000.001):
        with pytest.raises(ValueError) as raised:
            Policy(**{field: bad})
        assert str(raised.value) == RATES_MSG


def test_policy_lock_and_history_bounds() -> None:
    assert Policy(lock_base=0.5, lock_cap=0.5, history=1).lock_cap == 0.5
    for bad in ({"lock_base": 0.0}, {"lock_base": 10.0, "lock_cap": 9.99}, {"history": 0}):
        with pytest.raises(ValueError) as raised:
            Policy(**bad)
        assert str(raised.value) == LOCK_MSG


def test_token_state_digits_bounds_and_message() -> None:
    assert TokenState(kind=Kind.TOTP, digits=6).digits == 6
    assert TokenState(kind=Kind.TOTP, digits=10).digits == 10
    for bad in (5, 11):
        with pytest.raises(ValueError) as raised:
            TokenState(kind=Kind.TOTP, digits=bad)
        assert str(raised.value) == f"digits must be 6 to 10, not {bad}"


def test_token_state_period_and_window_bounds() -> None:
    assert TokenState(kind=Kind.TOTP, period=1).period == 1
    assert TokenState(kind=Kind.TOTP, window=0).window == 0
    with pytest.raises(ValueError, match="^period must be positive$"):
        TokenState(kind=Kind.TOTP, period=0)
    with pytest.raises(ValueError, match="^window must be >= 0$"):
        TokenState(kind=Kind.TOTP, window=-1)


def test_token_state_takes_labels_and_keeps_the_enums() -> None:
    state = TokenState(kind="hotp", hash="sha256")  # type: ignore[arg-type]
    assert state.kind is Kind.HOTP and state.hash is Hash.SHA256
    with pytest.raises(ValueError):
        TokenState(kind="motp")  # type: ignore[arg-type]


def test_defaults_of_a_new_token_state() -> None:
    state = TokenState(kind=Kind.TOTP)
    assert (state.digits, state.hash, state.period, state.t0, state.window, state.watermark,
            state.failures, state.locked_until, state.expires) == (
        6, Hash.SHA1, 30, 0, None, None, 0, 0.0, None)
    assert state.drift == Drift()
    assert state.next_counter == 0
    assert TokenState(kind=Kind.HOTP, watermark=0).next_counter == 1
    assert TokenState(kind=Kind.HOTP, watermark=41).next_counter == 42


def test_to_json_is_the_stored_form() -> None:
    state = TokenState(kind=Kind.HOTP, digits=8, hash=Hash.SHA512, period=60, t0=7,
                       window=2, watermark=9, failures=3, locked_until=12.5)
    assert state.to_json() == {
        "kind": "hotp", "digits": 8, "algorithm": "sha512", "period": 60, "t0": 7,
        "window": 2, "watermark": 9, "drift": Drift().to_json(), "failures": 3,
        "locked_until": 12.5}
    assert TokenState(kind=Kind.TOTP, expires=99.0).to_json()["expires"] == 99.0


def test_from_json_fills_what_old_rows_lack_and_converts_types() -> None:
    minimal = {"kind": "totp", "digits": "8", "algorithm": "sha256", "period": "60",
               "t0": "5"}
    state = TokenState.from_json(minimal)
    assert state == TokenState(kind=Kind.TOTP, digits=8, hash=Hash.SHA256, period=60, t0=5)
    assert (state.window, state.watermark, state.failures, state.locked_until,
            state.expires, state.drift) == (None, None, 0, 0.0, None, Drift())
    assert type(state.digits) is int and type(state.period) is int and type(state.t0) is int
    assert type(state.failures) is int and type(state.locked_until) is float
    full = dict(minimal, window=1, watermark=3, failures="2", locked_until="7",
                expires="100", drift=None)
    loaded = TokenState.from_json(full)
    assert (loaded.window, loaded.watermark, loaded.failures, loaded.locked_until,
            loaded.expires) == (1, 3, 2, 7.0, 100.0)
    assert type(loaded.failures) is int and type(loaded.locked_until) is float
    assert type(loaded.expires) is float
    assert TokenState.from_json(dict(minimal, expires=None)).expires is None


def test_reason_strings_are_stable() -> None:
    assert [r.value for r in Reason] == ["accepted", "invalid_code", "replayed", "locked",
                                         "no_device", "not_enabled", "expired"]


def test_default_policy_values() -> None:
    p = core.DEFAULT_POLICY
    assert (p.window, p.hotp_lookahead, p.resync_seconds, p.resync_counters, p.max_failures,
            p.lock_base, p.lock_cap, p.max_devices, p.drift_policy, p.typing_allowance,
            p.fresh_allowance, p.max_rate_ppm, p.history, p.near_miss_steps, p.max_window,
            p.window_rate_ppm, p.window_rate_change_ppm, p.window_unsteady_ppm,
            p.window_young_ppm, p.replay_memory) == (
        1, 10, 86_400, 1_000, 5, 30.0, 3_600.0, 8, DriftPolicy.TRACKING, 5.0, 5.0, 100.0,
        32, 8, 4, 50.0, 1.0, 18.0, 8.0, 8)


def test_hotp_code_at_the_last_lookahead_counter_only() -> None:
    policy = Policy(hotp_lookahead=3)
    state = TokenState(kind=Kind.HOTP)
    assert core.verify(state, KEY, hotp(KEY, 4), 0.0, policy).reason is Reason.INVALID_CODE
    decision = core.verify(state, KEY, hotp(KEY, 3), 0.0, policy)
    assert decision.accepted and decision.matched == 3 and decision.state.watermark == 3
    assert decision.window == 4


NOW = 1_800_000_000.0
STEP = int(NOW // 30)


def _wrong(*used: int) -> str:
    """A well-formed code that is no code of the counters or steps `used`."""
    taken = {hotp(KEY, n) for n in used}
    return next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in taken)


def _failed(state: TokenState, now: float = NOW) -> TokenState:
    return core.record_failure(state, now, core.DEFAULT_POLICY)


def test_unlock_clears_the_lock_entirely() -> None:
    locked = TokenState(kind=Kind.HOTP, failures=7, locked_until=NOW + 100)
    free = core.unlock(locked)
    assert (free.failures, free.locked_until) == (0, 0.0)
    assert core.verify(free, KEY, hotp(KEY, 0), 0.5).accepted


def test_record_failure_counts_and_locks_from_the_limit_on() -> None:
    policy = Policy(max_failures=3, lock_base=10.0, lock_cap=35.0)
    state = TokenState(kind=Kind.HOTP)
    seen = []
    for i in range(6):
        state = core.record_failure(state, NOW + i, policy)
        seen.append((state.failures, state.locked_until))
    assert seen == [(1, 0.0), (2, 0.0), (3, NOW + 2 + 10.0), (4, NOW + 3 + 20.0),
                    (5, NOW + 4 + 35.0), (6, NOW + 5 + 35.0)]
    # A huge failure count still gives the cap (the exponent is bounded), never an error.
    many = TokenState(kind=Kind.HOTP, failures=10_000)
    assert core.record_failure(many, NOW, policy).locked_until == NOW + 35.0


def test_hotp_refusals_are_whole_decisions() -> None:
    """Every field of a refused HOTP decision: no match, no wait, no near miss, and the
    look-ahead as the guessing surface."""
    policy = Policy(hotp_lookahead=4, replay_memory=3)
    state = TokenState(kind=Kind.HOTP, watermark=10, failures=1)
    for code in ("12345", "12a456", _wrong(*range(0, 20))):
        assert core.verify(state, KEY, code, NOW, policy) == core.Decision(
            Reason.INVALID_CODE, core.record_failure(state, NOW, policy), None, 0.0, None, 5)
    replay = core.verify(state, KEY, hotp(KEY, 9), NOW, policy)
    assert replay == core.Decision(Reason.REPLAYED, state, None, 0.0, None, 5)
    assert replay.state is state
    ok = core.verify(state, KEY, hotp(KEY, 13), NOW, policy)
    assert ok == core.Decision(Reason.ACCEPTED, TokenState(kind=Kind.HOTP, watermark=13),
                               13, 0.0, None, 5)


def test_hotp_replay_memory_is_at_least_the_lookahead() -> None:
    """With a short replay memory, an HOTP code as far back as the look-ahead is still a
    replay (a code the token showed and someone used), and one further back is wrong."""
    policy = Policy(hotp_lookahead=4, replay_memory=1)
    state = TokenState(kind=Kind.HOTP, watermark=10)
    for n in range(6, 11):
        assert core.verify(state, KEY, hotp(KEY, n), NOW, policy).reason is Reason.REPLAYED
    assert core.verify(state, KEY, hotp(KEY, 5), NOW, policy).reason is Reason.INVALID_CODE


def test_totp_refusals_are_whole_decisions() -> None:
    """A fresh TOTP token (no drift learnt): the window is the believed step ±1; steps at or
    before the watermark leave the surface."""
    state = TokenState(kind=Kind.TOTP, failures=2)
    now = STEP * 30 + 15.0
    for code in ("12345", "1234567", "12345a", "١٢٣٤٥٦", _wrong(*range(STEP - 10, STEP + 10))):
        assert core.verify(state, KEY, code, now) == core.Decision(
            Reason.INVALID_CODE, _failed(state, now), None, 0.0, None, 3)
    used = TokenState(kind=Kind.TOTP, watermark=STEP, failures=2)
    replay = core.verify(used, KEY, hotp(KEY, STEP), now)
    assert replay == core.Decision(Reason.REPLAYED, used, None, 0.0, None, 1)
    assert replay.state is used
    assert core.verify(used, KEY, "12345", now).window == 1
    ahead = TokenState(kind=Kind.TOTP, watermark=STEP + 1)
    assert core.verify(ahead, KEY, "12345", now).window == 0


def test_totp_accepted_decisions_name_the_step_and_clear_failures() -> None:
    state = TokenState(kind=Kind.TOTP, failures=3, watermark=STEP - 5)
    now = STEP * 30 + 15.0
    for step in (STEP - 1, STEP, STEP + 1):
        d = core.verify(state, KEY, hotp(KEY, step), now)
        assert d.accepted and d.matched == step and d.retry_after == 0.0
        assert d.near_miss is None and d.window == 3
        assert (d.state.watermark, d.state.failures, d.state.locked_until) == (step, 0, 0.0)
        assert d.state.drift != state.drift and d.state.drift.history[-1][0] == now
        assert core.verify_reference(state, KEY, hotp(KEY, step), now) == d


def test_locked_and_expired_decisions() -> None:
    state = TokenState(kind=Kind.TOTP, failures=5, locked_until=NOW + 12.5)
    good = hotp(KEY, STEP)
    for verify in (core.verify, core.verify_reference):
        assert verify(state, KEY, good, NOW) == core.Decision(
            Reason.LOCKED, state, None, 12.5, None, 0)
        # The lock lifts at exactly `locked_until`.
        assert verify(state, KEY, good, NOW + 12.5).accepted
    assert core.resync(state, KEY, good, good, NOW) == core.Decision(
        Reason.LOCKED, state, None, 12.5, None, 0)
    assert core.resync(state, KEY, hotp(KEY, STEP - 1), good, NOW + 12.5).accepted
    expiring = TokenState(kind=Kind.HOTP, expires=NOW)
    for verify in (core.verify, core.verify_reference):
        assert verify(expiring, KEY, hotp(KEY, 0), NOW - 0.001).accepted
        assert verify(expiring, KEY, hotp(KEY, 0), NOW) == core.Decision(
            Reason.EXPIRED, expiring)
    assert core.resync(expiring, KEY, hotp(KEY, 0), hotp(KEY, 1), NOW - 0.001).accepted
    assert core.resync(expiring, KEY, hotp(KEY, 0), hotp(KEY, 1), NOW) == core.Decision(
        Reason.EXPIRED, expiring)


def test_resync_refusals_are_whole_decisions_and_lock_at_now() -> None:
    policy = Policy(max_failures=2, resync_counters=50, resync_seconds=300)
    h = TokenState(kind=Kind.HOTP, failures=1, watermark=3)
    malformed = core.resync(h, KEY, "12345", hotp(KEY, 5), NOW, policy)
    assert malformed == core.Decision(Reason.INVALID_CODE,
                                      core.record_failure(h, NOW, policy), None, 0.0, None, 0)
    assert malformed.state.locked_until == NOW + 30.0
    wrong = core.resync(h, KEY, hotp(KEY, 5), hotp(KEY, 7), NOW, policy)
    assert wrong == core.Decision(Reason.INVALID_CODE, core.record_failure(h, NOW, policy),
                                  None, 0.0, None, 51)
    ok = core.resync(h, KEY, hotp(KEY, 54), hotp(KEY, 55), NOW, policy)
    assert ok == core.Decision(Reason.ACCEPTED, TokenState(kind=Kind.HOTP, watermark=55),
                               55, 0.0, None, 51)
    assert core.resync(h, KEY, hotp(KEY, 55), hotp(KEY, 56), NOW, policy).reason is \
        Reason.INVALID_CODE
    t = TokenState(kind=Kind.TOTP, failures=1, watermark=STEP)
    now = STEP * 30 + 15.0
    wrong = core.resync(t, KEY, hotp(KEY, STEP + 3), hotp(KEY, STEP + 5), now, policy)
    assert wrong == core.Decision(Reason.INVALID_CODE, core.record_failure(t, now, policy),
                                  None, 0.0, None, 21)
    replayed = core.resync(t, KEY, hotp(KEY, STEP - 2), hotp(KEY, STEP - 1), now, policy)
    assert replayed == core.Decision(Reason.REPLAYED, t, None, 0.0, None, 21)


def test_both_verifiers_lock_an_hotp_token_at_now() -> None:
    policy = Policy(max_failures=1, lock_base=30.0)
    state = TokenState(kind=Kind.HOTP)
    for verify in (core.verify, core.verify_reference):
        d = verify(state, KEY, _wrong(*range(0, 12)), NOW, policy)
        assert d.reason is Reason.INVALID_CODE and d.state.locked_until == NOW + 30.0


P60 = Policy(typing_allowance=3.0, max_rate_ppm=20.0, history=2, fresh_allowance=2.0)


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_an_accepted_totp_code_is_observed_with_the_policys_figures(verify) -> None:
    """Period 60, T0 7, a 3 s typing allowance, a 20 ppm rate bound, 2 codes of history:
    each accepted code (the believed step, then a neighbour) adds what it proves, the
    offset interval [sP+T0-now, sP+T0-now+P+3], and the oldest beyond 2 is dropped."""
    from validator import drift as d
    state = TokenState(kind=Kind.TOTP, period=60, t0=7)
    s = 30_000_000
    seen = []
    for k, (step, now) in enumerate([(s, s * 60 + 7 + 31.5), (s + 11, (s + 10) * 60 + 7 + 50.0),
                                     (s + 20, (s + 20) * 60 + 7 + 20.0)]):
        dec = verify(state, KEY, hotp(KEY, step), now, P60)
        assert dec.accepted and dec.matched == step, (k, dec.reason)
        state = dec.state
        seen.append(d.interval(step, now, 60, 7, 3.0))
        assert state.drift.history == tuple(seen[-2:])
    rates = [r for _, r in state.drift.poly]
    assert max(abs(r) for r in rates) <= 20e-6 + 1e-12
    first = verify(TokenState(kind=Kind.TOTP, period=60, t0=7), KEY, hotp(KEY, s),
                   s * 60 + 7 + 31.5, P60).state.drift
    assert max(r for _, r in first.poly) == pytest.approx(20e-6)
    assert min(r for _, r in first.poly) == pytest.approx(-20e-6)


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_whole_step_and_sync_only_policies_observe_accepted_codes_their_way(verify) -> None:
    now = STEP * 30 + 15.0
    fresh = TokenState(kind=Kind.TOTP)
    whole = verify(fresh, KEY, hotp(KEY, STEP + 1), now,
                   Policy(drift_policy=DriftPolicy.WHOLE_STEP))
    assert whole.accepted and whole.state.drift.offset == 30.0
    assert whole.state.drift.history == ()
    same = verify(fresh, KEY, hotp(KEY, STEP), now, Policy(drift_policy=DriftPolicy.WHOLE_STEP))
    assert same.accepted and same.state.drift.offset == 0.0
    sync = verify(fresh, KEY, hotp(KEY, STEP + 1), now,
                  Policy(drift_policy=DriftPolicy.SYNC_ONLY))
    assert sync.accepted and sync.state.drift == fresh.drift


def test_a_totp_resync_resets_the_drift_to_what_the_pair_shows() -> None:
    from validator import drift as d
    state = TokenState(kind=Kind.TOTP, period=60, t0=7)
    center = 30_000_000
    now = center * 60 + 7 + 40.0
    second = center + 5
    r = core.resync(state, KEY, hotp(KEY, second - 1), hotp(KEY, second), now, P60)
    assert r.accepted and r.matched == second and r.state.watermark == second
    obs = d.interval(second, now, 60, 7, 3.0)
    assert r.state.drift.history == (obs,)
    assert r.state.drift == d.reset(state.drift, obs, policy=DriftPolicy.TRACKING, period=60,
                                    max_rate=20.0 * 1e-6, fresh=2.0)
    assert r.window == 2 * (86_400 // 60) + 1
    whole = core.resync(state, KEY, hotp(KEY, second - 1), hotp(KEY, second), now,
                        Policy(drift_policy=DriftPolicy.WHOLE_STEP))
    assert whole.accepted and whole.state.drift == d.Drift(offset=300.0)


def test_resync_search_bounds() -> None:
    """At least one step either side, even when the range is shorter than a period; the
    pair may start right after the watermark; the first pair of all is steps 0 and 1."""
    short = Policy(resync_seconds=10)
    now = STEP * 30 + 15.0
    state = TokenState(kind=Kind.TOTP)
    near = core.resync(state, KEY, hotp(KEY, STEP), hotp(KEY, STEP + 1), now, short)
    assert near.accepted and near.window == 3
    low = core.resync(state, KEY, hotp(KEY, STEP - 2), hotp(KEY, STEP - 1), now, short)
    assert low.accepted and low.matched == STEP - 1
    assert not core.resync(state, KEY, hotp(KEY, STEP + 1), hotp(KEY, STEP + 2), now,
                           short).accepted
    assert not core.resync(state, KEY, hotp(KEY, STEP - 3), hotp(KEY, STEP - 2), now,
                           short).accepted
    used = TokenState(kind=Kind.TOTP, watermark=STEP - 1)
    assert core.resync(used, KEY, hotp(KEY, STEP), hotp(KEY, STEP + 1), now).accepted
    start = core.resync(state, KEY, hotp(KEY, 0), hotp(KEY, 1), 35.0)
    assert start.accepted and start.matched == 1


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_a_code_shared_by_a_used_step_and_a_fresh_one_is_accepted_at_the_fresh_one(
        verify) -> None:
    """Two steps can show the same code (one pair in a million does). This key's codes at
    STEP and STEP + 1 are both 482583: with STEP used, the code is still good for STEP + 1,
    so the search goes on past the replayed step instead of stopping there."""
    key = (210372).to_bytes(20, "big")
    assert hotp(key, STEP) == hotp(key, STEP + 1) == "482583"
    used = TokenState(kind=Kind.TOTP, watermark=STEP)
    d = verify(used, key, "482583", STEP * 30 + 15.0)
    assert d.accepted and d.matched == STEP + 1


def test_the_reference_also_accepts_step_zero() -> None:
    key = bytes(range(20))
    for verify in (core.verify, core.verify_reference):
        d = verify(TokenState(kind=Kind.TOTP), key, hotp(key, 0), 10.0)
        assert d.accepted and d.matched == 0


def _unused_for(days: float, policy: Policy, t0: int = 0) -> tuple[
        bytes, TokenState, float, int, int]:
    """A token (T0 at `t0`) enabled at about NOW and unused for `days`: its key, state, the
    time, and the window's first and last step then."""
    key = bytes(range(7, 27))
    enabled = core.check_enable(TokenState(kind=Kind.TOTP, t0=t0), key, hotp(key, STEP - 1),
                                hotp(key, STEP), STEP * 30 + t0 + 12.0, policy).state
    now = NOW + days * 86_400.0
    first, last = core.window_steps(enabled, now, _center(enabled, now, policy), policy)
    return key, enabled, now, first, last


def _center(state: TokenState, now: float, policy: Policy) -> float:
    shown = now - policy.typing_allowance / 2
    return (shown + state.drift.predict(shown) - state.t0) / state.period


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_a_near_miss_teaches_the_tracker_and_counts_as_a_failure(verify) -> None:
    from validator import drift as d
    policy = Policy(typing_allowance=3.0, max_rate_ppm=90.0)
    key, state, now, first, last = _unused_for(100, policy, t0=13)
    assert last - first + 1 == 9  # capped at ±4
    for step in (last + 1, first - 1, last + 2):
        dec = verify(state, key, hotp(key, step), now, policy)
        learnt = d.learn(state.drift, d.interval(step, now, 30, 13, 3.0), history=32,
                         max_rate=90.0 * 1e-6)
        assert dec == core.Decision(Reason.INVALID_CODE,
                                    core.record_failure(TokenState.from_json(
                                        {**state.to_json(), "drift": learnt.to_json()}),
                                        now, policy), None, 0.0, step, 9), step
        assert dec.state.drift != state.drift
    # Off: no near-miss search, nothing learnt.
    for off in (Policy(typing_allowance=3.0, max_rate_ppm=90.0, near_miss_steps=0),
                Policy(typing_allowance=3.0, max_rate_ppm=90.0,
                       drift_policy=DriftPolicy.WHOLE_STEP)):
        dec = verify(state, key, hotp(key, last + 1), now, off)
        assert dec.reason is Reason.INVALID_CODE and dec.near_miss is None
        assert dec.state.drift == state.drift and dec.state.failures == 1


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_the_near_miss_search_is_limited(verify) -> None:
    """Only `near_miss_steps` steps outside the window, nearest first; none at or before
    the watermark; none where the clock cannot physically be."""
    policy = Policy(near_miss_steps=1)
    sides = set()
    for days in (100.0, 100.0 + 15 / 86_400, 100.0 + 30 / 86_400, 100.0 + 45 / 86_400):
        key, state, now, first, last = _unused_for(days, policy, t0=13)
        center = _center(state, now, policy)
        nearer = min((first - 1, last + 1), key=lambda s: abs(s + 0.5 - center))
        sides.add(nearer == first - 1)
        for s in (first - 1, last + 1):
            assert verify(state, key, hotp(key, s), now, policy).near_miss == (
                s if s == nearer else None)
        for s in (first - 2, last + 2):
            assert verify(state, key, hotp(key, s), now, policy).near_miss is None
    assert sides == {True, False}  # the belief's fraction put either side nearer
    # The watermark bounds the search from below.
    used = TokenState.from_json({**state.to_json(), "watermark": first - 1})
    dec = verify(used, key, hotp(key, first - 1), now)
    assert dec.reason is Reason.REPLAYED and dec.near_miss is None
    below = TokenState.from_json({**state.to_json(), "watermark": first - 2})
    assert verify(below, key, hotp(key, first - 1), now).near_miss == first - 1
    # Three days after enabling, two steps past the window's edge is a clock that ran at
    # more than 100 ppm: impossible, so not compared.
    key, state, now, first, last = _unused_for(3, Policy(), t0=13)
    for s in (last + 2, first - 2):
        dec = verify(state, key, hotp(key, s), now)
        assert dec.near_miss is None and dec.state.drift == state.drift


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_a_used_step_outside_the_window_is_never_a_near_miss(verify) -> None:
    """With no replay memory, a code of the watermark's step (just below the window) is a
    plain wrong code: the near-miss search starts after the watermark."""
    policy = Policy(replay_memory=0)
    key, state, now, first, last = _unused_for(100, policy)
    used = TokenState.from_json({**state.to_json(), "watermark": first - 1})
    dec = verify(used, key, hotp(key, first - 1), now, policy)
    assert dec.reason is Reason.INVALID_CODE and dec.near_miss is None
    assert dec.state.drift == used.drift and dec.state.failures == 1


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_near_t0_the_window_skips_negative_steps_and_keeps_searching(verify) -> None:
    """Believed step 0 (the window reaches step -1, nearer than step 1): step 1's code is
    still found. Believed step 1: step 0's code is accepted from the window's edge."""
    key = bytes(range(20))
    fresh = TokenState(kind=Kind.TOTP)
    d = verify(fresh, key, hotp(key, 1), 5.5)
    assert d.accepted and d.matched == 1
    d = verify(fresh, key, hotp(key, 0), 35.0)
    assert d.accepted and d.matched == 0


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_of_two_steps_showing_the_same_code_the_one_nearest_the_belief_is_taken(
        verify) -> None:
    """The window is searched nearest the believed step first: with this key's STEP and
    STEP + 1 both showing 482583 and the belief at STEP + 2.5, the code is taken as
    STEP + 1's, the likelier one to be on display (and what the drift tracker learns)."""
    key = (210372).to_bytes(20, "big")
    now = (STEP + 2.5) * 30 + 2.5
    d = verify(TokenState(kind=Kind.TOTP), key, "482583", now, Policy(window=2))
    assert d.accepted and d.matched == STEP + 1


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_the_window_is_sized_only_by_a_tracking_policy_with_room_above_window(
        verify) -> None:
    """100 days unused: tracking widens ±1 to the ±4 cap (9 steps). Whole-step keeps ±1
    (3) even for a token whose tracker learnt a rate; a cap at or below `window` keeps
    ±`window`, never less."""
    key, state, now, first, last = _unused_for(100, Policy())
    assert last - first + 1 == 9
    assert verify(state, key, "12345", now).window == 9
    whole = Policy(drift_policy=DriftPolicy.WHOLE_STEP)
    assert verify(state, key, "12345", now, whole).window == 3
    assert verify(state, key, "12345", now, Policy(window=2, max_window=1)).window == 5
    assert verify(state, key, "12345", now, Policy(window=2, max_window=2)).window == 5


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_a_tokens_own_window_overrides_the_policys(verify) -> None:
    now = STEP * 30 + 15.0
    for window, accepted in ((0, False), (2, True)):
        state = TokenState(kind=Kind.TOTP, window=window)
        d = verify(state, KEY, hotp(KEY, STEP + 2 if window else STEP + 1), now)
        assert d.accepted is accepted and d.window == 2 * window + 1


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_before_t0_the_believed_step_is_rounded_down(verify) -> None:
    """At 30 s with T0 at 40 s the token is believed 0.4 steps before its first step: the
    window is steps -2 to 0, so step 0's code is good and step 1's is not."""
    key = bytes(range(20))
    late = TokenState(kind=Kind.TOTP, t0=40)
    assert verify(late, key, hotp(key, 0), 30.0).accepted
    assert verify(late, key, hotp(key, 1), 30.0).reason is Reason.INVALID_CODE


@pytest.mark.parametrize("days", [0.2, 3.0, 10.0, 20.0, 30.0, 45.0, 80.0, 150.0, 400.0])
@pytest.mark.parametrize("policy", [
    Policy(),
    Policy(window_rate_ppm=30.0, window_rate_change_ppm=3.0, window_unsteady_ppm=20.0,
           typing_allowance=4.0, max_window=6),
])
def test_the_sized_window_is_every_step_the_clock_can_be_at(days: float,
                                                          policy: Policy) -> None:
    key, state, now, first, last = _unused_for(days, policy, t0=13)
    assert state.drift.bent(now) is None  # too few codes for a curve: centred on the belief
    assert (first, last) == window_spec(state, now, policy)
    wrong = core.verify(state, key, "12345", now, policy)
    assert wrong.window == last - first + 1
    for step in (first, last):
        d = core.verify(state, key, hotp(key, step), now, policy)
        assert d.accepted and d.matched == step and d.window == last - first + 1


def test_of_two_steps_showing_the_same_code_the_reference_takes_the_nearer() -> None:
    """As above, with the belief 0.8 and 1.2 steps past STEP: the nearer step's middle
    decides (the fast path agrees: there the believed step itself is the nearer)."""
    key = (210372).to_bytes(20, "big")
    for offset, expected in ((0.8, STEP), (1.2, STEP + 1)):
        now = (STEP + offset) * 30 + 2.5
        for verify in (core.verify, core.verify_reference):
            d = verify(TokenState(kind=Kind.TOTP), key, "482583", now)
            assert d.accepted and d.matched == expected, (offset, verify)


def test_hotp_resync_never_reuses_counters_and_clears_a_lapsed_lock() -> None:
    state = TokenState(kind=Kind.HOTP, watermark=10, failures=6, locked_until=NOW - 1)
    assert core.resync(state, KEY, hotp(KEY, 3), hotp(KEY, 4), NOW).reason is \
        Reason.INVALID_CODE
    ok = core.resync(state, KEY, hotp(KEY, 11), hotp(KEY, 12), NOW)
    assert ok.accepted and (ok.state.watermark, ok.state.failures,
                            ok.state.locked_until) == (12, 0, 0.0)
    totp = TokenState(kind=Kind.TOTP, failures=6, locked_until=NOW - 1)
    ok = core.resync(totp, KEY, hotp(KEY, STEP - 1), hotp(KEY, STEP), STEP * 30 + 10.0)
    assert ok.accepted and (ok.state.failures, ok.state.locked_until) == (0, 0.0)


def test_a_short_resync_range_is_centred_on_the_tokens_believed_clock() -> None:
    """With ±60 s the pair must be within 2 steps of where the token's clock is believed:
    T0 moves it, and so does the drift a previous resync learnt."""
    short = Policy(resync_seconds=60)
    t0 = 600  # 20 steps
    late = TokenState(kind=Kind.TOTP, t0=t0)
    now = STEP * 30 + 10.0
    s = int((now - t0) // 30)
    assert core.resync(late, KEY, hotp(KEY, s - 1), hotp(KEY, s), now, short).accepted
    # 10 steps ahead, learnt by a full-range resync; then a short one an hour later.
    ahead = core.resync(TokenState(kind=Kind.TOTP), KEY, hotp(KEY, STEP + 9),
                        hotp(KEY, STEP + 10), now)
    assert ahead.accepted and ahead.state.drift.predict(now) > 250
    later = now + 3600
    s = int((later + 300) // 30)
    again = core.resync(ahead.state, KEY, hotp(KEY, s - 1), hotp(KEY, s), later, short)
    assert again.accepted and again.matched == s


def test_enable_uses_the_policy_given() -> None:
    now = STEP * 30 + 10.0
    pair = (hotp(KEY, STEP + 9), hotp(KEY, STEP + 10))
    fresh = TokenState(kind=Kind.TOTP)
    assert core.check_enable(fresh, KEY, *pair, now).accepted
    refused = core.check_enable(fresh, KEY, *pair, now, Policy(resync_seconds=60))
    assert refused.reason is Reason.INVALID_CODE and refused.window == 5


def test_a_near_miss_is_found_with_the_tokens_own_hash() -> None:
    key = bytes(range(32))
    policy = Policy()
    state = core.check_enable(TokenState(kind=Kind.TOTP, hash="sha256"), key,
                              hotp(key, STEP - 1, 6, "sha256"), hotp(key, STEP, 6, "sha256"),
                              STEP * 30 + 12.0, policy).state
    now = NOW + 100 * 86_400.0
    first, last = core.window_steps(state, now, _center(state, now, policy), policy)
    d = core.verify(state, key, hotp(key, last + 1, 6, "sha256"), now)
    assert d.near_miss == last + 1


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_an_accepted_code_keeps_the_keys_expiry(verify) -> None:
    now = STEP * 30 + 15.0
    state = TokenState(kind=Kind.TOTP, expires=now + 86_400)
    d = verify(state, KEY, hotp(KEY, STEP), now)
    assert d.accepted and d.state.expires == now + 86_400
    assert verify(d.state, KEY, hotp(KEY, STEP + 1), now + 86_400).reason is Reason.EXPIRED


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_an_old_steps_code_is_refused_on_a_fresh_token(verify) -> None:
    """A token with nothing accepted yet: a code of a step far behind the clock (here
    half of it) is wrong, not a shortcut."""
    now = STEP * 30 + 15.0
    d = verify(TokenState(kind=Kind.TOTP), KEY, hotp(KEY, STEP // 2), now)
    assert d.reason is Reason.INVALID_CODE


@pytest.mark.parametrize("verify", [core.verify, core.verify_reference])
def test_the_surface_at_t0_counts_step_zero(verify) -> None:
    """10 s after T0 the window is steps -1 to 1: step -1 does not exist, so 2 steps."""
    assert verify(TokenState(kind=Kind.TOTP), KEY, "12345", 10.0).window == 2


def test_resync_decisions_in_full_and_near_t0() -> None:
    totp = TokenState(kind=Kind.TOTP, failures=6, locked_until=NOW - 1)
    ok = core.resync(totp, KEY, hotp(KEY, STEP - 1), hotp(KEY, STEP), STEP * 30 + 10.0)
    assert (ok.reason, ok.matched, ok.retry_after, ok.near_miss, ok.window) == (
        Reason.ACCEPTED, STEP, 0.0, None, 2 * 2880 + 1)
    # 35 s after T0 the search is centred on step 1 and reaches below step 1 (no such
    # pair) on its way up: a pair ending at step 3 is still found.
    key = bytes(range(20))
    d = core.resync(TokenState(kind=Kind.TOTP), key, hotp(key, 2), hotp(key, 3), 35.0)
    assert d.accepted and d.matched == 3


def test_a_window_wholly_used_up_reports_no_surface() -> None:
    ahead = TokenState(kind=Kind.TOTP, watermark=STEP + 5)
    for verify in (core.verify, core.verify_reference):
        assert verify(ahead, KEY, "12345", STEP * 30 + 15.0).window == 0

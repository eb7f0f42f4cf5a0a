"""The sized window: the fast `core.verify` against its plain reference, and what every
decision says about its guessing surface."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from window_spec import window_spec

from validator import core
from validator.core import Kind, Policy, Reason, TokenState
from validator.drift import DriftPolicy
from validator.otp import hotp

P = 30
START = 1_900_000_000.0
DAY = 86_400.0


def _history(seed: int, ppm: float, logins: int, gap_days: float,
             policy: Policy) -> tuple[bytes, TokenState, float]:
    """A token with `logins` accepted codes at about `gap_days` apart; its last `now`."""
    rng = random.Random(seed)
    key = rng.randbytes(20)
    offset = rng.uniform(-10, 10)

    def step(t: float) -> int:
        return int((t + offset + ppm * 1e-6 * (t - START)) // P)

    s = step(START)
    state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s),
                              hotp(key, s + 1), (s + 1) * P - offset + 3.0, policy).state
    t = START + 60
    for _ in range(logins):
        t += rng.uniform(0.5, 1.5) * gap_days * DAY
        read = t - rng.uniform(1, 5)
        d = core.verify(state, key, hotp(key, step(read)), t, policy)
        state = d.state
    return key, state, t


POLICIES = [Policy(), Policy(max_window=1), Policy(window=0, max_window=6),
            Policy(window=2, max_window=3), Policy(near_miss_steps=0),
            Policy(drift_policy=DriftPolicy.WHOLE_STEP),
            Policy(drift_policy=DriftPolicy.SYNC_ONLY), Policy(window_unsteady_ppm=0.0)]


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10_000), ppm=st.floats(-60, 60), logins=st.integers(0, 12),
       gap=st.floats(0.01, 60), later=st.floats(0, 400 * DAY), shift=st.integers(-7, 7),
       kind=st.sampled_from(["code", "wrong", "malformed", "replay"]),
       which=st.integers(0, len(POLICIES) - 1), failures=st.integers(0, 6))
def test_fast_verify_equals_the_reference(seed: int, ppm: float, logins: int, gap: float,
                                          later: float, shift: int, kind: str, which: int,
                                          failures: int) -> None:
    policy = POLICIES[which]
    key, state, t = _history(seed, ppm, logins, gap, policy)
    if failures:
        state = TokenState.from_json({**state.to_json(), "failures": failures,
                                      "locked_until": t + later / 2 if failures > 4 else 0})
    now = t + later
    if kind == "wrong" and failures == 6:  # an expired token: refused before anything
        state = TokenState.from_json({**state.to_json(), "expires": now - 1})
    true_step = int((now + state.drift.predict(now)) // P) + shift
    code = {"code": hotp(key, max(true_step, 0)), "wrong": "000000" if
            hotp(key, max(true_step, 0)) != "000000" else "000001",
            "malformed": "12a456", "replay": hotp(key, state.watermark or 0)}[kind]
    fast = core.verify(state, key, code, now, policy)
    ref = core.verify_reference(state, key, code, now, policy)
    assert fast.reason is ref.reason
    assert fast.state == ref.state
    assert fast.matched == ref.matched
    assert fast.retry_after == ref.retry_after
    assert fast.window == ref.window
    if fast.reason not in (Reason.LOCKED, Reason.EXPIRED):
        cap = 2 * max(policy.window, policy.max_window if policy.drift_policy is
                      DriftPolicy.TRACKING else 0) + 1
        assert 0 <= fast.window <= cap


def test_a_well_learnt_token_gets_plus_minus_one() -> None:
    """A year of weekly codes from a steady 3 ppm crystal: the window is ±1 step, 3 steps."""
    key, state, t = _history(4, 3.0, 52, 7.0, Policy())
    assert len(state.drift.history) == 32
    now = t + 7 * DAY
    code = hotp(key, int((now + state.drift.predict(now)) // P))
    d = core.verify(state, key, code, now)
    assert d.accepted and d.window == 3


def test_a_young_token_back_from_months_away_gets_a_wider_window_once() -> None:
    """Enabled, used twice, then five months unused at 6 ppm (78 s): the window covers the
    rate it does not know (capped at ±4), accepts, and the next code a week later is back
    to ±1."""
    key, state, t = _history(9, 6.0, 2, 1.0, Policy())
    rng = random.Random(1)
    offset0 = state.drift.predict(t)
    now = t + 150 * DAY
    true_off = offset0 + 6e-6 * 150 * DAY
    d = core.verify(state, key, hotp(key, int((now - 2 + true_off) // P)), now)
    assert d.accepted and 3 < d.window <= 9
    later = now + 7 * DAY + rng.uniform(0, 3600)
    d2 = core.verify(d.state, key, hotp(key, int((later - 2 + true_off + 6e-6 * 7 * DAY)
                                                // P)), later)
    assert d2.accepted and d2.window <= 4


def test_the_cap_holds_and_a_code_beyond_it_still_teaches() -> None:
    """Enabled, then 100 days unused: the window is capped at ±4 steps (9). A code 6 steps
    past the believed one (21 ppm: physically possible, beyond the cap) is refused but
    moves the estimate, and the next is accepted. A code 6 steps off only 3 days after
    enabling (700 ppm) is physically impossible and teaches nothing."""
    key, state, t = _history(2, 0.0, 0, 1.0, Policy())
    now = t + 100 * DAY
    center = int((now - 2.5 + state.drift.predict(now - 2.5)) // P)
    beyond = center + 6
    d = core.verify(state, key, hotp(key, beyond), now)
    assert d.reason is Reason.INVALID_CODE and d.window == 9
    assert d.state.drift != state.drift  # the near miss taught the tracker
    nxt = core.verify(d.state, key, hotp(key, beyond + 2), now + 60)
    assert nxt.accepted
    soon = t + 3 * DAY
    center = int((soon - 2.5 + state.drift.predict(soon - 2.5)) // P)
    d = core.verify(state, key, hotp(key, center + 6), soon)
    assert d.reason is Reason.INVALID_CODE and d.state.drift == state.drift


def test_hotp_and_resync_decisions_report_their_surface() -> None:
    key = bytes(range(20))
    state = TokenState(kind=Kind.HOTP)
    d = core.verify(state, key, hotp(key, 3), START)
    assert d.accepted and d.window == 11
    t = TokenState(kind=Kind.TOTP)
    s = int(START // P)
    r = core.resync(t, key, hotp(key, s), hotp(key, s + 1), START + 30)
    assert r.accepted and r.window == 2 * (86_400 // P) + 1
    locked = TokenState.from_json({**t.to_json(), "locked_until": START + 10})
    assert core.verify(locked, key, "123456", START).window == 0


def test_a_steady_token_back_from_a_long_absence_is_allowed_more_rate_change() -> None:
    """Up to `SETTLED_S` the allowance for a moved rate grows with the gap; beyond it, with
    the gap squared (aging and the seasons move the rate further the longer nobody looks):
    the monthly population's one refusal was a 195-day gap whose rate had moved 1.9 ppm."""
    from validator import drift as d
    est = d.reset(d.Drift(), d.interval(63_333_333, 1_900_000_000.0, 30, 0, 5.0),
                  policy=DriftPolicy.TRACKING, period=30, max_rate=100e-6, fresh=5.0)
    t_last = est.history[-1][0]

    def extra(gap: float, change: float) -> float:
        lo, hi = est.reach(t_last + gap, 50e-6, change, 10e-6)
        lo0, hi0 = est.reach(t_last + gap, 50e-6, 0.0, 10e-6)
        return hi - hi0

    short = d.SETTLED_S / 2
    assert abs(extra(short, 1e-6) - 1e-6 * short) < 1e-6
    long = 3 * d.SETTLED_S
    assert abs(extra(long, 1e-6) - 3 * 1e-6 * long) < 1e-6


def _learnt(gap_days: float, codes: int, rate: float = 2e-6) -> tuple[Any, float]:
    """A token's drift after `codes` accepted codes `gap_days` apart on a clock running
    `rate` fast, each typed within 30 s (wide intervals: room in the feasible set for a
    code to miss the belief without contradicting the set); returns it and the time of its
    newest code."""
    from validator import drift as d
    t0 = 1_900_000_000.0
    est = d.reset(d.Drift(), d.interval(int(t0 // P), t0, P, 0, 5.0),
                  policy=DriftPolicy.TRACKING, period=P, max_rate=100e-6, fresh=5.0)
    t = t0
    for _ in range(codes):
        t += gap_days * 86_400.0
        step = math.floor((t + rate * (t - t0)) / P)
        est = d.track(est, t + 2.0, *d.interval(step, t + 2.0, P, 0, 30.0)[1:], 100e-6, 32)
    return est, t + 2.0


@pytest.mark.parametrize(("gap_days", "miss", "change"), [
    (30.0, 5.0, False),   # a month: a 5 s miss is the daily swing, not a new rate
    (30.0, 15.0, True),   # beyond the month's 10 s margin
    (7.0, 2.0, True),     # a week: 0.5 s margin, a token brought in from the cold is seen
    (7.0, 0.3, False),
])
def test_a_rate_change_is_a_miss_beyond_a_margin_growing_with_the_gap_squared(
        gap_days: float, miss: float, change: bool) -> None:
    """The monthly population's tokens were marked unsteady by misses of a few seconds
    (daily temperature, aging) and given wide windows for 240 days; scenarios/cold-car.toml
    needs a weekly token's change of rate caught at its first codes indoors."""
    from validator import drift as d
    est, last = _learnt(gap_days, d.STEADY_AFTER + 2)
    assert est.changed == 0.0
    t = last + gap_days * 86_400.0
    belief = est.predict(t)
    lo = belief + miss  # the clock ahead of the belief by `miss`
    assert lo < est.bounds(t)[1]  # within the feasible set: no rebuild decides it
    after = d.track(est, t, lo, lo + 35.0, 100e-6, 32)
    assert after.tref == est.tref
    assert after.changed == (t if change else 0.0)
    assert d.track_reference(est, t, lo, lo + 35.0, 100e-6, 32).changed == after.changed


def test_a_young_token_is_allowed_its_young_rate_change_until_its_codes_span_a_season(
        ) -> None:
    """Kept codes spanning under `YOUNG_S` (105 days): the window allows at least
    `young` of rate change (the car population's young tokens ran 2-6 ppm off their first
    codes' rate); once they span more, the steady allowance again."""
    from validator import drift as d
    for weeks, young_applies in ((8, True), (16, False)):
        est, last = _learnt(7.0, weeks)
        assert (last - est.history[0][0] < d.YOUNG_S) is young_applies
        now = last + 20 * 86_400.0
        lo0, hi0 = est.reach(now, 50e-6, 1e-6, 18e-6, 0.0)
        lo, hi = est.reach(now, 50e-6, 1e-6, 18e-6, 8e-6)
        grown = 7e-6 * (now - last) if young_applies else 0.0
        assert hi - hi0 == pytest.approx(grown, abs=1e-6)
        assert lo0 - lo == pytest.approx(grown, abs=1e-6)
        # a smaller `young` than the steady allowance changes nothing
        assert est.reach(now, 50e-6, 1e-6, 18e-6, 0.5e-6) == (lo0, hi0)


def _bending(bend_ppm_per_day: float, codes: int, gap_days: float = 5.0,
             seed: int = 0) -> tuple[bytes, TokenState, float, Any]:
    """A token whose rate moves `bend_ppm_per_day` a day (a car as the season turns: its
    offset a parabola), `codes` accepted codes `gap_days` apart, each typed within 1-4 s;
    returns its key, state, the time of its newest code and the offset curve."""
    rng = random.Random(seed)
    key = rng.randbytes(20)

    def curve(t: float) -> float:
        days = (t - START) / DAY
        return -0.5 * bend_ppm_per_day * 1e-6 * DAY * days * days

    def step(t: float) -> int:
        return math.floor((t + curve(t)) / P)

    s = step(START)
    state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s),
                              hotp(key, s + 1), (s + 1) * P + 3.0).state
    t = START + 60
    for _ in range(codes):
        t += gap_days * DAY
        read = t - rng.uniform(1, 4)
        d = core.verify(state, key, hotp(key, step(read)), t)
        assert d.accepted
        state = d.state
    return key, state, t, curve


def test_bent_follows_the_curve_of_the_recent_codes_and_no_further() -> None:
    """The parabola through the last 90 days' codes puts the clock within a few seconds of
    where a rate still moving the same way takes it; the belief (the chord's rate) lags
    by minutes. No curve from too few codes, too short a span, or past 90 days."""
    from validator import drift as d
    _, state, last, curve = _bending(0.25, 24)
    est = state.drift
    for gap in (10.0, 40.0, 80.0):
        now = last + gap * DAY
        bent = est.bent(now)
        assert bent is not None
        assert abs(bent - curve(now)) < 0.05 * abs(curve(now) - curve(last)) + 3.0
        assert abs(est.predict(now) - curve(now)) > 4 * abs(bent - curve(now))
    assert est.bent(last + d.BEND_SPAN_S + 60) is None
    few = _bending(0.25, d.BEND_CODES - 2, 12.0)  # with the enabling code, one too few
    assert len(few[1].drift.history) == d.BEND_CODES - 1
    assert few[1].drift.bent(few[2] + DAY) is None
    short = _bending(0.25, 12, 4.0)  # 12 codes over 48 days: under two thirds of 90
    assert short[1].drift.bent(short[2] + DAY) is None
    assert d.Drift().bent(START) is None
    broken = dataclasses.replace(est, history=est.history[:-1] + ((last, math.inf, 0.0),))
    assert broken.bent(last + DAY) is None


@settings(max_examples=60, deadline=None)
@given(bend=st.floats(-0.4, 0.4), codes=st.integers(0, 30), gap=st.floats(1.0, 12.0),
       later=st.floats(0.0, 200.0), seed=st.integers(0, 1000))
def test_the_window_is_as_documented_on_bending_and_steady_rates(
        bend: float, codes: int, gap: float, later: float, seed: int) -> None:
    _, state, last, _ = _bending(bend, codes, gap, seed)
    now = last + later * DAY
    policy = Policy()
    shown = now - policy.typing_allowance / 2
    center = (shown + state.drift.predict(shown) - state.t0) / P
    first, last_step = core.window_steps(state, now, center, policy)
    assert (first, last_step) == window_spec(state, now, policy)
    assert last_step - first <= 2 * policy.max_window
    assert first <= int(center // 1) - policy.window
    assert int(center // 1) + policy.window <= last_step


def test_a_capped_window_follows_a_bending_rate() -> None:
    """A car token as winter comes (its rate moving -0.2 ppm a day), back after 80 days:
    the clock can be in more steps than the ±4 cap allows. The 9 steps are placed where
    the curve of its recent codes says, not around the lagging belief: its code, more than
    4 steps from the belief (refused when the cap was ±4 around it), is accepted on the
    first attempt, by the fast path and the reference alike."""
    key, state, last, curve = _bending(0.2, 24)
    now = last + 80 * DAY
    read = now - 3.0
    true_step = math.floor((read + curve(read)) / P)
    policy = Policy()
    shown = now - policy.typing_allowance / 2
    base = int((shown + state.drift.predict(shown)) // P)
    assert true_step < base - policy.max_window  # beyond ±4 around the belief
    first, last_step = core.window_steps(state, now, (shown + state.drift.predict(shown)) / P)
    assert last_step - first == 8 and first <= true_step
    for verify in (core.verify, core.verify_reference):
        d = verify(state, key, hotp(key, true_step), now)
        assert d.accepted and d.matched == true_step and d.window == 9

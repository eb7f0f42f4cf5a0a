"""The hand-inlined fast paths agree with their plain reference versions, always.

`core.verify` against `core.verify_reference`; `drift.track` against `drift.track_reference`
(which is `observe` under the tracking policy) and `Drift.predict` against
`drift.predict_reference`. States are built the way the validator builds them: an enable
(reset) followed by accepted codes of a drifting token, so the drift estimates have
polygons, soft sets and histories of every shape.
"""

from __future__ import annotations

import dataclasses
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Hash, Kind
from validator import core, drift
from validator.core import Policy, TokenState
from validator.drift import Drift, DriftPolicy
from validator.otp import hotp

T0 = 1_900_000_000.0
MAX_RATE = 100e-6


@st.composite
def estimates(draw: st.DrawFn) -> Drift:
    """A drift estimate after an enable and some accepted codes of a drifting clock."""
    if draw(st.booleans()):
        return Drift(offset=draw(st.sampled_from([0.0, 30.0, -60.0])))
    period = 30
    offset = draw(st.floats(-200, 200))
    rate = draw(st.floats(-80e-6, 80e-6))
    t = T0
    step = math.floor((t + offset) / period)
    est = drift.reset(Drift(), drift.interval(step, t, period, 0, 5.0),
                      policy=DriftPolicy.TRACKING, period=period, max_rate=MAX_RATE,
                      fresh=draw(st.sampled_from([5.0, 30.0])))
    for gap in draw(st.lists(st.floats(60, 40 * 86_400), max_size=8)):
        t += gap
        step = math.floor((t + offset + rate * (t - T0)) / period)
        obs = drift.interval(step, t + draw(st.floats(0, 4.9)), period, 0, 5.0)
        est = drift.observe(est, obs, policy=DriftPolicy.TRACKING, period=period,
                            max_rate=MAX_RATE, history=draw(st.sampled_from([4, 32])))
    return est


def _same_drift(a: Drift, b: Drift) -> None:
    assert a == b  # offset, tref, polygons and history exactly (the cached line aside)
    for dt in (0.0, 3600.0, 86_400.0 * 30):
        assert a.predict(a.tref + dt) == b.predict(b.tref + dt)


@given(est=estimates(), dt=st.floats(-1e6, 1e8))
@settings(max_examples=80, deadline=None)
def test_predict_agrees_with_its_reference(est: Drift, dt: float) -> None:
    now = est.tref + dt
    assert est.predict(now) == drift.predict_reference(est, now)


@given(est=estimates(), dt=st.floats(1, 1e7), width=st.floats(0.5, 60),
       shift=st.floats(-120, 120), history=st.sampled_from([4, 32]))
@settings(max_examples=300, deadline=None)
def test_track_agrees_with_its_reference(est: Drift, dt: float, width: float, shift: float,
                                         history: int) -> None:
    """`track` and `observe` agree on everything, the rate-change mark (`changed`, which
    sizes the window of an unsteady token) included, with or without the cached line."""
    t = (est.history[-1][0] if est.history else est.tref) + dt
    lo = est.predict(t) + shift
    fast = drift.track(est, t, lo, lo + width, MAX_RATE, history)
    plain = drift.track_reference(est, t, lo, lo + width, MAX_RATE, history)
    _same_drift(fast, plain)
    assert fast.changed == plain.changed
    uncached = dataclasses.replace(est, line=None)
    _same_drift(drift.track(uncached, t, lo, lo + width, MAX_RATE, history), fast)
    assert drift.track(uncached, t, lo, lo + width, MAX_RATE, history).changed == fast.changed


def test_a_well_learnt_belief_proved_wrong_marks_a_rate_change_on_both_paths() -> None:
    """The case a random run found: after `STEADY_AFTER` codes, a code that proves the
    believed offset wrong without contradicting the feasible set marks the rate as
    changing, on `track` (the hot path) as on its reference `observe`."""
    period, rate = 30, 20e-6
    est = drift.reset(Drift(), drift.interval(int(T0 // period), T0, period, 0, 5.0),
                      policy=DriftPolicy.TRACKING, period=period, max_rate=MAX_RATE, fresh=5.0)
    t = T0
    for _ in range(drift.STEADY_AFTER):
        t += 86_400.0
        step = math.floor((t + rate * (t - T0)) / period)
        est = drift.track(est, t + 2.0, *drift.interval(step, t + 2.0, period, 0, 5.0)[1:],
                          MAX_RATE, 32)
    assert est.changed == 0.0 and len(est.history) >= drift.STEADY_AFTER
    t += 86_400.0
    belief = est.predict(t)
    lo_, hi_ = est.bounds(t)
    assert lo_ < belief < hi_  # room on both sides: a code can prove it wrong and still fit
    lo, hi = belief + (hi_ - belief) / 2, hi_ + 10.0  # the clock is ahead of the belief
    fast = drift.track(est, t, lo, hi, MAX_RATE, 32)
    plain = drift.track_reference(est, t, lo, hi, MAX_RATE, 32)
    assert fast.changed == plain.changed == t
    assert fast.tref == est.tref  # not a rebuild: the set was only narrowed


@st.composite
def situations(draw: st.DrawFn) -> tuple[TokenState, bytes, str, float, Policy]:
    kind = draw(st.sampled_from(list(Kind)))
    digits = draw(st.sampled_from([6, 8]))
    hash_ = draw(st.sampled_from(list(Hash)))
    period = draw(st.sampled_from([30, 60]))
    t0 = draw(st.sampled_from([0, 17]))
    now = T0 + draw(st.floats(0, 400 * 86_400))
    est = draw(estimates()) if kind is Kind.TOTP else Drift()
    believed = math.floor((now + est.predict(now) - t0) / period)
    base = believed if kind is Kind.TOTP else draw(st.integers(0, 50))
    # a watermark is a step or counter that was accepted: never negative
    watermark = draw(st.one_of(st.none(), st.integers(max(0, base - 3), base + 1)))
    state = TokenState(
        kind=kind, digits=digits, hash=hash_, period=period, t0=t0,
        window=draw(st.one_of(st.none(), st.integers(0, 3))), watermark=watermark,
        drift=est, failures=draw(st.integers(0, 6)),
        locked_until=draw(st.sampled_from([0.0, now - 1, now + 30])),
        expires=draw(st.sampled_from([None, now - 1, now, now + 30])))
    key = draw(st.binary(min_size=10, max_size=64))
    which = draw(st.sampled_from(["near", "random", "malformed"]))
    if which == "near":
        code = hotp(key, max(0, base + draw(st.integers(-12, 12))), digits, hash_)
    elif which == "random":
        code = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=digits,
                                     max_size=digits)))
    else:
        code = draw(st.sampled_from(["", "12345", "1234567a", "١٢٣٤٥٦", " 123456", "+12345"]))
    policy = Policy(window=draw(st.integers(0, 3)),
                    drift_policy=draw(st.sampled_from(list(DriftPolicy))),
                    near_miss_steps=draw(st.sampled_from([0, 8])),
                    typing_allowance=draw(st.sampled_from([0.0, 5.0])))
    return state, key, code, now, policy


@given(situations())
@settings(max_examples=150, deadline=None)
def test_verify_agrees_with_its_reference(
        situation: tuple[TokenState, bytes, str, float, Policy]) -> None:
    state, key, code, now, policy = situation
    fast = core.verify(state, key, code, now, policy)
    plain = core.verify_reference(state, key, code, now, policy)
    _same_decision(fast, plain)
    _same_drift(fast.state.drift, plain.state.drift)


def _same_decision(fast: core.Decision, plain: core.Decision) -> None:
    """Equal in every outcome, the window included (the fast path works it out lazily, so
    the dataclass fields themselves differ until it is asked for)."""
    assert (fast.reason, fast.state, fast.matched, fast.retry_after, fast.near_miss,
            fast.window) == (plain.reason, plain.state, plain.matched, plain.retry_after,
                             plain.near_miss, plain.window)


def test_the_fast_path_is_the_one_taken_for_a_synced_code() -> None:
    """The agreement above covers the fast path: a synced token's current code takes it."""
    key = b"k" * 20
    state = TokenState(kind=Kind.TOTP)
    now = T0 + 2.5  # typing allowance aside, step T0 // 30 is current
    step = int((now - 2.5) // 30)
    fast = core.verify(state, key, hotp(key, step), now)
    assert fast.accepted and fast.matched == step
    _same_decision(fast, core.verify_reference(state, key, hotp(key, step), now))

"""Drift outcomes of issue 4 over simulated time, deterministic seeds, pure core.

A token's clock runs at `(1 + ppm*1e-6)` times true time from its enable day. Its user
enables it the usual way (types the current code, waits for it to change, types the next,
submits), then logs in about once a week at a random time of day; each code arrives 1-5 s
after it was read. A refused login is retried the next week; two refusals in a row count as
a resync (the user would have to call the helpdesk) and the token is resynced. In the
`retry` variant the user, refused, waits for the next code and types it at once; only a
login whose retry is refused too counts as refused then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from protocol import Kind
from validator import core
from validator.core import Policy, Reason, TokenState
from validator.drift import DriftPolicy
from validator.otp import hotp

P = 30
DAY = 86_400.0
WEEK = 7 * DAY
START = 1_700_000_000.0


@dataclass
class Outcome:
    logins: int = 0
    rejected: int = 0
    resyncs: int = 0
    first_refused: int = 0  # first attempts refused (equals `rejected` without retries)
    returns: int = 0
    returns_accepted: int = 0
    max_error: float = 0.0  # the largest |believed - true offset| at a login, seconds

    @property
    def rejected_pct(self) -> float:
        return 100.0 * self.rejected / max(1, self.logins)


class Token:
    def __init__(self, rng: random.Random, ppm: float) -> None:
        self.key = rng.randbytes(20)
        self.ppm = ppm
        self.offset0 = rng.uniform(-5, 5)
        self.start = START + rng.uniform(0, DAY)

    def step(self, t: float) -> int:
        return int((t + self.offset0 + self.ppm * 1e-6 * (t - self.start)) // P)

    def offset(self, t: float) -> float:
        return self.offset0 + self.ppm * 1e-6 * (t - self.start)

    def code(self, t: float) -> str:
        return hotp(self.key, self.step(t))

    def next_change(self, t: float) -> float:
        """The true time at which the code shown at `t` is replaced by the next one."""
        rate = 1 + self.ppm * 1e-6
        return ((self.step(t) + 1) * P - self.offset0 + self.ppm * 1e-6 * self.start) / rate


def enable(tok: Token, rng: random.Random, policy: Policy) -> TokenState:
    first = tok.step(tok.start)
    changed = (first + 1) * P - tok.offset0  # true time the next code appears (≈)
    submitted = changed + rng.uniform(1, 5)
    second = tok.step(submitted - 1)
    decision = core.check_enable(TokenState(kind=Kind.TOTP), tok.key,
                                 hotp(tok.key, second - 1), hotp(tok.key, second), submitted,
                                 policy)
    assert decision.accepted
    return decision.state


def login(tok: Token, state: TokenState, t: float, rng: random.Random, policy: Policy,
          out: Outcome, misses: list[int], retry: bool = False) -> TokenState:
    read = t - rng.uniform(1, 5)
    decision = core.verify(state, tok.key, tok.code(read), t, policy)
    out.logins += 1
    if not decision.accepted:
        out.first_refused += 1
        if retry:  # wait for the code to change, type the new one at once
            read = max(tok.next_change(read), t) + rng.uniform(0.5, 3)
            t = read + rng.uniform(1, 5)
            decision = core.verify(decision.state, tok.key, tok.code(read), t, policy)
    if decision.accepted:
        misses[0] = 0
        return decision.state
    out.rejected += 1
    misses[0] += 1
    state = core.unlock(decision.state)
    if misses[0] >= 2:
        out.resyncs += 1
        misses[0] = 0
        ts = t + 60
        s = tok.step(ts - 3)
        d = core.resync(state, tok.key, hotp(tok.key, s - 1), hotp(tok.key, s), ts, policy)
        assert d.accepted
        state = d.state
    return state


def weekly(ppms: list[float], weeks: int, policy: Policy, seed: int,
           idle_weeks: int = 0, retry: bool = False) -> Outcome:
    rng = random.Random(seed)
    out = Outcome()
    for ppm in ppms:
        tok = Token(rng, ppm)
        state = enable(tok, rng, policy)
        misses = [0]
        for week in range(1, weeks + 1):
            t = tok.start + week * WEEK + rng.uniform(-DAY / 2, DAY / 2)
            state = login(tok, state, t, rng, policy, out, misses, retry)
        if idle_weeks:
            t = tok.start + (weeks + idle_weeks) * WEEK + rng.uniform(-DAY / 2, DAY / 2)
            before = out.rejected
            state = login(tok, state, t, rng, policy, out, misses)
            out.returns += 1
            out.returns_accepted += out.rejected == before
    return out


def random_gaps(ppms: list[float], years: float, policy: Policy, seed: int) -> Outcome:
    """Logins at exponential gaps (mean a week, at least an hour), as the drift study has
    them, and the largest error of the policy's belief at a login."""
    rng = random.Random(seed)
    out = Outcome()
    for ppm in ppms:
        tok = Token(rng, ppm)
        state = enable(tok, rng, policy)
        misses = [0]
        t = tok.start
        while True:
            t += max(3_600.0, rng.expovariate(1 / WEEK))
            if t > tok.start + years * 365 * DAY:
                break
            err = abs(state.drift.predict(t) - tok.offset(t))
            out.max_error = max(out.max_error, err)
            state = login(tok, state, t, rng, policy, out, misses)
    return out


def _midpoint(state: TokenState, now: float) -> float:
    """What the tracker predicted before it had a believed rate: the midpoint of the
    feasible offsets (of the soft polygon while there is one)."""
    d = state.drift
    values = [a + r * (now - d.tref) for a, r in (d.soft or d.poly)]
    return (min(values) + max(values)) / 2


POPULATION = [40.0 if i % 2 else -40.0 for i in range(200)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_40ppm_weekly_three_years_no_resync_on_any_seed(seed: int) -> None:
    """200 tokens per seed, 5 seeds: 156,000 logins in all, none needing a resync."""
    out = weekly(POPULATION, 156, Policy(), seed=seed)
    print(f"\nseed {seed}: {out.rejected_pct:.3f}% rejected, {out.resyncs} resyncs")
    assert out.logins == 200 * 156
    assert out.rejected_pct <= 0.1
    assert out.resyncs == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_40ppm_weekly_users_retry_at_once_with_the_next_code(seed: int) -> None:
    """A refused user types the next code straight away: the refused near miss has already
    moved the estimate, so the retry is accepted and no login is lost."""
    out = weekly(POPULATION, 156, Policy(), seed=seed, retry=True)
    print(f"\nseed {seed}, retrying: {out.first_refused} first attempts refused, "
          f"{out.rejected} logins refused, {out.resyncs} resyncs")
    assert out.rejected == 0 and out.resyncs == 0
    assert 100.0 * out.first_refused / out.logins <= 0.1


def test_40ppm_seed_2_needed_resyncs_without_near_miss_learning() -> None:
    """The seed that motivated near-miss learning: with it off, a token refused in its first
    week (offset at the window's edge, rate still unknown) is refused again the next week,
    at a fixed ±1 window. (The sized window now accepts that token's codes in the first
    place, as the second assertion shows.) If this stops failing, the per-seed test above
    no longer shows what near misses do."""
    out = weekly(POPULATION, 156, Policy(near_miss_steps=0, max_window=1), seed=2)
    assert out.resyncs > 0
    assert weekly(POPULATION, 156, Policy(near_miss_steps=0), seed=2).resyncs == 0


def test_40ppm_weekly_three_years_tracking_vs_whole_step() -> None:
    tracking = weekly(POPULATION, 156, Policy(), seed=1)
    whole = weekly(POPULATION, 156, Policy(drift_policy=DriftPolicy.WHOLE_STEP), seed=1)
    sync_only = weekly(POPULATION, 156, Policy(drift_policy=DriftPolicy.SYNC_ONLY), seed=1)
    print(f"\n±40 ppm, 200 tokens, weekly, 3 years ({tracking.logins} logins):"
          f"\n  tracking:   {tracking.rejected_pct:.3f}% rejected, {tracking.resyncs} resyncs"
          f"\n  whole-step: {whole.rejected_pct:.3f}% rejected, {whole.resyncs} resyncs"
          f"\n  sync-only:  {sync_only.rejected_pct:.3f}% rejected, {sync_only.resyncs} resyncs")
    assert tracking.logins == 200 * 156
    assert tracking.rejected_pct <= 0.1
    assert tracking.resyncs == 0
    # The comparison policies really are worse here; if they were not, the test would be
    # measuring nothing.
    assert whole.rejected_pct > 10 * max(tracking.rejected_pct, 0.01)
    assert whole.resyncs > 0 and sync_only.resyncs > whole.resyncs


def test_20ppm_three_months_then_six_months_unused() -> None:
    out = weekly([20.0] * 200, 13, Policy(), seed=2, idle_weeks=26)
    print(f"\n20 ppm: {out.returns_accepted}/{out.returns} accepted on return after 6 months")
    assert out.returns == 200
    assert out.returns_accepted >= 0.99 * out.returns
    # Without a rate estimate, 6 months at 20 ppm is 315 s, ten steps: all would be refused.
    flat = weekly([20.0] * 50, 13, Policy(drift_policy=DriftPolicy.WHOLE_STEP), seed=2,
                  idle_weeks=26)
    assert flat.returns_accepted < 0.1 * flat.returns


def test_zero_ppm_codes_at_step_boundaries_keep_estimate_near_zero() -> None:
    rng = random.Random(3)
    key = rng.randbytes(20)
    policy = Policy()
    s = int(START // P)
    state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1),
                              hotp(key, s), s * P + 2.0, policy).state
    for i in range(1, 400):
        boundary = (s + i * 97) * P
        # Read just before the step changes, arriving just after: the worst case.
        read = boundary - rng.uniform(0.0, 0.5)
        arrive = boundary + rng.uniform(0.0, 4.5)
        decision = core.verify(state, key, hotp(key, int(read // P)), arrive, policy)
        assert decision.accepted, i
        state = decision.state
        assert abs(state.drift.predict(arrive)) < P, (i, state.drift.predict(arrive))
        lo, hi = state.drift.bounds(arrive)
        assert lo <= 0.0 <= hi  # the truth is never excluded


def _enabled_at_zero_offset() -> tuple[bytes, TokenState, int]:
    """A token enabled with offset 0: the pair (s-1, s) arriving 2 s into step s."""
    key = random.Random(5).randbytes(20)
    s = int(START // P)
    decision = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1),
                                 hotp(key, s), s * P + 2.0, Policy())
    assert decision.accepted
    return key, decision.state, s


def test_the_sized_window_accepts_a_young_fast_token() -> None:
    """Two weeks after enabling, a token 70 s ahead (58 ppm: beyond the 50 ppm the window
    assumes, but the code lies within it) is accepted at once: the window covers what the
    tracker does not know yet, up to ±4 steps; and the decision says how wide it was."""
    key, state, s = _enabled_at_zero_offset()
    k = s + 2 * int(WEEK // P)
    now = k * P + 10.0
    decision = core.verify(state, key, hotp(key, int((now - 3 + 70) // P)), now, Policy())
    assert decision.accepted and decision.window > 3
    assert decision.window <= 9
    fixed = core.verify(state, key, hotp(key, int((now - 3 + 70) // P)), now,
                        Policy(max_window=1))
    assert not fixed.accepted and fixed.window == 3


def test_near_miss_is_refused_but_moves_the_estimate() -> None:
    key, state, s = _enabled_at_zero_offset()
    policy = Policy(max_window=1)  # a fixed ±1 window: the sized one accepts this code
    # Two weeks later (±121 s physically possible at 100 ppm) the token runs 70 s ahead
    # (58 ppm): its code is two steps past the ±1 window around the prediction.
    k = s + 2 * int(WEEK // P)
    now = k * P + 10.0
    shown = hotp(key, int((now - 3 + 70) // P))
    assert int((now - 3 + 70) // P) == k + 2
    before = state.drift
    decision = core.verify(state, key, shown, now, policy)
    assert decision.reason is Reason.INVALID_CODE and decision.matched is None
    assert decision.state.failures == 1  # counted toward the throttle as usual
    assert decision.state.watermark == state.watermark  # nothing accepted
    after = decision.state.drift
    assert after != before
    lo, hi = after.bounds(now)
    assert lo <= 70 <= hi and hi - lo < 40  # narrowed to where the clock really is
    assert after.predict(now) > 40 > before.predict(now) + 30
    # The very next code is accepted; without near-miss learning it would be refused too.
    then = now + 60
    code = hotp(key, int((then - 3 + 70) // P))
    assert core.verify(decision.state, key, code, then, policy).accepted
    off = Policy(near_miss_steps=0, max_window=1)
    blind = core.verify(state, key, shown, now, off)
    assert blind.reason is Reason.INVALID_CODE and blind.state.drift == before
    assert not core.verify(blind.state, key, code, then, off).accepted


def test_near_miss_outside_the_feasible_bounds_teaches_nothing() -> None:
    key, state, s = _enabled_at_zero_offset()
    # One day later the clock can have moved ~9 s at most: a code 150 s ahead (5 steps,
    # within the step cap) is physically impossible and is not even compared.
    k = s + int(DAY // P)
    now = k * P + 10.0
    lo, hi = state.drift.bounds(now)
    assert hi < 45
    decision = core.verify(state, key, hotp(key, k + 5), now, Policy())
    assert decision.reason is Reason.INVALID_CODE
    assert decision.state.drift == state.drift and decision.state.failures == 1


def test_near_miss_at_or_before_the_watermark_teaches_nothing() -> None:
    key, state, s = _enabled_at_zero_offset()
    k = s + 2 * int(WEEK // P)
    now = k * P + 10.0
    # An old code (at or before the watermark) never teaches the tracker, even within the
    # bounds: it is answered as the replay it is, and the state stays as it was.
    old = TokenState.from_json({**state.to_json(), "watermark": k + 5})
    decision = core.verify(old, key, hotp(key, k + 2), now, Policy(max_window=1))
    assert decision.reason is Reason.REPLAYED and decision.state == old


@pytest.mark.parametrize("policy", [DriftPolicy.WHOLE_STEP, DriftPolicy.SYNC_ONLY])
def test_comparison_policies_do_not_learn_from_near_misses(policy: DriftPolicy) -> None:
    key = random.Random(6).randbytes(20)
    s = int(START // P)
    p = Policy(drift_policy=policy)
    state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1),
                              hotp(key, s), s * P + 2.0, p).state
    k = s + 2 * int(WEEK // P)
    decision = core.verify(state, key, hotp(key, k + 2), k * P + 10.0, p)
    assert decision.reason is Reason.INVALID_CODE and decision.state.drift == state.drift


def test_zero_ppm_few_codes_then_a_long_gap_is_believed_near_zero() -> None:
    """A perfect clock enabled, used a day and three days later, then not for 39 days.

    The codes bound the rate only loosely, on one side by the data and on the other by the
    ±100 ppm limit, so the midpoint of the feasible offsets ran up to 158 s from the truth
    (the old prediction, kept here as the control) and the code was refused. The believed
    rate prefers small rates when the evidence is weak: every token is believed within one
    step, typically about ten seconds (one code's interval is 35 s wide)."""
    errors, old_errors = [], []
    for seed in range(200):
        rng = random.Random(seed)
        key = rng.randbytes(20)
        s = int(START // P) + rng.randrange(2880)
        state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1),
                                  hotp(key, s), s * P + rng.uniform(1, 5), Policy()).state
        for day in (1, 3, 42):
            t = s * P + day * DAY + rng.uniform(-6, 6) * 3_600
            believed = state.drift.predict(t)
            old = _midpoint(state, t)
            decision = core.verify(state, key, hotp(key, int((t - rng.uniform(1, 5)) // P)),
                                   t, Policy())
            assert decision.accepted, (seed, day, believed)
            state = decision.state
        errors.append(abs(believed))
        old_errors.append(abs(old))
    errors.sort()
    print(f"\n0 ppm after 39 days: believed within {errors[-1]:.1f} s (median "
          f"{errors[100]:.1f} s); the feasible midpoint up to {max(old_errors):.1f} s")
    assert errors[-1] < P and errors[100] < 15
    assert max(old_errors) > 100  # the control: the midpoint really was that far off


def test_study_like_population_tracking_beats_whole_step_point_by_point() -> None:
    """Crystals N(0, 2 ppm), logins at exponential gaps (mean a week), 2 years: the tracker
    refuses no more logins, needs no more resyncs, and its belief is never as far from the
    truth as whole-step's (whose error is up to a step and a half by construction). With
    the feasible midpoint the tracker's largest error was several times whole-step's."""
    rng = random.Random(11)
    ppms = [max(-20.0, min(20.0, rng.gauss(0.0, 2.0))) for _ in range(150)]
    tracking = random_gaps(ppms, 2.0, Policy(), seed=11)
    whole = random_gaps(ppms, 2.0, Policy(drift_policy=DriftPolicy.WHOLE_STEP), seed=11)
    print(f"\nN(0, 2 ppm), {tracking.logins} logins:"
          f"\n  tracking:   {tracking.rejected} refused, {tracking.resyncs} resyncs, "
          f"max error {tracking.max_error:.1f} s"
          f"\n  whole-step: {whole.rejected} refused, {whole.resyncs} resyncs, "
          f"max error {whole.max_error:.1f} s")
    assert tracking.logins > 150 * 90
    assert tracking.rejected <= whole.rejected
    assert tracking.resyncs <= whole.resyncs
    assert tracking.max_error < whole.max_error

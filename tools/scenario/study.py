"""The drift study: a Monte Carlo over a token population, four drift policies side by side.

Each token gets a crystal drawn from the physics of 32.768 kHz tuning forks: a constant error
(N(0, ppm_sd) clipped to ±ppm_clip, or uniform within ±ppm_clip), the parabolic temperature
term around a temperature of its own (a daily swing on top, and optionally the seasons),
aging (linear, or the logarithmic first-year kind). Its clock is firmware_sim's `Clock` (the
exact closed form the emulated token runs on; seasons and logarithmic aging change its
settings once a week) and its codes are the firmware's. It is enabled with two consecutive
codes, then used at random times of day with exponentially distributed gaps (mean
`interval_days`; optionally in spells of use and absence); each code reaches the validator
a typing delay after it was read.

The same logins go through four policies:

- `foblab`: the drift tracker with its sized window (`DriftPolicy.TRACKING`, the real
  validator core);
- `privacyidea`: a model of privacyIDEA's default TOTP check (measured on 3.14): the offset
  copied in whole seconds from the last accepted code, codes accepted from 6 steps behind
  to 5 ahead, the first code after a resync refused, a lock after 10 failures that never
  lifts by itself;
- `whole-step`: the offset copied in whole steps from the last accepted code, window ±1
  (the real core's `DriftPolicy.WHOLE_STEP`, as privacyIDEA or LinOTP with a 30 s window);
- `sync-only`: the offset set only by enable and resync, window ±1 (FreeIPA; the real
  core's `DriftPolicy.SYNC_ONLY`).

A refused login is retried once with the next code (a person reads the display again); if
that is refused too, the user resyncs with two consecutive codes (a helpdesk call). Reported
per policy: the share of logins whose first code was refused, resyncs per 1,000
token-years, the guessing surface (steps that would have been accepted for the first code
of a login: mean, largest, share wider than ±1), the share of first codes accepted after
an absence of 150 days or more, the largest token offset a login was accepted at, and the
largest error of the policy's belief at a login.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

from firmware_sim import otp_engine as token_otp
from firmware_sim.clock import YEAR_MS, Clock, Crystal, implied_mode
from protocol import Kind
from validator import core
from validator.drift import DriftPolicy
from validator.otp import hotp

POLICIES: tuple[str, ...] = ("foblab", "privacyidea", "whole-step", "sync-only")
T0_MS = 1_930_000_000_000  # 2031-02-28: any time works; a fixed one keeps runs identical
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
WEEK_MS = 7 * DAY_MS
COLDEST_MS = 1_926_374_400_000  # 2031-01-15 00:00 UTC: the seasons' coldest day
RETURN_DAYS = 150.0
"""A login after at least this many days without one counts as a return from absence."""


@dataclass(frozen=True)
class StudyParams:
    tokens: int = 1000
    years: float = 3.0
    interval_days: float = 7.0
    """Mean gap between logins (exponential, at least an hour; exact if `regular`)."""
    regular: bool = False
    """Log in every `interval_days` exactly (at a random time of day) instead."""
    use_days: float = 0.0
    away_days: float = 0.0
    """Spells: `use_days` of logins, then `away_days` with none, again and again (0: no
    spells). The first code after each absence is a *return*."""
    day_start_h: float = 7.0
    day_end_h: float = 22.0
    """Logins happen at a uniformly random time of day in [day_start_h, day_end_h)."""
    typing_min_s: float = 1.0
    typing_max_s: float = 5.0
    """Seconds from reading a code to its arrival: uniform in [typing_min_s, typing_max_s]."""
    ppm_sd: float = 2.0
    ppm_clip: float = 20.0
    ppm_uniform: bool = False
    """The crystal's own error: uniform within ±ppm_clip instead of N(0, ppm_sd) clipped."""
    temp_mean_c: float = 22.0
    temp_sd_c: float = 4.0
    temp_swing_c: float = 3.0
    """Each token's daily swing is uniform in [0, temp_swing_c]."""
    seasonal_c: float = 0.0
    """The seasons: each token's mean temperature moves by ± this over the year (coldest
    mid-January), its settings updated weekly."""
    aging_sd: float = 1.0
    """ppm per year, N(0, aging_sd) per token (linear)."""
    first_year_aging_sd: float = 0.0
    """Logarithmic aging, fastest in the first year: A ln(1 + days/30) ppm with A ~
    N(0, this) per token (A = 1.2 is about ±3 ppm in the first year, ±4 ppm by the third),
    settings updated weekly. 0: none."""
    initial_offset_s: float = 10.0
    """The clock's error when enabled: uniform within ± this."""
    window: int = 1
    """The minimum window of foblab and the fixed window of whole-step and sync-only."""
    max_window: int = 4
    """foblab's largest window (`Policy.max_window`)."""
    seed: int = 1
    period: int = 30
    samples: int = 6
    """Tokens whose traces are kept for the plot."""

    def __post_init__(self) -> None:
        for f in fields(self):  # NaN passes every comparison below, and inf breaks the clocks
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, not {value}")
        if self.tokens < 1 or self.years <= 0 or self.interval_days <= 0:
            raise ValueError("tokens >= 1, years > 0 and interval > 0 required")
        if not 0 <= self.day_start_h < self.day_end_h <= 24:
            raise ValueError("the login hours must be within 0-24, start before end")
        if not 0 <= self.typing_min_s <= self.typing_max_s <= 600:
            raise ValueError("typing delays must satisfy 0 <= min <= max <= 600 s")
        if self.ppm_sd < 0 or self.ppm_clip < 0 or self.temp_sd_c < 0 \
                or self.temp_swing_c < 0 or self.aging_sd < 0 or self.initial_offset_s < 0 \
                or self.seasonal_c < 0 or self.first_year_aging_sd < 0 \
                or self.use_days < 0 or self.away_days < 0:
            raise ValueError("spreads and limits must not be negative")
        if (self.use_days > 0) != (self.away_days > 0):
            raise ValueError("use_days and away_days go together")
        # what firmware_sim's crystal accepts (aging is drawn unclipped: 100 sigmas short),
        # and clocks set within the day that enablement searches
        if self.ppm_clip > 10_000 or self.aging_sd > 100 or self.temp_swing_c > 100 \
                or self.initial_offset_s > 86_400 or self.seasonal_c > 50 \
                or self.first_year_aging_sd > 10:
            raise ValueError("ppm_clip <= 10000 ppm, aging_sd <= 100 ppm/year, temp_swing_c "
                             "<= 100 °C, seasonal_c <= 50 °C, first_year_aging_sd <= 10 and "
                             "initial_offset_s <= 86400 s required")
        if self.window < 0 or self.max_window < 0:
            raise ValueError("window and max_window must be >= 0")

    @classmethod
    def zero_drift(cls, **overrides: Any) -> StudyParams:
        """A population of perfect clocks (no error, at 25 °C, no aging, set exactly) whose
        codes arrive the moment they are read."""
        base: dict[str, Any] = dict(ppm_sd=0.0, temp_mean_c=25.0, temp_sd_c=0.0,
                                    temp_swing_c=0.0, aging_sd=0.0, initial_offset_s=0.0,
                                    typing_min_s=0.0, typing_max_s=0.0)
        base.update(overrides)
        return cls(**base)


POPULATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("N(0, 2 ppm) crystals indoors (N(22, 4) °C, daily swing up to ±3 °C), "
                "aging N(0, 1) ppm/year, a login every 7 days on average", {}),
    "car": ("kept in a car through the seasons: N(8, 3) °C mean, ±12 °C over the year, "
            "daily swing up to ±8 °C (-30 to -1 ppm from the temperature curve alone)",
            dict(temp_mean_c=8.0, temp_sd_c=3.0, seasonal_c=12.0, temp_swing_c=8.0)),
    "monthly": ("the default crystals, a login every 30 days on average",
                dict(interval_days=30.0)),
    "gap": ("untrimmed crystals (uniform within ±20 ppm), used weekly on average for three "
            "months, then six months unused, again and again",
            dict(ppm_uniform=True, ppm_clip=20.0, use_days=91.0, away_days=182.0)),
    "trimmed": ("trimmed crystals, uniform within ±5 ppm, otherwise the default",
                dict(ppm_uniform=True, ppm_clip=5.0)),
    "aging": ("first-year aging: A ln(1 + days/30) ppm, A ~ N(0, 1.2) (about ±3 ppm in the "
              "first year), on the default crystals", dict(first_year_aging_sd=1.2,
                                                          aging_sd=0.0)),
    "40ppm": ("±40 ppm crystals (uniform), logged in every 7 days exactly",
              dict(ppm_uniform=True, ppm_clip=40.0, regular=True)),
}
"""The study's populations: name -> (description, StudyParams overrides)."""


def population(name: str, **overrides: Any) -> StudyParams:
    """The named population's parameters, with `overrides` on top."""
    if name not in POPULATIONS:
        raise ValueError(f"unknown population {name!r}: one of {', '.join(POPULATIONS)}")
    return StudyParams(**{**POPULATIONS[name][1], **overrides})


@dataclass
class PolicyStats:
    logins: int = 0
    refused_first: int = 0
    verifications: int = 0
    resyncs: int = 0
    failed_resyncs: int = 0
    max_offset_s: float = 0.0
    max_error_s: float = 0.0
    surface_sum: int = 0
    max_surface: int = 0
    wide: int = 0
    returns: int = 0
    returns_accepted: int = 0

    def summary(self, token_years: float) -> dict[str, Any]:
        n = self.logins
        return {
            "refused_share": self.refused_first / n if n else 0.0,
            "resyncs_per_1000_token_years": 1000 * self.resyncs / token_years,
            "mean_window_steps": round(self.surface_sum / n, 4) if n else 0.0,
            "max_window_steps": self.max_surface,
            "wider_than_1_share": self.wide / n if n else 0.0,
            "return_accepted_share": (self.returns_accepted / self.returns
                                      if self.returns else None),
            "returns": self.returns,
            "max_offset_s": round(self.max_offset_s, 3),
            "max_error_s": round(self.max_error_s, 3),
            "logins": n,
            "refused_logins": self.refused_first,
            "verifications": self.verifications,
            "resyncs": self.resyncs,
            "failed_resyncs": self.failed_resyncs,
        }


@dataclass
class Trace:
    """One sample token: per login, days since enable, true offset, and per policy its
    belief, the band of offsets its window accepted, and what happened."""

    serial: str
    ppm: float
    days: list[float] = field(default_factory=list)
    offset_s: list[float] = field(default_factory=list)
    believed: dict[str, list[float]] = field(default_factory=dict)
    band: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    refused: dict[str, list[int]] = field(default_factory=dict)
    """Indexes of logins whose first code was refused."""
    resynced: dict[str, list[int]] = field(default_factory=dict)
    """Indexes of logins that ended in a resync."""


@dataclass
class StudyResult:
    params: StudyParams
    stats: dict[str, PolicyStats]
    token_years: float
    seconds: float
    traces: list[Trace]
    policy_seconds: dict[str, float] = field(default_factory=dict)
    population: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "population": self.population,
            "policies": {name: s.summary(self.token_years) for name, s in self.stats.items()},
            "params": asdict(self.params),
            "token_years": round(self.token_years, 3),
            "logins": self.stats["foblab"].logins,
            "seconds": round(self.seconds, 3),
            "policy_seconds": {k: round(v, 3) for k, v in self.policy_seconds.items()},
        }


class _SeasonalClock:
    """A token's clock through the seasons: firmware_sim `Clock`s, one per stretch of
    constant crystal settings."""

    def __init__(self, clocks: list[tuple[int, Clock]]) -> None:
        self.starts = [t for t, _ in clocks]
        self.clocks = [c for _, c in clocks]

    def token_ms(self, true_ms: int) -> int:
        i = bisect.bisect_right(self.starts, true_ms) - 1
        return self.clocks[max(i, 0)].token_ms(true_ms)


@dataclass(frozen=True)
class _Token:
    key: bytes
    clock: _SeasonalClock
    ppm: float
    logins: list[tuple[int, int]]  # (read_ms, submit_ms)
    enable_ms: int


def _crystal(p: StudyParams, rng: random.Random, end_ms: int) -> tuple[_SeasonalClock, float]:
    if p.ppm_uniform:
        ppm = rng.uniform(-p.ppm_clip, p.ppm_clip)
    else:
        ppm = max(-p.ppm_clip, min(p.ppm_clip, rng.gauss(0.0, p.ppm_sd)))
    temp = max(-30.0, min(70.0, rng.gauss(p.temp_mean_c, p.temp_sd_c)))
    swing = rng.uniform(0.0, p.temp_swing_c) if p.temp_swing_c else 0.0
    aging = rng.gauss(0.0, p.aging_sd) if p.aging_sd else 0.0
    log_aging = rng.gauss(0.0, p.first_year_aging_sd) if p.first_year_aging_sd else 0.0
    offset_us = round(rng.uniform(-p.initial_offset_s, p.initial_offset_s) * 1e6)

    def settings(at_ms: int) -> Crystal:
        t = temp
        if p.seasonal_c:
            phase = 2 * math.pi * (at_ms - COLDEST_MS) / YEAR_MS
            t = max(-30.0, min(70.0, temp - p.seasonal_c * math.cos(phase)))
        extra = log_aging * math.log1p((at_ms - T0_MS) / (30 * DAY_MS)) if log_aging else 0.0
        return Crystal(ppm=ppm + extra, aging_ppm_per_year=aging,
                       temperature_mode=implied_mode(t, swing), temperature_c=t,
                       temperature_swing_c=swing)

    clock = Clock(anchor_true_ms=T0_MS, anchor_offset_us=offset_us, crystal=settings(T0_MS),
                  aging_start_ms=T0_MS)
    clocks = [(T0_MS, clock)]
    if p.seasonal_c or log_aging:  # weekly settings, each taken at the week's middle
        at = T0_MS + WEEK_MS
        while at < end_ms:
            clock = clock.set_crystal(at, settings(at + WEEK_MS // 2))
            clocks.append((at, clock))
            at += WEEK_MS
    return _SeasonalClock(clocks), ppm


def _population(p: StudyParams) -> list[_Token]:
    tokens = []
    end_ms = T0_MS + round(p.years * YEAR_MS)
    for i in range(p.tokens):
        rng = random.Random(f"{p.seed}:token:{i}")
        crystal, ppm = _crystal(p, rng, end_ms)
        enable_ms = T0_MS + round(rng.uniform(p.day_start_h, p.day_end_h) * HOUR_MS)
        logins = []
        t = enable_ms
        mean_ms = p.interval_days * DAY_MS
        spell_ms = round((p.use_days + p.away_days) * DAY_MS)
        use_ms = round(p.use_days * DAY_MS)
        while True:
            gap = round(mean_ms) if p.regular else \
                max(HOUR_MS, round(rng.expovariate(1.0 / mean_ms)))
            nxt = t + gap
            if spell_ms and (nxt - enable_ms) % spell_ms >= use_ms:  # away: the next spell
                nxt = enable_ms + ((nxt - enable_ms) // spell_ms + 1) * spell_ms
            day = nxt // DAY_MS
            read = day * DAY_MS + round(rng.uniform(p.day_start_h, p.day_end_h) * HOUR_MS)
            read = max(read, t + HOUR_MS)
            if read >= end_ms:
                break
            typing = round(rng.uniform(p.typing_min_s, p.typing_max_s) * 1000)
            logins.append((read, read + typing))
            t = read
        tokens.append(_Token(rng.randbytes(20), crystal, ppm, logins, enable_ms))
    return tokens


# -- the policies ---------------------------------------------------------------------------

class _Policy(Protocol):
    """What the study asks of a policy, on a per-token state of its own."""

    def enable(self, key: bytes, c1: str, c2: str, now: float) -> Any: ...
    def verify(self, state: Any, key: bytes, code: str, now: float) -> tuple[Any, bool, int]: ...
    def resync(self, state: Any, key: bytes, c1: str, c2: str, now: float
               ) -> tuple[Any, bool]: ...
    def belief(self, state: Any, now: float) -> float: ...
    def band(self, state: Any, now: float) -> tuple[float, float]: ...


class CorePolicy:
    """A policy of the real validator core."""

    def __init__(self, policy: core.Policy, period: int) -> None:
        self.policy = policy
        self.period = period

    def enable(self, key: bytes, c1: str, c2: str, now: float) -> core.TokenState | None:
        state = core.TokenState(kind=Kind.TOTP, period=self.period)
        d = core.check_enable(state, key, c1, c2, now, self.policy)
        return d.state if d.accepted else None

    def verify(self, state: core.TokenState, key: bytes, code: str, now: float
               ) -> tuple[core.TokenState, bool, int]:
        d = core.verify(state, key, code, now, self.policy)
        return d.state, d.reason is core.Reason.ACCEPTED, d.window

    def resync(self, state: core.TokenState, key: bytes, c1: str, c2: str, now: float
               ) -> tuple[core.TokenState, bool]:
        d = core.resync(state, key, c1, c2, now, self.policy)
        return d.state, d.accepted

    def belief(self, state: core.TokenState, now: float) -> float:
        return state.drift.predict(now)

    def band(self, state: core.TokenState, now: float) -> tuple[float, float]:
        policy = self.policy
        shown = now - policy.typing_allowance / 2
        center = (shown + state.drift.predict(shown) - state.t0) / state.period
        first, last = core.window_steps(state, now, center, policy)
        return (first * state.period - shown, (last + 1) * state.period - shown)


@dataclass(frozen=True)
class PIState:
    """privacyIDEA's TOTP token info, as far as the check uses it."""

    shift: int = 0
    """`timeShift`: whole seconds, token step start minus the server's whole second."""
    counter: int = -1
    """The last accepted step."""
    failcount: int = 0
    refuse_next: bool = False
    """Set by a resync: the next code is refused."""


class PrivacyIdeaPolicy:
    """A model of privacyIDEA's default TOTP check (3.14, default policy: `timeWindow` 180 s,
    which accepts codes from 6 steps behind to 5 ahead of the shifted server step; the
    shift copied from the last accepted code in whole seconds; the first code after a
    resync refused; `failcount` limit 10 and no automatic reset)."""

    behind, ahead, max_fail = 6, 5, 10

    def __init__(self, period: int, resync_seconds: int = 86_400) -> None:
        self.period = period
        self.reach = max(1, resync_seconds // period)

    def _step(self, state: PIState, now: float) -> int:
        return (int(now) + state.shift) // self.period

    def enable(self, key: bytes, c1: str, c2: str, now: float) -> PIState | None:
        state, ok = self.resync(PIState(), key, c1, c2, now)
        return replace(state, refuse_next=False) if ok else None

    def verify(self, state: PIState, key: bytes, code: str, now: float
               ) -> tuple[PIState, bool, int]:
        if state.failcount >= self.max_fail:
            return state, False, 0
        c = self._step(state, now)
        floor = max(state.counter + 1, 0)
        window = c + self.ahead - max(c - self.behind, floor) + 1
        for k in _PI_ORDER:  # nearest first
            s = c + k
            if s >= floor and hotp(key, s) == code:
                if state.refuse_next:
                    return replace(state, refuse_next=False,
                                   failcount=state.failcount + 1), False, window
                return PIState(s * self.period - int(now), s), True, window
        return replace(state, failcount=state.failcount + 1), False, max(window, 0)

    def resync(self, state: PIState, key: bytes, c1: str, c2: str, now: float
               ) -> tuple[PIState, bool]:
        c = self._step(state, now)
        for k in range(0, 2 * self.reach + 1):
            second = c + ((k + 1) // 2 if k % 2 else -(k // 2))
            if second < 1 or second - 1 <= state.counter:
                continue
            if hotp(key, second - 1) == c1 and hotp(key, second) == c2:
                return PIState(second * self.period - int(now), second, 0, True), True
        return replace(state, failcount=state.failcount + 1), False

    def belief(self, state: PIState, now: float) -> float:
        return float(state.shift)

    def band(self, state: PIState, now: float) -> tuple[float, float]:
        c = self._step(state, now)
        return ((c - self.behind) * self.period - now, (c + self.ahead + 1) * self.period - now)


_PI_ORDER: tuple[int, ...] = (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6)


def policies(p: StudyParams) -> dict[str, _Policy]:
    return {
        "foblab": CorePolicy(core.Policy(window=p.window, max_window=p.max_window,
                                         drift_policy=DriftPolicy.TRACKING), p.period),
        "privacyidea": PrivacyIdeaPolicy(p.period),
        "whole-step": CorePolicy(core.Policy(window=p.window,
                                             drift_policy=DriftPolicy.WHOLE_STEP), p.period),
        "sync-only": CorePolicy(core.Policy(window=p.window,
                                            drift_policy=DriftPolicy.SYNC_ONLY), p.period),
    }


def run_study(p: StudyParams, population_name: str | None = None,
              on_token: Callable[[int], None] | None = None) -> StudyResult:
    """The study of population `p` under every policy; `on_token(1)` after each token (a
    progress bar's hook)."""
    started = time.perf_counter()
    period = p.period
    period_ms = period * 1000
    stats = {name: PolicyStats() for name in POLICIES}
    seconds = dict.fromkeys(POLICIES, 0.0)
    runners = policies(p)
    traces: list[Trace] = []
    token_years = 0.0
    return_gap_ms = RETURN_DAYS * DAY_MS
    for index, tok in enumerate(_population(p)):
        key = tok.key
        clock = tok.clock
        token_years += p.years - (tok.enable_ms - T0_MS) / YEAR_MS

        def code_at(true_ms: int, clock: _SeasonalClock = clock, key: bytes = key) -> str:
            return token_otp.totp(key, clock.token_ms(true_ms), period=period)

        def pair_at(true_ms: int, typing_ms: int, clock: _SeasonalClock = clock, key: bytes = key
                    ) -> tuple[str, str, float]:
            """A code, then the next once the display changes; returns both and `now`."""
            token_ms = clock.token_ms(true_ms)
            step = token_ms // period_ms
            wait = (step + 1) * period_ms + 500 - token_ms
            c1 = token_otp.hotp(key, step)
            c2 = token_otp.hotp(key, step + 1)
            return c1, c2, (true_ms + wait + typing_ms) / 1000

        # the codes every policy sees, computed once
        logins = []
        last = tok.enable_ms
        for read, submit in tok.logins:
            logins.append((read, submit, code_at(read), clock.token_ms(read) - read,
                           read - last >= return_gap_ms))
            last = read
        c1, c2, enable_now = pair_at(tok.enable_ms, round(p.typing_max_s * 1000))
        trace = Trace(f"token {index}", tok.ppm) if index < p.samples else None
        if trace is not None:
            trace.days = [(login[0] - tok.enable_ms) / DAY_MS for login in logins]
            trace.offset_s = [login[3] / 1000 for login in logins]
        for name in POLICIES:
            t_start = time.perf_counter()
            runner = runners[name]
            st = stats[name]
            state = runner.enable(key, c1, c2, enable_now)
            if state is None:  # cannot happen within ±24 h; counted if it does
                st.failed_resyncs += 1
                continue
            believed: list[float] = []
            band: list[tuple[float, float]] = []
            refused: list[int] = []
            resynced: list[int] = []
            verify = runner.verify
            for i, (read, submit, code, offset_ms, back) in enumerate(logins):
                now = submit / 1000
                st.logins += 1
                st.verifications += 1
                guess = runner.belief(state, now)
                err = abs(guess - offset_ms / 1000)
                if err > st.max_error_s:
                    st.max_error_s = err
                if trace is not None:
                    believed.append(guess)
                    band.append(runner.band(state, now))
                state, ok, surface = verify(state, key, code, now)
                st.surface_sum += surface
                if surface > st.max_surface:
                    st.max_surface = surface
                if surface > 2 * p.window + 1:
                    st.wide += 1
                if back:
                    st.returns += 1
                    st.returns_accepted += ok
                if ok:
                    if abs(offset_ms) > st.max_offset_s * 1000:
                        st.max_offset_s = abs(offset_ms) / 1000
                    continue
                st.refused_first += 1
                refused.append(i)
                # once more with the next code, read when the display has changed
                retry_read = read + period_ms
                st.verifications += 1
                state, ok, _ = verify(state, key, code_at(retry_read),
                                      (submit + period_ms) / 1000)
                if ok:
                    continue
                st.resyncs += 1
                resynced.append(i)
                r1, r2, rnow = pair_at(retry_read + period_ms, submit - read)
                state, ok = runner.resync(state, key, r1, r2, rnow)
                if not ok:
                    st.failed_resyncs += 1
            if trace is not None:
                trace.believed[name] = believed
                trace.band[name] = band
                trace.refused[name] = refused
                trace.resynced[name] = resynced
            seconds[name] += time.perf_counter() - t_start
        if trace is not None:
            traces.append(trace)
        if on_token is not None:
            on_token(1)
    return StudyResult(p, stats, token_years, time.perf_counter() - started, traces,
                       seconds, population_name)


def _row(name: str, s: dict[str, Any], seconds: float) -> str:
    back = s["return_accepted_share"]
    return (f"{name:<12} {100 * s['refused_share']:>8.3f}% "
            f"{s['resyncs_per_1000_token_years']:>9.1f} "
            f"{s['mean_window_steps']:>7.2f} {s['max_window_steps']:>5d} "
            f"{100 * s['wider_than_1_share']:>7.2f}% "
            f"{'-' if back is None else f'{100 * back:.2f}%':>9} "
            f"{s['max_offset_s']:>8.1f} s {s['max_error_s']:>7.1f} s {seconds:>6.2f} s")


HEADER = (f"{'policy':<12} {'refused':>9} {'resyncs':>9} {'window':>7} {'max':>5} "
          f"{'wider':>8} {'returns':>9} {'max off':>10} {'max err':>9} {'time':>8}")
LEGEND = ("refused: first codes refused; resyncs: per 1,000 token-years; window: mean steps "
          "a code was accepted at (the guessing surface), max: the largest; wider: logins "
          f"whose window was wider than ±1 step; returns: first codes accepted after "
          f"{RETURN_DAYS:g}+ days unused; max off / max err: largest offset accepted, largest "
          "belief error; time: seconds this policy took")


def table(result: StudyResult) -> str:
    p = result.params
    lines = []
    if result.population:
        lines.append(f"population {result.population}: {POPULATIONS[result.population][0]}")
    lines += [
        f"drift study: {p.tokens} tokens x {p.years:g} years, a login every {p.interval_days:g}"
        f" days on average, window ±{p.window} (foblab up to ±{p.max_window}), seed {p.seed}",
        f"crystals: {'U' if p.ppm_uniform else 'N'}(0, "
        f"{p.ppm_clip if p.ppm_uniform else p.ppm_sd:g} ppm) clipped ±{p.ppm_clip:g}, "
        f"temperature N({p.temp_mean_c:g}, {p.temp_sd_c:g}) °C ± up to {p.temp_swing_c:g} "
        f"daily" + (f", ± {p.seasonal_c:g} over the year" if p.seasonal_c else "") +
        f", aging N(0, {p.aging_sd:g}) ppm/year" +
        (f" + N(0, {p.first_year_aging_sd:g}) ln(1 + days/30) ppm"
         if p.first_year_aging_sd else "") + f", set within ±{p.initial_offset_s:g} s" +
        (f"; used {p.use_days:g} days, away {p.away_days:g}, repeated" if p.use_days else ""),
        "",
        HEADER,
    ]
    for name, st in result.stats.items():
        lines.append(_row(name, st.summary(result.token_years),
                          result.policy_seconds.get(name, 0.0)))
    lines += ["", LEGEND, "",
              f"{result.stats['foblab'].logins:,} logins, {result.token_years:,.0f} "
              f"token-years, {result.seconds:.2f} s"]
    return "\n".join(lines)


def summary(results: list[StudyResult]) -> str:
    """One line per population and policy: the figures docs/validator.md quotes."""
    lines = [f"{'population':<11} {HEADER}"]
    for r in results:
        for name, st in r.stats.items():
            lines.append(f"{r.population or '':<11} "
                         f"{_row(name, st.summary(r.token_years), r.policy_seconds[name])}")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(result: StudyResult, path: str) -> None:
    """Offset against time for the sample tokens, one panel per policy, each policy's
    accepting window shaded around the truth's path, refusals and resyncs marked, and a
    panel of refusal share against the mean accepting window per policy. Needs matplotlib
    (the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'foblab[plot]'") from None
    p = result.params
    summaries = {n: s.summary(result.token_years) for n, s in result.stats.items()}
    fig, grid = plt.subplots(2, 3, figsize=(17, 10))
    panels = [grid[0][0], grid[0][1], grid[1][0], grid[1][1]]
    for ax, name in zip(panels, POLICIES, strict=True):
        for i, tr in enumerate(result.traces):
            color = f"C{i % 10}"
            ax.plot(tr.days, tr.offset_s, color=color, lw=1.4,
                    label=f"{tr.serial}: {tr.ppm:+.1f} ppm")
            band = tr.band.get(name, [])
            if band:
                ax.fill_between(tr.days, [b[0] for b in band], [b[1] for b in band],
                                color=color, alpha=0.15, step="post", lw=0)
            bad = tr.refused.get(name, [])
            ax.plot([tr.days[j] for j in bad], [tr.offset_s[j] for j in bad], "x",
                    color=color, ms=8, mew=2)
            resynced = tr.resynced.get(name, [])
            ax.plot([tr.days[j] for j in resynced], [tr.offset_s[j] for j in resynced], "o",
                    mfc="none", color=color, ms=11, mew=1.5)
        s = summaries[name]
        ax.set_title(f"{name}: {100 * s['refused_share']:.2f}% refused, "
                     f"{s['resyncs_per_1000_token_years']:.0f} resyncs / 1000 token-years,\n"
                     f"window {s['mean_window_steps']:.1f} steps on average, "
                     f"{s['max_window_steps']} at most")
        ax.set_xlabel("days since enable")
        ax.set_ylabel("token clock offset (s)")
        ax.grid(alpha=0.3)
        # the tokens by their real rate, and the markers, in every panel
        handles, labels = ax.get_legend_handles_labels()
        mark_x = Line2D([], [], ls="", marker="x", color="k", mew=2)
        mark_o = Line2D([], [], ls="", marker="o", mfc="none", color="k")
        band_patch = Patch(color="k", alpha=0.15)
        ax.legend(handles + [mark_x, mark_o, band_patch],
                  labels + ["first code refused", "resync", "offsets the window accepts"],
                  loc="best", fontsize=9)
    ax = grid[0][2]
    for i, name in enumerate(POLICIES):
        s = summaries[name]
        ax.scatter([s["mean_window_steps"]], [100 * s["refused_share"]], s=80,
                   color=f"C{i}", label=name, zorder=3)
        ax.annotate(name, (s["mean_window_steps"], 100 * s["refused_share"]),
                    textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel("mean accepting window per login (steps): the guessing surface")
    ax.set_ylabel("first codes refused (%)")
    ax.set_title("refusals against guessing surface, per policy")
    ax.set_xlim(0, 13)
    ax.grid(alpha=0.3)
    ax = grid[1][2]
    ax.axis("off")
    cells = [[name, f"{100 * s['refused_share']:.3f}%",
              f"{s['resyncs_per_1000_token_years']:.1f}", f"{s['mean_window_steps']:.2f}",
              str(s["max_window_steps"]), f"{100 * s['wider_than_1_share']:.1f}%"]
             for name, s in summaries.items()]
    tab = ax.table(cellText=cells, colLabels=["policy", "refused", "resyncs\n/1000 ty",
                                              "mean\nwindow", "max\nwindow", "wider\nthan ±1"],
                   loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(10)
    tab.scale(1.0, 2.2)
    title = f"drift study: {p.tokens} tokens, {p.years:g} years, seed {p.seed}"
    if result.population:
        title = f"population {result.population}: " + title
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

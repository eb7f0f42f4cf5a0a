"""The drift study: a Monte Carlo over a token population, three drift policies side by side.

Each token gets a crystal drawn from the physics of 32.768 kHz tuning forks: a constant error
N(0, ppm_sd) clipped to ±ppm_clip, the parabolic temperature term around a temperature of its
own (a daily swing on top), and linear aging. Its clock is firmware_sim's `Clock` (the exact
closed form the emulated token runs on) and its codes are the firmware's. It is enabled with
two consecutive codes, then used at random times of day with exponentially distributed gaps
(mean `interval_days`); each code reaches the validator a typing delay after it was read.

The same logins go through the real validator core (`validator.core`) once per policy:

- `foblab`: the drift tracker (`DriftPolicy.TRACKING`);
- `whole-step`: the offset copied in whole steps from the last accepted code (privacyIDEA,
  LinOTP);
- `sync-only`: the offset set only by enable and resync (FreeIPA).

A refused login is retried once with the next code (a person reads the display again); if
that is refused too, the user resyncs with two consecutive codes (a helpdesk call). Reported
per policy: the share of logins whose first code was refused, resyncs per 1,000 token-years,
the largest token offset a login was accepted at, and the largest error of the policy's
belief at a login.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from firmware_sim import otp as token_otp
from firmware_sim.clock import YEAR_MS, Clock, Drift
from validator import core
from validator.drift import DriftPolicy

POLICIES: dict[str, DriftPolicy] = {
    "foblab": DriftPolicy.TRACKING,
    "whole-step": DriftPolicy.WHOLE_STEP,
    "sync-only": DriftPolicy.SYNC_ONLY,
}
T0_MS = 1_930_000_000_000  # 2031-02-28: any time works; a fixed one keeps runs identical
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class StudyParams:
    tokens: int = 1000
    years: float = 3.0
    interval_days: float = 7.0
    """Mean gap between logins (exponential, at least an hour; exact if `regular`)."""
    regular: bool = False
    """Log in every `interval_days` exactly (at a random time of day) instead."""
    day_start_h: float = 7.0
    day_end_h: float = 22.0
    """Logins happen at a uniformly random time of day in [day_start_h, day_end_h)."""
    typing_min_s: float = 1.0
    typing_max_s: float = 5.0
    """Seconds from reading a code to its arrival: uniform in [typing_min_s, typing_max_s]."""
    ppm_sd: float = 2.0
    ppm_clip: float = 20.0
    temp_mean_c: float = 22.0
    temp_sd_c: float = 4.0
    temp_swing_c: float = 3.0
    """Each token's daily swing is uniform in [0, temp_swing_c]."""
    aging_sd: float = 1.0
    """ppm per year, N(0, aging_sd) per token."""
    initial_offset_s: float = 10.0
    """The clock's error when enabled: uniform within ± this."""
    window: int = 1
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
                or self.temp_swing_c < 0 or self.aging_sd < 0 or self.initial_offset_s < 0:
            raise ValueError("spreads and limits must not be negative")
        # what firmware_sim's crystal accepts (aging is drawn unclipped: 100 sigmas short),
        # and clocks set within the day that enablement searches
        if self.ppm_clip > 10_000 or self.aging_sd > 100 or self.temp_swing_c > 100 \
                or self.initial_offset_s > 86_400:
            raise ValueError("ppm_clip <= 10000 ppm, aging_sd <= 100 ppm/year, temp_swing_c "
                             "<= 100 °C and initial_offset_s <= 86400 s required")
        if self.window < 0:
            raise ValueError("window must be >= 0")

    @classmethod
    def zero_drift(cls, **overrides: Any) -> StudyParams:
        """A population of perfect clocks (no error, at 25 °C, no aging, set exactly) whose
        codes arrive the moment they are read."""
        base: dict[str, Any] = dict(ppm_sd=0.0, temp_mean_c=25.0, temp_sd_c=0.0,
                                    temp_swing_c=0.0, aging_sd=0.0, initial_offset_s=0.0,
                                    typing_min_s=0.0, typing_max_s=0.0)
        base.update(overrides)
        return cls(**base)


@dataclass
class PolicyStats:
    logins: int = 0
    refused_first: int = 0
    verifications: int = 0
    resyncs: int = 0
    failed_resyncs: int = 0
    max_offset_s: float = 0.0
    max_error_s: float = 0.0

    def summary(self, token_years: float) -> dict[str, Any]:
        return {
            "refused_share": self.refused_first / self.logins if self.logins else 0.0,
            "resyncs_per_1000_token_years": 1000 * self.resyncs / token_years,
            "max_offset_s": round(self.max_offset_s, 3),
            "max_error_s": round(self.max_error_s, 3),
            "logins": self.logins,
            "refused_logins": self.refused_first,
            "verifications": self.verifications,
            "resyncs": self.resyncs,
            "failed_resyncs": self.failed_resyncs,
        }


@dataclass
class Trace:
    """One sample token: per login, days since enable, true offset, each policy's belief."""

    serial: str
    ppm: float
    days: list[float] = field(default_factory=list)
    offset_s: list[float] = field(default_factory=list)
    believed: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class StudyResult:
    params: StudyParams
    stats: dict[str, PolicyStats]
    token_years: float
    seconds: float
    traces: list[Trace]

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": {name: s.summary(self.token_years) for name, s in self.stats.items()},
            "params": asdict(self.params),
            "token_years": round(self.token_years, 3),
            "logins": self.stats["foblab"].logins,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Token:
    key: bytes
    clock: Clock
    ppm: float
    logins: list[tuple[int, int]]  # (read_ms, submit_ms)
    enable_ms: int


def _population(p: StudyParams) -> list[_Token]:
    tokens = []
    end_ms = T0_MS + round(p.years * YEAR_MS)
    for i in range(p.tokens):
        rng = random.Random(f"{p.seed}:token:{i}")
        ppm = max(-p.ppm_clip, min(p.ppm_clip, rng.gauss(0.0, p.ppm_sd)))
        temp = max(-30.0, min(70.0, rng.gauss(p.temp_mean_c, p.temp_sd_c)))
        swing = rng.uniform(0.0, p.temp_swing_c) if p.temp_swing_c else 0.0
        aging = rng.gauss(0.0, p.aging_sd) if p.aging_sd else 0.0
        mode = "daily" if swing else ("constant" if temp != 25.0 else "none")
        drift = Drift(ppm=ppm, aging_ppm_per_year=aging, temp_mode=mode,  # type: ignore[arg-type]
                      temp_c=temp, temp_swing_c=swing)
        offset_us = round(rng.uniform(-p.initial_offset_s, p.initial_offset_s) * 1e6)
        enable_ms = T0_MS + round(rng.uniform(p.day_start_h, p.day_end_h) * HOUR_MS)
        clock = Clock(anchor_true_ms=T0_MS, anchor_offset_us=offset_us, drift=drift,
                      aging_start_ms=T0_MS)
        logins = []
        t = enable_ms
        mean_ms = p.interval_days * DAY_MS
        while True:
            gap = round(mean_ms) if p.regular else \
                max(HOUR_MS, round(rng.expovariate(1.0 / mean_ms)))
            day = (t + gap) // DAY_MS
            read = day * DAY_MS + round(rng.uniform(p.day_start_h, p.day_end_h) * HOUR_MS)
            read = max(read, t + HOUR_MS)
            if read >= end_ms:
                break
            typing = round(rng.uniform(p.typing_min_s, p.typing_max_s) * 1000)
            logins.append((read, read + typing))
            t = read
        tokens.append(_Token(rng.randbytes(20), clock, ppm, logins, enable_ms))
    return tokens


def run_study(p: StudyParams,
              on_token: Callable[[int], None] | None = None) -> StudyResult:
    """The study; `on_token(1)` after each token (for a progress bar)."""
    started = time.perf_counter()
    period = p.period
    period_ms = period * 1000
    stats = {name: PolicyStats() for name in POLICIES}
    policies = {name: core.Policy(window=p.window, drift_policy=dp)
                for name, dp in POLICIES.items()}
    traces: list[Trace] = []
    token_years = 0.0
    for index, tok in enumerate(_population(p)):
        key = tok.key
        clock = tok.clock
        token_years += p.years - (tok.enable_ms - T0_MS) / YEAR_MS

        def code_at(true_ms: int, clock: Clock = clock, key: bytes = key) -> str:
            return token_otp.totp(key, clock.token_ms(true_ms), period=period)

        def pair_at(true_ms: int, typing_ms: int, clock: Clock = clock, key: bytes = key
                    ) -> tuple[str, str, float]:
            """A code, then the next once the display changes; returns both and `now`."""
            token_ms = clock.token_ms(true_ms)
            step = token_ms // period_ms
            wait = (step + 1) * period_ms + 500 - token_ms
            c1 = token_otp.hotp(key, step)
            c2 = token_otp.hotp(key, step + 1)
            return c1, c2, (true_ms + wait + typing_ms) / 1000

        # the codes every policy sees, computed once
        logins = [(read, submit, code_at(read), clock.token_ms(read) - read)
                  for read, submit in tok.logins]
        c1, c2, enable_now = pair_at(tok.enable_ms, round(p.typing_max_s * 1000))
        trace = Trace(f"token {index}", tok.ppm) if index < p.samples else None
        if trace is not None:
            trace.days = [(read - tok.enable_ms) / DAY_MS for read, _, _, _ in logins]
            trace.offset_s = [off / 1000 for _, _, _, off in logins]
        for name, policy in policies.items():
            st = stats[name]
            state = core.TokenState(kind=core.Kind.TOTP, period=period)
            decision = core.check_enable(state, key, c1, c2, enable_now, policy)
            if not decision.accepted:  # cannot happen within ±24 h; counted if it does
                st.failed_resyncs += 1
                continue
            state = decision.state
            believed: list[float] = []
            verify = core.verify
            for read, submit, code, offset_ms in logins:
                now = submit / 1000
                st.logins += 1
                st.verifications += 1
                guess = state.drift.predict(now)
                err = abs(guess - offset_ms / 1000)
                if err > st.max_error_s:
                    st.max_error_s = err
                if trace is not None:
                    believed.append(guess)
                d = verify(state, key, code, now, policy)
                if d.accepted:
                    state = d.state
                    if abs(offset_ms) > st.max_offset_s * 1000:
                        st.max_offset_s = abs(offset_ms) / 1000
                    continue
                st.refused_first += 1
                state = d.state
                # once more with the next code, read when the display has changed
                retry_read = read + period_ms
                st.verifications += 1
                d = verify(state, key, code_at(retry_read), (submit + period_ms) / 1000,
                           policy)
                state = d.state
                if d.accepted:
                    continue
                st.resyncs += 1
                r1, r2, rnow = pair_at(retry_read + period_ms, submit - read)
                d = core.resync(state, key, r1, r2, rnow, policy)
                state = d.state
                if not d.accepted:
                    st.failed_resyncs += 1
            if trace is not None:
                trace.believed[name] = believed
        if trace is not None:
            traces.append(trace)
        if on_token is not None:
            on_token(1)
    return StudyResult(p, stats, token_years, time.perf_counter() - started, traces)


def table(result: StudyResult) -> str:
    p = result.params
    lines = [
        f"drift study: {p.tokens} tokens x {p.years:g} years, a login every {p.interval_days:g}"
        f" days on average, window ±{p.window} step, seed {p.seed}",
        f"crystals: N(0, {p.ppm_sd:g} ppm) clipped ±{p.ppm_clip:g}, temperature "
        f"N({p.temp_mean_c:g}, {p.temp_sd_c:g}) °C ± up to {p.temp_swing_c:g} daily, aging "
        f"N(0, {p.aging_sd:g}) ppm/year, set within ±{p.initial_offset_s:g} s",
        "",
        f"{'policy':<12} {'refused':>10} {'resyncs/1000 token-yr':>22} {'max offset':>11} "
        f"{'max error':>10} {'verifications':>14}",
    ]
    for name, st in result.stats.items():
        s = st.summary(result.token_years)
        lines.append(f"{name:<12} {100 * s['refused_share']:>9.3f}% "
                     f"{s['resyncs_per_1000_token_years']:>22.1f} "
                     f"{s['max_offset_s']:>9.1f} s {s['max_error_s']:>8.1f} s "
                     f"{s['verifications']:>14,}")
    lines += ["", f"{result.stats['foblab'].logins:,} logins, {result.token_years:,.0f} "
              f"token-years, {result.seconds:.2f} s"]
    return "\n".join(lines)


def plot(result: StudyResult, path: str) -> None:
    """Offset against time for the sample tokens, one panel per policy, with the acceptance
    window drawn around each policy's belief. Needs matplotlib (the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'foblab[plot]'") from None
    p = result.params
    half = (p.window + 0.5) * p.period
    fig, axes = plt.subplots(1, len(POLICIES), figsize=(5 * len(POLICIES), 4.2), sharey=True)
    for ax, name in zip(axes, POLICIES, strict=True):
        for i, tr in enumerate(result.traces):
            color = f"C{i % 10}"
            ax.plot(tr.days, tr.offset_s, color=color, lw=1.2,
                    label=f"{tr.ppm:+.1f} ppm")
            b = tr.believed.get(name, [])
            if b:
                ax.fill_between(tr.days, [x - half for x in b], [x + half for x in b],
                                color=color, alpha=0.15, step="post", lw=0)
        st = result.stats[name].summary(result.token_years)
        ax.set_title(f"{name}: {100 * st['refused_share']:.2f}% refused, "
                     f"{st['resyncs_per_1000_token_years']:.0f} resyncs/1000 ty", fontsize=9)
        ax.set_xlabel("days since enable")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("token clock offset (s); band: acceptance window")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"drift study: {p.tokens} tokens, {p.years:g} years, seed {p.seed}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


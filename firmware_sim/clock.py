"""The token's real-time clock: a 32.768 kHz watch crystal that drifts.

Token time is true time plus an offset. The offset is what the crystal's frequency error has
accumulated since the last anchor, plus whatever QA stepped in. The error, in ppm, at model
time s (milliseconds) is

    err(s) = ppm                                        constant error (trim, part spread)
           + aging_ppm_per_year * (s - aging_start) / Y  linear aging, Y = 365.25 days
           - 0.034 * (T(s) - 25)**2                     tuning-fork crystal turnover curve

with T(s) either constant or a daily profile T(s) = T_mean + swing * sin(2*pi*(s - 10 h)/day)
(coldest at 04:00 UTC, warmest at 16:00 UTC; `swing` is the amplitude). Every term
integrates in closed form, so the offset at any time is computed exactly from the anchor (no
stepping, no accumulated rounding) and rounded once to whole microseconds. The same settings
and the same true time therefore always give the same token time.

"Model time" is true time plus `shift_ms`: `age()` moves the crystal through a span of
simulated time at once, adding that span's accumulated error to the offset and advancing the
model time by the span (so aging and the daily temperature profile carry on from there), while
the token's displayed time moves only by the error, never by the span itself.

The clock can be held: by QA's FREEZE, or because the battery is dead (the oscillator stops).
While held the token time stands still; when the last hold is released the clock resumes from
the held value, so a token whose battery was dead for an hour is an hour behind afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from protocol import TemperatureMode

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS + DAY_MS // 4
TEMP_COEFF_PPM = -0.034
"""ppm per degree Celsius squared, the parabolic coefficient of a 32.768 kHz tuning fork."""
TURNOVER_C = 25.0
DAILY_PHASE_MS = 10 * 3_600_000
"""The daily profile crosses its mean rising at 10:00 UTC: coldest at 04:00, warmest at 16:00."""


def implied_mode(temperature_c: float, swing_c: float) -> TemperatureMode:
    """The temperature mode settings without one mean: a swing is a daily profile, a
    temperature off the turnover point a constant one, else none."""
    if swing_c:
        return TemperatureMode.DAILY
    return TemperatureMode.CONSTANT if temperature_c != TURNOVER_C else TemperatureMode.NONE


@dataclass(frozen=True)
class Crystal:
    """A crystal's frequency error settings (what SET_DRIFT sets and CLOCK echoes, as
    `protocol.DriftSettings`; field for field the same names). Not to be confused with the
    validator's drift *estimate*, `validator.drift.Drift`."""

    ppm: float = 0.0
    aging_ppm_per_year: float = 0.0
    temperature_mode: TemperatureMode = TemperatureMode.NONE
    temperature_c: float = TURNOVER_C
    """Constant temperature, or the daily mean for the daily profile."""
    temperature_swing_c: float = 0.0
    """Amplitude of the daily profile: the temperature swings between mean ± this."""

    def __post_init__(self) -> None:
        # A label ("daily") is taken too; the field always holds the enum afterwards.
        object.__setattr__(self, "temperature_mode",
                           TemperatureMode.from_label(self.temperature_mode))
        for name in ("ppm", "aging_ppm_per_year", "temperature_c", "temperature_swing_c"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if abs(self.ppm) > 10_000 or abs(self.aging_ppm_per_year) > 10_000:
            raise ValueError("drift beyond 10,000 ppm is not a crystal")
        if not -100 <= self.temperature_c <= 150 \
                or not 0 <= self.temperature_swing_c <= 100:
            raise ValueError("temperature out of range")


def _error_integral_ms(crystal: Crystal, aging_start_ms: int, a: int, b: int) -> float:
    """The integral of err(s) * 1e-6 over model time [a, b], in milliseconds."""
    span = b - a
    ppm_ms = crystal.ppm * span
    if crystal.aging_ppm_per_year:
        # integral of (s - e) ds = (b - a) * ((b - e) + (a - e)) / 2, kept in small numbers.
        mid = ((b - aging_start_ms) + (a - aging_start_ms)) / 2
        ppm_ms += crystal.aging_ppm_per_year / YEAR_MS * span * mid
    if crystal.temperature_mode is TemperatureMode.CONSTANT:
        ppm_ms += TEMP_COEFF_PPM * (crystal.temperature_c - TURNOVER_C) ** 2 * span
    elif crystal.temperature_mode is TemperatureMode.DAILY:
        # (d + A sin th)^2 = d^2 + A^2/2 + 2 A d sin th - A^2/2 cos 2th, th = 2 pi (s - phase) / day
        d = crystal.temperature_c - TURNOVER_C
        amp = crystal.temperature_swing_c
        w = 2 * math.pi / DAY_MS

        def theta(s: int) -> float:
            return w * ((s - DAILY_PHASE_MS) % DAY_MS)  # reduced exactly in integers

        ta, tb = theta(a), theta(b)
        mean_sq = (d * d + amp * amp / 2) * span
        sin_part = 2 * amp * d * (math.cos(ta) - math.cos(tb)) / w
        cos_part = -(amp * amp / 2) * (math.sin(2 * tb) - math.sin(2 * ta)) / (2 * w)
        ppm_ms += TEMP_COEFF_PPM * (mean_sq + sin_part + cos_part)
    return ppm_ms * 1e-6


@dataclass(frozen=True)
class Clock:
    """An immutable clock state; every method takes the true time and returns a new state."""

    anchor_true_ms: int
    """True time at which `anchor_offset_us` was exact."""
    anchor_offset_us: int = 0
    """Token time minus true time at the anchor, microseconds."""
    crystal: Crystal = field(default_factory=Crystal)
    shift_ms: int = 0
    """Model time minus true time: simulated time the crystal has lived through (AGE)."""
    aging_start_ms: int = 0
    """Model time at which aging starts (when the aging rate was set)."""
    held_ms: int | None = None
    """Token time while the clock is held (frozen or stopped), else None."""
    holds: frozenset[str] = frozenset()
    """Why the clock is held: {"freeze", "battery"}."""

    # -- reading ---------------------------------------------------------------------
    def running_offset_us(self, now_ms: int) -> int:
        """Token minus true time, microseconds, as the running crystal has it."""
        a = self.anchor_true_ms + self.shift_ms
        b = now_ms + self.shift_ms
        err_ms = _error_integral_ms(self.crystal, self.aging_start_ms, a, b)
        return self.anchor_offset_us + round(err_ms * 1000)

    def token_us(self, now_ms: int) -> int:
        """The token's own time, Unix microseconds."""
        if self.held_ms is not None:
            return self.held_ms * 1000
        return now_ms * 1000 + self.running_offset_us(now_ms)

    def token_ms(self, now_ms: int) -> int:
        """The token's own time, Unix milliseconds (what the firmware computes codes from)."""
        return self.token_us(now_ms) // 1000

    def offset_ms(self, now_ms: int) -> int:
        """Token time minus true time, milliseconds."""
        return self.token_ms(now_ms) - now_ms

    @property
    def frozen(self) -> bool:
        return "freeze" in self.holds

    # -- changes ---------------------------------------------------------------------
    def _reanchor(self, now_ms: int, offset_us: int | None = None) -> Clock:
        off = self.running_offset_us(now_ms) if offset_us is None else offset_us
        return replace(self, anchor_true_ms=now_ms, anchor_offset_us=off)

    def set_crystal(self, now_ms: int, crystal: Crystal) -> Clock:
        """New crystal settings from now on; the time already accumulated stays."""
        clock = self._reanchor(now_ms)
        aging_start = clock.aging_start_ms
        if crystal.aging_ppm_per_year != self.crystal.aging_ppm_per_year:
            aging_start = now_ms + self.shift_ms
        return replace(clock, crystal=crystal, aging_start_ms=aging_start)

    def adjust(self, now_ms: int, delta_ms: int) -> Clock:
        """Step the clock by `delta_ms` (a jump, or a resync by QA)."""
        if self.held_ms is not None:
            return replace(self, held_ms=self.held_ms + delta_ms)
        return self._reanchor(now_ms, self.running_offset_us(now_ms) + delta_ms * 1000)

    def set_time(self, now_ms: int, token_ms: int) -> Clock:
        """Set the token's time to an absolute value (it keeps running unless held)."""
        clock = self._reanchor(now_ms, (token_ms - now_ms) * 1000)
        if clock.held_ms is not None:
            clock = replace(clock, held_ms=token_ms)
        return clock

    def age(self, now_ms: int, span_ms: int) -> Clock:
        """Live through `span_ms` of simulated time at once: add its error, advance the model."""
        if span_ms < 0:
            raise ValueError("cannot age backwards")
        a = now_ms + self.shift_ms
        err_us = round(_error_integral_ms(self.crystal, self.aging_start_ms, a, a + span_ms) * 1000)
        clock = self._reanchor(now_ms)
        return replace(clock, anchor_offset_us=clock.anchor_offset_us + err_us,
                       shift_ms=self.shift_ms + span_ms)

    def hold(self, now_ms: int, reason: str) -> Clock:
        """Stop the clock (FREEZE, or a dead battery)."""
        held = self.token_ms(now_ms)
        return replace(self, held_ms=held, holds=self.holds | {reason})

    def release(self, now_ms: int, reason: str) -> Clock:
        """Drop a hold; when none is left the clock runs on from the held value."""
        holds = self.holds - {reason}
        if self.held_ms is None or holds:
            return replace(self, holds=holds)
        clock = self._reanchor(now_ms, (self.held_ms - now_ms) * 1000)
        return replace(clock, held_ms=None, holds=holds)

    # -- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor_true_ms": self.anchor_true_ms,
            "anchor_offset_us": self.anchor_offset_us,
            # under the state file's own names, so every state file written before loads
            "drift": {key: getattr(self.crystal, field) for key, field in _STATE_KEYS.items()},
            "shift_ms": self.shift_ms,
            "aging_start_ms": self.aging_start_ms,
            "held_ms": self.held_ms,
            "holds": sorted(self.holds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clock:
        """The clock of a state file. Raises KeyError, TypeError or ValueError for one that
        is not a clock's."""
        return cls(
            anchor_true_ms=int(data["anchor_true_ms"]),
            anchor_offset_us=int(data["anchor_offset_us"]),
            crystal=_crystal_from_dict(data["drift"]),
            shift_ms=int(data["shift_ms"]),
            aging_start_ms=int(data["aging_start_ms"]),
            held_ms=None if data["held_ms"] is None else int(data["held_ms"]),
            holds=frozenset(data["holds"]),
        )


_STATE_KEYS = {"ppm": "ppm", "aging_ppm_per_year": "aging_ppm_per_year",
               "temp_mode": "temperature_mode", "temp_c": "temperature_c",
               "temp_swing_c": "temperature_swing_c"}
"""The state file's names of the crystal's fields (older than the fields' own names)."""


def _crystal_from_dict(data: dict[str, Any]) -> Crystal:
    if set(data) != set(_STATE_KEYS):
        raise ValueError(f"a crystal has the fields {', '.join(_STATE_KEYS)}, not "
                         f"{', '.join(map(str, data))}")
    return Crystal(**{field: data[key] for key, field in _STATE_KEYS.items()})

"""Where a token's clock is believed to be: the drift tracker and its two comparison policies.

An accepted TOTP code at step `s`, received at true time `t`, says the token's clock offset
`d = token_time - true_time` lay in the interval `[s*P + T0 - t, (s+1)*P + T0 - t + D)`
(D: an allowance for the seconds between reading the code and its arrival). A clock with a
constant rate error follows `d(t) = a + r*(t - tref)`. The tracker keeps the *feasible set*
of `(a, r)` pairs: the convex polygon of lines that pass through every observed interval,
with `|r|` bounded by a physical limit (±100 ppm by default). Each accepted code clips the
polygon by two half-planes (a few dozen float operations), so the estimate narrows with
every code and the rate falls out of the history without a separate fit.

The polygon is the proof; the prediction is a belief inside it. The ±100 ppm bound is a
safety limit, not a prior: real crystals run within a few ppm (trimmed) or ±20 ppm
(untrimmed). With few codes or a long gap, the midpoint of the feasible offsets is set by
that limit rather than by the evidence (one side of the rate range cut by the data, the
other by ±100 ppm) and lands tens of seconds from the truth. So the believed *rate* is the
posterior mean of the feasible rates under a heavy-tailed prior, `RATE_PRIOR` (a scale
mixture of zero-mean Gaussians: most crystals small, some large), and the prediction at
`now` extrapolates with it from the midpoint of the feasible offsets at the newest
observation (where the offset is known best), clamped to the feasible offsets at `now`.
With strong evidence the rate range is narrow and the prior does not matter.

If a new observation contradicts the set (the rate changed, or a code was typed far later
than the allowance), the polygon is rebuilt from the newest observations backwards, keeping
as many as stay consistent: recent evidence wins, old evidence is forgotten.

Two comparison policies, used by the drift study, sit beside it:

- `whole-step` (privacyIDEA, LinOTP): the offset is the whole-step difference between the
  last accepted step and the server's step at that moment.
- `sync-only` (FreeIPA): the offset changes only on enable or resync.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Final

Vertex = tuple[float, float]
Observation = tuple[float, float, float]  # (t, lo, hi) of the offset in seconds
# The believed line and what the window needs, cached per state (`Drift.line`):
# (a, r, rlo, rhi): the line `a + r*(t - tref)`; the active polygon's rates [rlo, rhi].
Line = tuple[float, float, float, float]
UNSTEADY_S: Final = 240 * 86_400.0
"""How long a token whose rate was seen to change counts as unsteady (`Drift.reach`): 240
days with an 18 ppm allowance (`Policy.window_unsteady_ppm`) was the best trade of the
drift study (docs/scenarios.md)."""
YOUNG_S: Final = 105 * 86_400.0
"""A token whose kept codes span less than this (15 weeks) is young (`Drift.reach`): its rate
is known over about a season or less, and temperature may still move it several ppm (the
drift study's car tokens, in their first months, ran 2-6 ppm off the rate of their first
codes; two of them just past 90 days were refused with 90)."""
STEADY_AFTER: Final = 8
"""Codes after which a belief a new code proves wrong counts as a rate change (`track`)."""
CHANGE_S: Final = 10.0
CHANGE_GAP_S: Final = 30 * 86_400.0
"""How far a new code may lie from the believed offset before it counts as a rate change
(`_changed`): `CHANGE_S` seconds times the square of the time since the previous code in
units of `CHANGE_GAP_S` (0.5 s after a week, 10 s after a month, 40 s after two). A steady
token's belief misses by a few seconds after a long gap (the daily temperature swing,
aging): counted as changes, those misses marked half of the monthly tokens unsteady and
widened their windows for nothing. A weekly token brought in from the cold (21 ppm: 13 s a
week) must still be caught at its first codes indoors (scenarios/cold-car.toml), hence a
margin that is nearly nothing for short gaps (docs/scenarios.md)."""
BEND_SPAN_S: Final = 90 * 86_400.0
BEND_CODES: Final = 8
"""`Drift.bent`: a curve is fitted to the kept codes of the last `BEND_SPAN_S` (at least
`BEND_CODES` of them, spanning at least two thirds of it) and followed at most
`BEND_SPAN_S` past the newest: further, the seasons may have turned it (the study's `gap`
population: six months away after three months' use)."""
SETTLED_S: Final = 90 * 86_400.0
"""Gaps up to this long allow a steady token's rate `rate_change` (`Drift.reach`); a longer
one allows it in proportion to the gap (the rate wanders further the longer nobody looks)."""


class DriftPolicy(enum.StrEnum):
    """How verification decides where the token's clock is."""

    TRACKING = "tracking"
    WHOLE_STEP = "whole-step"
    SYNC_ONLY = "sync-only"


# The prior on a token clock's rate error (seconds per second), as (weight, sd) components
# of a zero-mean Gaussian scale mixture: most crystals within a few ppm (trimmed, or
# untrimmed at room temperature), a tail of untrimmed or cold ones out to tens of ppm.
# Measured choice: with a single Gaussian, a sd small enough to fix the long-gap error of
# near-zero tokens (10 ppm) costs ±40 ppm tokens refusals in their first weeks, and one wide
# enough for them (20 ppm) leaves the near-zero error large (docs/validator.md).
RATE_PRIOR: Final[tuple[tuple[float, float], ...]] = ((0.8, 5e-6), (0.2, 40e-6))
_SQRT2: Final = math.sqrt(2.0)
_SQRT2PI: Final = math.sqrt(2.0 * math.pi)

# Module constants: an identity test against them skips the enum class's attribute lookup.
_TRACKING: Final = DriftPolicy.TRACKING
_WHOLE_STEP: Final = DriftPolicy.WHOLE_STEP
_SYNC_ONLY: Final = DriftPolicy.SYNC_ONLY


@dataclass(slots=True, unsafe_hash=True)
class Drift:
    """The drift estimate of one TOTP token. Never changed in place: every update returns a
    new one. (Not `frozen`: a frozen dataclass's constructor costs four times as much, and
    one is built per accepted code. Hashable and comparable as before.)

    `offset` is the fallback (and the whole-step / sync-only policies' only) estimate in
    seconds. `tref` and `poly` hold the tracker's feasible set of `(a, r)`, `history` the
    last observations, kept to rebuild the set when evidence conflicts.

    `line` caches the believed line `(a, r)` (offset at `tref`, rate): `r` is the mean of
    `RATE_PRIOR` over the rates of the active polygon (`soft`, else `poly`), and the line
    passes through the midpoint of the active polygon's offsets at the newest observation.
    Behind those two it keeps what `reach` needs: the active polygon's range of rates.
    `changed` is the time of the newest code that contradicted the set (the rate changed,
    or a code came late), 0 if none has.
    A pure function of the other fields (`believed_line`), so it is left out of
    comparisons, hashing and the JSON form; `from_json` computes it. None: computed when
    needed.
    """

    offset: float = 0.0
    tref: float = 0.0
    poly: tuple[Vertex, ...] = ()
    history: tuple[Observation, ...] = ()
    soft: tuple[Vertex, ...] = ()
    changed: float = 0.0
    line: Line | None = field(default=None, compare=False)

    def predict(self, now: float) -> float:
        """The believed offset (token time minus true time) at `now`, in seconds.

        The midpoint of the feasible offsets at the newest observation, extrapolated with
        the believed rate, clamped to the feasible offsets at `now`.
        """
        poly = self.soft or self.poly
        if not poly:
            return self.offset
        line = self.line
        if line is None:
            line = believed_line(self)
        dt = now - self.tref
        p = line[0] + line[1] * dt
        a, r = poly[0]  # `_span`, inlined: this runs on every verification
        lo = hi = a + r * dt
        for a, r in poly:
            v = a + r * dt
            if v < lo:
                lo = v
            elif v > hi:
                hi = v
        return lo if p < lo else hi if p > hi else p

    def bounds(self, now: float) -> tuple[float, float]:
        """The range of offsets at `now` consistent with every kept observation."""
        if not self.poly:
            return (self.offset, self.offset)
        return _span(self.poly, now - self.tref)

    def reach(self, now: float, rate_bound: float, rate_change: float,
              unsteady: float, young: float = 0.0) -> tuple[float, float]:
        """Where the clock can realistically be at `now`: the newest observation's
        interval, carried forward at the active polygon's rates (cut to `rate_bound`, s/s,
        unless the evidence lies wholly beyond it), plus `rate_change` (s/s) times the time
        since, for a rate that is not quite the polygon's (temperature, aging; in proportion
        to the gap beyond `SETTLED_S`): `unsteady`
        instead while a code has contradicted the set within `UNSTEADY_S` (a token whose
        rate has been seen to change: in a car through the seasons), and at least `young`
        while the kept codes span less than `YOUNG_S` (a rate not yet watched through a
        season).

        A box (an interval, a range of rates) rather than the polygon: a handful of float
        operations from the cached `line`, and never narrower than the exact set.
        """
        if not (self.soft or self.poly):
            return (self.offset, self.offset)
        _, _, rlo, rhi = self.line or believed_line(self)
        t, lo, hi = self.history[-1]
        gap = now - t
        if self.changed and now - self.changed < UNSTEADY_S:
            rate_change = unsteady
        else:
            if gap > SETTLED_S:  # a long absence: aging and the seasons moved the rate further
                rate_change *= gap / SETTLED_S
            if young > rate_change and t - self.history[0][0] < YOUNG_S:
                rate_change = young
        if rlo < -rate_bound < rhi:
            rlo = -rate_bound
        if rlo < rate_bound < rhi:
            rhi = rate_bound
        if gap < 0:  # `now` before the newest observation (a late request): swap the ends
            gap = -gap
            lo, hi = lo - rhi * gap, hi - rlo * gap
        else:
            lo, hi = lo + rlo * gap, hi + rhi * gap
        return (lo - rate_change * gap, hi + rate_change * gap)

    def bent(self, now: float) -> float | None:
        """The offset at `now` on the parabola that best fits (least squares) the middles
        of the kept codes of the last `BEND_SPAN_S`: a rate that has been drifting (a car
        token as the season turns) keeps drifting for a while. None when there is too
        little to fit (`BEND_CODES`), or `now` is more than `BEND_SPAN_S` past the newest
        code.

        Only where the window is placed when the clock can be in more steps than the cap
        allows (`core.window_steps`): a handful of float operations per kept code, never
        on the accept fast path.
        """
        history = self.history
        if not history:
            return None
        t1 = history[-1][0]
        if now - t1 > BEND_SPAN_S:
            return None
        # x in days from the newest code, so the normal equations stay well-conditioned
        pts = [((t - t1) / 86_400.0, (lo + hi) / 2) for t, lo, hi in history
               if t1 - t <= BEND_SPAN_S]
        if len(pts) < BEND_CODES or -pts[0][0] * 86_400.0 < BEND_SPAN_S * 2 / 3:
            return None
        s0 = float(len(pts))
        s1 = s2 = s3 = s4 = y0 = y1 = y2 = 0.0
        for x, y in pts:
            xx = x * x
            s1 += x
            s2 += xx
            s3 += xx * x
            s4 += xx * xx
            y0 += y
            y1 += y * x
            y2 += y * xx
        # Cramer's rule on [[s0 s1 s2] [s1 s2 s3] [s2 s3 s4]] (a, b, c) = (y0, y1, y2):
        # three normal equations by hand, as numpy is no dependency of the validator (only
        # of the optional plot extra) and a parabola through at most 32 points needs none.
        m = ((s0, s1, s2), (s1, s2, s3), (s2, s3, s4))
        det = _det3(m)
        if abs(det) < 1e-9:
            return None
        a = _det3(((y0, s1, s2), (y1, s2, s3), (y2, s3, s4))) / det
        b = _det3(((s0, y0, s2), (s1, y1, s3), (s2, y2, s4))) / det
        c = _det3(((s0, s1, y0), (s1, s2, y1), (s2, s3, y2))) / det
        g = (now - t1) / 86_400.0
        bent = a + b * g + c * g * g
        return bent if math.isfinite(bent) else None  # a stored history gone bad: no curve

    def possible(self, now: float, max_rate: float) -> tuple[float, float]:
        """Where the clock can be at `now` if its rate may have changed to anything within
        ±`max_rate` since the newest observation: that observation's interval, grown by
        `max_rate` times the time since. A superset of `bounds`."""
        if not self.history:
            return self.bounds(now)
        t, lo, hi = self.history[-1]
        grow = max_rate * abs(now - t)
        return (lo - grow, hi + grow)

    def rate(self) -> float:
        """The believed drift rate (seconds per second; 1e-6 = 1 ppm): the mean of
        `RATE_PRIOR` over the active polygon's rates."""
        if not (self.soft or self.poly):
            return 0.0
        return (self.line or believed_line(self))[1]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "offset": self.offset,
            "tref": self.tref,
            "poly": [list(v) for v in self.poly],
            "history": [list(o) for o in self.history],
            "soft": [list(v) for v in self.soft],
        }
        if self.changed:  # absent for a token whose rate never changed: the form as before
            out["changed"] = self.changed
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Drift:
        drift = cls(
            offset=float(data.get("offset", 0.0)),
            tref=float(data.get("tref", 0.0)),
            poly=tuple((float(a), float(r)) for a, r in data.get("poly", ())),
            history=tuple((float(t), float(lo), float(hi))
                          for t, lo, hi in data.get("history", ())),
            soft=tuple((float(a), float(r)) for a, r in data.get("soft", ())),
            changed=float(data.get("changed", 0.0)),
        )
        if drift.soft or drift.poly:
            drift.line = believed_line(drift)
        return drift


def _det3(m: tuple[tuple[float, float, float], ...]) -> float:
    (a, b, c), (d, e, f), (g, h, i) = m
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _span(poly: tuple[Vertex, ...] | list[Vertex], dt: float) -> tuple[float, float]:
    """The least and greatest offset `a + r*dt` over the polygon's vertices: the offsets it
    allows `dt` seconds after tref (a convex polygon's extremes lie at vertices).
    `Drift.predict` and `track` inline this loop: a call there costs a measurable share of
    a verification (docs/benchmarks.md)."""
    a, r = poly[0]
    lo = hi = a + r * dt
    for a, r in poly:
        v = a + r * dt
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return lo, hi


# Per component of RATE_PRIOR: (weight, 1 / (sd * sqrt 2), sd / sqrt(2 pi)).
_PRIOR: Final = tuple((w, 1.0 / (sd * _SQRT2), sd / _SQRT2PI) for w, sd in RATE_PRIOR)


def _rate_in(lo: float, hi: float) -> float:
    """The mean of `RATE_PRIOR` restricted to [lo, hi].

    Each Gaussian component contributes its mass on the range and its truncated mean there;
    a component with no representable mass on the range (far in its tail) is left out, and
    if none has any, the end of the range nearest zero is taken. A range narrow against
    the prior (strong evidence) gives nearly its own midpoint.
    """
    if hi - lo <= 1e-12:  # a millionth of a ppm: nothing to weigh
        return (lo + hi) / 2
    mass = moment = 0.0
    erf, erfc, exp = math.erf, math.erfc, math.exp
    for weight, k, c in _PRIOR:
        a, b = lo * k, hi * k  # in units of sd * sqrt 2
        if a >= 0:  # both in the upper tail: erfc keeps the precision
            z = erfc(a) - erfc(b)
        elif b <= 0:
            z = erfc(-b) - erfc(-a)
        else:
            z = erf(b) - erf(a)
        if z <= 0.0:
            continue
        # mass 0.5 z; truncated mean sd (phi(a') - phi(b')) / (0.5 z), a' = a sqrt 2
        mass += weight * z
        moment += weight * 2.0 * c * (exp(-a * a) - exp(-b * b))
    if mass <= 0.0:
        return lo if lo > 0 else hi if hi < 0 else 0.0
    m = moment / mass
    return lo if m < lo else hi if m > hi else m


def believed_line(drift: Drift) -> Line:
    """The believed line `(a, r)` of a tracked drift (see `Drift.line`)."""
    x = (drift.history[-1][0] if drift.history else drift.tref) - drift.tref
    return _belief(drift.soft or drift.poly, x)


def _belief(poly: tuple[Vertex, ...] | list[Vertex], x: float) -> Line:
    """The line whose rate is the mean of `RATE_PRIOR` over `poly`'s rates (`_rate_in`) and
    which passes through the midpoint of `poly`'s offsets at `x` (relative to tref): at the
    newest observation the offset is known best, whatever the rate. One pass over the
    vertices for both ranges (`_span` and the rates')."""
    a, r = poly[0]
    rlo = rhi = r
    lo = hi = a + r * x
    for a, r in poly:
        v = a + r * x
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
        if r < rlo:
            rlo = r
        elif r > rhi:
            rhi = r
    rate = _rate_in(rlo, rhi)
    return ((lo + hi) / 2 - rate * x, rate, rlo, rhi)


def _made(offset: float, tref: float, poly: tuple[Vertex, ...],
          history: tuple[Observation, ...], soft: tuple[Vertex, ...] = (),
          changed: float = 0.0) -> Drift:
    """A tracked `Drift` with its believed line computed afresh."""
    return Drift(offset, tref, poly, history, soft, changed,
                 _belief(soft or poly, history[-1][0] - tref))


def interval(step: int, now: float, period: int, t0: int, allowance: float) -> Observation:
    """The offset interval an accepted code at `step`, received at `now`, proves."""
    lo = step * period + t0 - now
    return (now, lo, lo + period + allowance)


def _clip(poly: list[Vertex], dt: float, bound: float, sign: float) -> list[Vertex]:
    """Keep the part of the convex polygon where sign*(a + r*dt - bound) >= 0."""
    out: list[Vertex] = []
    n = len(poly)
    for i in range(n):
        p = poly[i]
        q = poly[(i + 1) % n]
        fp = sign * (p[0] + p[1] * dt - bound)
        fq = sign * (q[0] + q[1] * dt - bound)
        if fp >= 0:
            out.append(p)
        if (fp > 0 > fq) or (fp < 0 < fq):  # a strict crossing: one new vertex
            k = fp / (fp - fq)
            out.append((p[0] + k * (q[0] - p[0]), p[1] + k * (q[1] - p[1])))
    # Drop vertices that coincide (a constraint through a vertex, rounding): without this
    # the polygon would gain a vertex with nearly every code.
    kept: list[Vertex] = []
    for v in out:
        if not kept or abs(v[0] - kept[-1][0]) > 1e-7 or abs(v[1] - kept[-1][1]) > 1e-13:
            kept.append(v)
    while len(kept) > 1 and abs(kept[0][0] - kept[-1][0]) <= 1e-7 and \
            abs(kept[0][1] - kept[-1][1]) <= 1e-13:
        kept.pop()
    return kept


def _add(poly: list[Vertex], tref: float, obs: Observation) -> list[Vertex]:
    t, lo, hi = obs
    dt = t - tref
    return _clip(_clip(poly, dt, lo, 1.0), dt, hi, -1.0)


def _narrow(poly: tuple[Vertex, ...], dt: float, lo: float, hi: float) -> tuple[Vertex, ...]:
    """`_add` for a polygon `_clip` made: clips only by the bounds some vertex violates.

    A bound no vertex violates leaves a (deduplicated) polygon as it is, so the common case,
    an observation that cuts nothing, costs one pass over the vertices and returns `poly`
    itself. Vertices a clip by `lo` creates lie on `lo < hi`, so whether `hi` cuts is known
    from the original vertices.
    """
    below = above = False
    for a, r in poly:
        v = a + r * dt
        if v < lo:
            below = True
        elif v > hi:
            above = True
    if not (below or above):
        return poly
    out = list(poly)
    if below:
        out = _clip(out, dt, lo, 1.0)
    if above:
        out = _clip(out, dt, hi, -1.0)
    return tuple(out)


def _kept(past: tuple[Observation, ...], obs: Observation,
          history: int) -> tuple[Observation, ...]:
    """The last `history` observations once `obs` is added."""
    if len(past) < history:
        return past + (obs,)
    return past[len(past) - history + 1:] + (obs,)


def _start(obs: Observation, max_rate: float) -> list[Vertex]:
    _, lo, hi = obs
    return [(lo, -max_rate), (hi, -max_rate), (hi, max_rate), (lo, max_rate)]


def _rebuild(history: tuple[Observation, ...], max_rate: float) -> tuple[float, list[Vertex]]:
    """The feasible set of the newest observations, going back while they stay consistent."""
    newest = history[-1]
    tref = newest[0]
    poly = _start(newest, max_rate)
    for obs in reversed(history[:-1]):
        clipped = _add(poly, tref, obs)
        if len(clipped) < 3:
            break
        poly = clipped
    return tref, poly


def observe(
    drift: Drift, obs: Observation, *, policy: DriftPolicy, period: int,
    max_rate: float, history: int,
) -> Drift:
    """The estimate after an accepted code (not a resync) gave observation `obs`.

    The hot path of every accepted TOTP code: one pass over the polygon's few vertices when
    the observation cuts nothing, two half-plane clips at most, one new `Drift`.
    """
    if policy is _SYNC_ONLY:
        return drift
    if policy is _WHOLE_STEP:
        return Drift(_whole_step(obs, period), drift.tref, drift.poly, drift.history,
                     drift.soft, drift.changed, drift.line)
    past = drift.history
    kept = _kept(past, obs, history)
    if not past:  # the first code: a rectangle, nothing to clip
        return _made(drift.offset, obs[0], tuple(_start(obs, max_rate)), kept, (),
                     drift.changed)
    poly = drift.poly
    if poly:
        t, lo, hi = obs
        dt = t - drift.tref
        # `_start` with a zero rate bound repeats vertices; `_narrow` assumes it does not.
        poly = _narrow(poly, dt, lo, hi) if max_rate > 0 else tuple(_add(list(poly),
                                                                         drift.tref, obs))
        if 3 <= len(poly) <= 2 * history + 4:  # else rebuild: bounds the vertex count
            soft = drift.soft
            if soft:
                soft = _narrow(soft, dt, lo, hi) if max_rate > 0 else \
                    tuple(_add(list(soft), drift.tref, obs))
                if len(soft) < 3:
                    soft = ()
            return _made(drift.offset, drift.tref, poly, kept, soft,
                         _changed(drift, t, lo, hi))
    return _rebuilt(drift, kept, max_rate)


def _changed(drift: Drift, t: float, lo: float, hi: float) -> float:
    """`Drift.changed` once an accepted code at `t` proved the offset within [lo, hi]
    without contradicting the feasible set (a contradiction rebuilds it: `_rebuilt`).

    After `STEADY_AFTER` codes the belief is well learnt; one such code proves wrong (the
    believed offset at `t` outside [lo, hi] by more than a margin that grows with the
    square of the time since the previous code, `CHANGE_S`) says the rate is changing (a
    token brought in from the cold) before any code contradicts the set itself. `observe`
    and `track` both decide through here, so the two agree.

    Independent of the cached line: `Drift.predict` reads it when there is one and
    computes the same line (`believed_line`) when there is not. And when the code cuts
    nothing from the active polygon the believed offset (clamped to the polygon's offsets
    at `t`) lies within [lo, hi], so `track`'s shortcut for that case, which skips this
    call, decides the same.
    """
    past = drift.history
    if len(past) >= STEADY_AFTER:
        p = drift.predict(t)
        g = (t - past[-1][0]) / CHANGE_GAP_S
        margin = CHANGE_S * g * g
        if p < lo - margin or p > hi + margin:
            return t
    return drift.changed


def track(drift: Drift, t: float, lo: float, hi: float, max_rate: float,
          history: int) -> Drift:
    """`observe` under the tracking policy, positional: the accepted-code hot path.

    The usual code cuts nothing: one pass over the active polygon finds that and, at the
    same time, the midpoint of its offsets at `t`, through which the believed line now
    passes (the rate stays: the polygon did not change).
    """
    past = drift.history
    obs = (t, lo, hi)
    kept = _kept(past, obs, history)
    poly = drift.poly
    if poly and past and max_rate > 0:
        tref = drift.tref
        dt = t - tref
        soft = drift.soft
        line = drift.line
        if soft:  # the active polygon; inside `poly`, narrowed by the same observations
            narrowed = _narrow(poly, dt, lo, hi)
            if narrowed is not poly:
                poly = narrowed
                line = None
            active = soft
        else:
            active = poly
        a, r = active[0]  # `_span`, inlined
        vlo = vhi = a + r * dt
        for a, r in active:
            v = a + r * dt
            if v < vlo:
                vlo = v
            elif v > vhi:
                vhi = v
        if vlo >= lo and vhi <= hi and line is not None:  # nothing cut: the rate stands
            rate = line[1]
            return Drift(drift.offset, tref, poly, kept, soft, drift.changed,
                         ((vlo + vhi) / 2 - rate * dt, rate, line[2], line[3]))
        # (The guard inlined: a call costs a measurable share of the hot path.)
        changed = _changed(drift, t, lo, hi) if len(past) >= STEADY_AFTER else drift.changed
        if not soft:
            poly = _narrow(poly, dt, lo, hi)
        if 3 <= len(poly) <= 2 * history + 4:
            if soft:
                soft = _narrow(soft, dt, lo, hi)
                if len(soft) < 3:
                    soft = ()
            return _made(drift.offset, tref, poly, kept, soft, changed)
        return _rebuilt(drift, kept, max_rate)
    return observe(drift, obs, policy=_TRACKING, period=1, max_rate=max_rate, history=history)


def learn(drift: Drift, obs: Observation, *, history: int, max_rate: float) -> Drift:
    """The estimate after a *refused* near-miss code gave observation `obs`.

    Clips the polygon (and the soft one) by the observation when it agrees with them. When
    it does not, the clock has left every line the kept codes allow (its rate changed:
    temperature, aging), and the set is rebuilt from `obs` and the newest kept codes that
    agree with it, as for an accepted code that contradicts the set.
    """
    if not drift.poly:
        return drift
    kept = _kept(drift.history, obs, history)
    poly = _add(list(drift.poly), drift.tref, obs)
    if not 3 <= len(poly) <= 2 * history + 4:
        return _rebuilt(drift, kept, max_rate)
    soft = _add(list(drift.soft), drift.tref, obs) if drift.soft else []
    return _made(drift.offset, drift.tref, tuple(poly), kept,
                 tuple(soft) if len(soft) >= 3 else (), drift.changed)


def reset(drift: Drift, obs: Observation, *, policy: DriftPolicy, period: int,
          max_rate: float, fresh: float) -> Drift:
    """The estimate after a resync or an enable: only what the pair shows remains.

    A pair is typed by waiting for the code to change and entering the new one, so the
    second code was most likely shown at most `fresh` seconds before it arrived. That is a
    belief, not a proof: it goes into the *soft* set, which predictions prefer while later
    codes agree with it and which is dropped as soon as one does not.
    """
    if policy is not DriftPolicy.TRACKING:
        return Drift(offset=_whole_step(obs, period))
    t, lo, hi = obs
    return _made((lo + hi) / 2, t, tuple(_start(obs, max_rate)), (obs,),
                 tuple(_start((t, lo, min(hi, lo + fresh)), max_rate)), drift.changed)


def _rebuilt(drift: Drift, kept: tuple[Observation, ...], max_rate: float) -> Drift:
    tref, rebuilt = _rebuild(kept, max_rate)
    return _made(drift.offset, tref, tuple(rebuilt), kept, (), kept[-1][0])


def _whole_step(obs: Observation, period: int) -> float:
    # lo = s*P + T0 - t; the server's own step at t has lo' in (-P, 0], so the whole-step
    # difference is ceil(lo / P) steps.
    lo = obs[1]
    return float(-((-lo) // period) * period)


# -- plain reference versions of the fast paths ------------------------------------------------
# `Drift.predict` and `track` are hand-inlined for the verification hot path. These say the
# same thing plainly; tests/validator/test_reference.py checks the fast paths against them
# for any estimate and observation.

def predict_reference(drift: Drift, now: float) -> float:
    """`Drift.predict` without the cached line and the inlined `_span`."""
    poly = drift.soft or drift.poly
    if not poly:
        return drift.offset
    line = believed_line(drift)
    a, r = line[0], line[1]
    dt = now - drift.tref
    lo, hi = _span(poly, dt)
    return min(max(a + r * dt, lo), hi)


def track_reference(drift: Drift, t: float, lo: float, hi: float, max_rate: float,
                    history: int) -> Drift:
    """`track` as what it is: `observe` under the tracking policy."""
    return observe(drift, (t, lo, hi), policy=DriftPolicy.TRACKING, period=1,
                   max_rate=max_rate, history=history)

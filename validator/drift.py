"""Where a token's clock is believed to be: the drift tracker and its two comparison policies.

An accepted TOTP code at step `s`, received at true time `t`, says the token's clock offset
`d = token_time - true_time` lay in the interval `[s*P + T0 - t, (s+1)*P + T0 - t + D)`
(D: an allowance for the seconds between reading the code and its arrival). A clock with a
constant rate error follows `d(t) = a + r*(t - tref)`. The tracker keeps the *feasible set*
of `(a, r)` pairs: the convex polygon of lines that pass through every observed interval,
with `|r|` bounded by a physical limit (±100 ppm by default). Each accepted code clips the
polygon by two half-planes (a few dozen float operations), so the estimate narrows with
every code and the rate falls out of the history without a separate fit. The prediction at
`now` is the midpoint of the range the feasible lines give there, the minimax choice.

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
from dataclasses import dataclass
from typing import Any, Final

Vertex = tuple[float, float]
Observation = tuple[float, float, float]  # (t, lo, hi) of the offset in seconds


class DriftPolicy(enum.StrEnum):
    """How verification decides where the token's clock is."""

    TRACKING = "tracking"
    WHOLE_STEP = "whole-step"
    SYNC_ONLY = "sync-only"


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
    """

    offset: float = 0.0
    tref: float = 0.0
    poly: tuple[Vertex, ...] = ()
    history: tuple[Observation, ...] = ()
    soft: tuple[Vertex, ...] = ()

    def predict(self, now: float) -> float:
        """The believed offset (token time minus true time) at `now`, in seconds."""
        poly = self.soft or self.poly
        if not poly:
            return self.offset
        dt = now - self.tref
        lo = hi = poly[0][0] + poly[0][1] * dt
        for a, r in poly:
            v = a + r * dt
            if v < lo:
                lo = v
            elif v > hi:
                hi = v
        return (lo + hi) / 2

    def bounds(self, now: float) -> tuple[float, float]:
        """The range of offsets at `now` consistent with every kept observation."""
        if not self.poly:
            return (self.offset, self.offset)
        dt = now - self.tref
        values = [a + r * dt for a, r in self.poly]
        return (min(values), max(values))

    def rate(self) -> float:
        """The midpoint of the feasible drift rates (seconds per second; 1e-6 = 1 ppm)."""
        if not self.poly:
            return 0.0
        rates = [r for _, r in self.poly]
        return (min(rates) + max(rates)) / 2

    def to_json(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "tref": self.tref,
            "poly": [list(v) for v in self.poly],
            "history": [list(o) for o in self.history],
            "soft": [list(v) for v in self.soft],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Drift:
        return cls(
            offset=float(data.get("offset", 0.0)),
            tref=float(data.get("tref", 0.0)),
            poly=tuple((float(a), float(r)) for a, r in data.get("poly", ())),
            history=tuple((float(t), float(lo), float(hi))
                          for t, lo, hi in data.get("history", ())),
            soft=tuple((float(a), float(r)) for a, r in data.get("soft", ())),
        )


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
                     drift.soft)
    past = drift.history
    kept = _kept(past, obs, history)
    if not past:  # the first code: a rectangle, nothing to clip
        return Drift(drift.offset, obs[0], tuple(_start(obs, max_rate)), kept, ())
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
            return Drift(drift.offset, drift.tref, poly, kept, soft)
    tref, rebuilt = _rebuild(kept, max_rate)
    return Drift(drift.offset, tref, tuple(rebuilt), kept, ())


def track(drift: Drift, t: float, lo: float, hi: float, max_rate: float,
          history: int) -> Drift:
    """`observe` under the tracking policy, positional: the accepted-code hot path."""
    past = drift.history
    obs = (t, lo, hi)
    kept = _kept(past, obs, history)
    poly = drift.poly
    if poly and past and max_rate > 0:
        dt = t - drift.tref
        poly = _narrow(poly, dt, lo, hi)
        if 3 <= len(poly) <= 2 * history + 4:
            soft = drift.soft
            if soft:
                soft = _narrow(soft, dt, lo, hi)
                if len(soft) < 3:
                    soft = ()
            return Drift(drift.offset, drift.tref, poly, kept, soft)
        tref, rebuilt = _rebuild(kept, max_rate)
        return Drift(drift.offset, tref, tuple(rebuilt), kept, ())
    return observe(drift, obs, policy=_TRACKING, period=1, max_rate=max_rate, history=history)


def learn(drift: Drift, obs: Observation, *, history: int) -> Drift:
    """The estimate after a *refused* near-miss code gave observation `obs`.

    Only narrows: the polygon (and the soft one) are clipped by the observation, which the
    caller has checked lies within `bounds`; if clipping would empty the set, nothing is
    learnt. Never a rebuild, so an unaccepted code cannot make the tracker forget evidence.
    """
    if not drift.poly:
        return drift
    poly = _add(list(drift.poly), drift.tref, obs)
    if not 3 <= len(poly) <= 2 * history + 4:
        return drift
    soft = _add(list(drift.soft), drift.tref, obs) if drift.soft else []
    return Drift(drift.offset, drift.tref, tuple(poly), _kept(drift.history, obs, history),
                 tuple(soft) if len(soft) >= 3 else ())


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
    return Drift(offset=(lo + hi) / 2, tref=t, poly=tuple(_start(obs, max_rate)),
                 history=(obs,), soft=tuple(_start((t, lo, min(hi, lo + fresh)), max_rate)))


def _whole_step(obs: Observation, period: int) -> float:
    # lo = s*P + T0 - t; the server's own step at t has lo' in (-P, 0], so the whole-step
    # difference is ceil(lo / P) steps.
    lo = obs[1]
    return float(-((-lo) // period) * period)

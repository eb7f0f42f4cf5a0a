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
from dataclasses import dataclass, replace
from typing import Any

Vertex = tuple[float, float]
Observation = tuple[float, float, float]  # (t, lo, hi) of the offset in seconds


class DriftPolicy(enum.StrEnum):
    """How verification decides where the token's clock is."""

    TRACKING = "tracking"
    WHOLE_STEP = "whole-step"
    SYNC_ONLY = "sync-only"


@dataclass(frozen=True, slots=True)
class Drift:
    """The drift estimate of one TOTP token. Immutable; every update returns a new one.

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
    """The estimate after an accepted code (not a resync) gave observation `obs`."""
    if policy is DriftPolicy.SYNC_ONLY:
        return drift
    if policy is DriftPolicy.WHOLE_STEP:
        return replace(drift, offset=_whole_step(obs, period))
    kept = (drift.history + (obs,))[-history:]
    if not drift.history:  # the first code: a rectangle, nothing to clip
        poly = _start(obs, max_rate)
        return Drift(drift.offset, obs[0], tuple(poly), kept, ())
    if drift.poly:
        poly = _add(list(drift.poly), drift.tref, obs)
        if 3 <= len(poly) <= 2 * history + 4:  # else rebuild: bounds the vertex count
            soft = _add(list(drift.soft), drift.tref, obs) if drift.soft else []
            return replace(drift, poly=tuple(poly), history=kept,
                           soft=tuple(soft) if len(soft) >= 3 else ())
    tref, poly = _rebuild(kept, max_rate)
    return replace(drift, tref=tref, poly=tuple(poly), history=kept, soft=())


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
    return Drift(drift.offset, drift.tref, tuple(poly), (drift.history + (obs,))[-history:],
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

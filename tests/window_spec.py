"""The sized window as docs/validator.md states it, step by step, for the tests that hold
`core.window_steps` to it (tests/validator/test_core_limits.py and test_window.py; on
sys.path through tests/conftest.py)."""

from __future__ import annotations

import math

from validator.core import Policy, TokenState


def window_spec(state: TokenState, now: float, policy: Policy) -> tuple[int, int]:
    """±`window` around the believed step, joined with every step whose offset interval
    [sP+T0-now, (s+1)P+T0-now+D) meets where the clock can realistically be; if that is
    more than `2 * max_window + 1` steps, of the runs of that many consecutive steps inside
    it that hold the believed ±`window`, the one whose middle is nearest where the recent
    codes' curve (`Drift.bent`) puts the clock, else the believed step. (Tracking policy.)
    """
    period, t0, allowance = state.period, state.t0, policy.typing_allowance
    shown = now - allowance / 2
    center = (shown + state.drift.predict(shown) - t0) / period
    base = int(center // 1)
    w = policy.window if state.window is None else state.window
    cap = max(w, policy.max_window)
    lo, hi = state.drift.reach(now, policy.window_rate_ppm * 1e-6,
                               policy.window_rate_change_ppm * 1e-6,
                               policy.window_unsteady_ppm * 1e-6,
                               policy.window_young_ppm * 1e-6)
    # every step the clock can be at lies within a few hundred of the belief here
    steps = [s for s in range(base - 400, base + 401)
             if abs(s - base) <= w or (s * period + t0 - now <= hi and
                                       (s + 1) * period + t0 - now + allowance > lo)]
    first, last = min(steps), max(steps)
    assert base - 400 < first and last < base + 400
    if last - first <= 2 * cap:
        return first, last
    bent = state.drift.bent(now)
    target = base if bent is None else math.floor((shown + bent - t0) / period)
    runs = [a for a in range(first, last - 2 * cap + 1)
            if a <= base - w and base + w <= a + 2 * cap]
    a = min(runs, key=lambda a: abs(a + cap - target))
    return a, a + 2 * cap

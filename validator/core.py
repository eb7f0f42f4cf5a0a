"""The pure verification core: token state, code, `now` and policy in; a decision out.

Nothing here reads a clock, touches storage or logs. Every function returns a `Decision`
holding the reason and the token's *new* state; the caller (the service, through the store's
compare-and-set) decides whether that state is committed. Secrets come in as raw key bytes
and never appear in a decision.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field, replace
from typing import Any, Final

from protocol import DEFAULT_PERIOD, MAX_DIGITS, MIN_DIGITS, Hash, Kind
from validator import drift as _drift
from validator.drift import Drift, DriftPolicy
from validator.otp import digest, hotp, pack_counter, truncate
from validator.rules import well_formed_code as well_formed


class Reason(enum.StrEnum):
    """Why a code was accepted or refused: stable strings, safe to show and to log."""

    ACCEPTED = "accepted"
    INVALID_CODE = "invalid_code"
    REPLAYED = "replayed"
    LOCKED = "locked"
    NO_DEVICE = "no_device"
    NOT_ENABLED = "not_enabled"
    EXPIRED = "expired"  # the token's key policy expired (its seed file said when)


@dataclass(frozen=True, slots=True)
class Policy:
    """Verification policy; global, with a per-token override for the TOTP window.

    `window`: TOTP steps searched either side of the believed step (RFC 6238 §5.2).
    `hotp_lookahead`: HOTP counters accepted past the next expected one.
    `resync_seconds` / `resync_counters`: how far a resync (or enable) pair is searched.
    `max_failures`, `lock_base`, `lock_cap`: throttling (RFC 4226 §7.3); the lock after the
    `max_failures`-th consecutive failure lasts `lock_base` seconds, doubling per further
    failure up to `lock_cap`. It always lifts.
    `typing_allowance`: seconds a code may take from the token's display to the validator.
    `fresh_allowance`: seconds the second code of an enable/resync pair is believed to have
    been on display (a soft belief; see `validator.drift`).
    `max_rate_ppm`: the physical bound on a token clock's rate error.
    `history`: drift observations kept per token.
    `replay_memory`: how many steps or counters at and before the watermark a refused code
    is also compared with: a match is answered `replayed` (a code that was valid once,
    re-sent after it left the window) and, like every replay, never counts toward a lock.
    `near_miss_steps`: TOTP, tracking policy: how many steps outside the window, but within
    the drift tracker's feasible bounds, a refused code is also compared with (nearest
    first). A match is still refused; it only tells the tracker where the clock is (see
    `verify`). 0 turns this off.
    `max_window`: TOTP, tracking policy: the window is sized by what the tracker knows
    (`window_rate_ppm`, `window_rate_change_ppm`: see `verify`), never less than ±`window`
    around the believed step and never more than `2 * max_window + 1` steps in all
    (`window_steps`). `max_window <= window` gives a fixed ±`window`.
    `window_rate_ppm`: the realistic bound on a token clock's rate (crystal, temperature
    and aging together) the window assumes unless the token's own codes show more.
    `window_rate_change_ppm`: how far the rate may have moved since the newest code
    (temperature, aging): the window grows by this times the time since (in proportion to
    the gap beyond 90 days, `drift.SETTLED_S`);
    `window_unsteady_ppm` instead for a token whose rate has been seen to change (a code
    contradicted its history within the last 240 days, `drift.UNSTEADY_S`: a token in a car
    through the seasons), and at least `window_young_ppm` for a young one (its kept codes
    span under 105 days, `drift.YOUNG_S`: its rate not yet watched through a season).
    """

    window: int = 1
    hotp_lookahead: int = 10
    resync_seconds: int = 86_400
    resync_counters: int = 1_000
    max_failures: int = 5
    lock_base: float = 30.0
    lock_cap: float = 3_600.0
    max_devices: int = 8
    drift_policy: DriftPolicy = DriftPolicy.TRACKING
    typing_allowance: float = 5.0
    fresh_allowance: float = 5.0
    max_rate_ppm: float = 100.0
    history: int = 32
    near_miss_steps: int = 8
    max_window: int = 4
    window_rate_ppm: float = 50.0
    window_rate_change_ppm: float = 1.0
    window_unsteady_ppm: float = 18.0
    window_young_ppm: float = 8.0
    replay_memory: int = 8

    def __post_init__(self) -> None:
        if self.window < 0 or self.hotp_lookahead < 0 or self.max_failures < 1 or \
                self.near_miss_steps < 0 or self.max_window < 0 or self.replay_memory < 0:
            raise ValueError("window, max_window, hotp_lookahead, near_miss_steps, "
                             "replay_memory must be >= 0 and max_failures >= 1")
        if not all(0 <= v <= 10_000 for v in (self.window_rate_ppm,
                                              self.window_rate_change_ppm,
                                              self.window_unsteady_ppm,
                                              self.window_young_ppm)):
            raise ValueError("window_rate_ppm, window_rate_change_ppm, window_unsteady_ppm "
                             "and window_young_ppm must be within 0-10000")
        if self.lock_base <= 0 or self.lock_cap < self.lock_base or self.history < 1:
            raise ValueError("lock_base > 0, lock_cap >= lock_base and history >= 1 required")


DEFAULT_POLICY = Policy()


@dataclass(slots=True, unsafe_hash=True)
class TokenState:
    """Everything the core knows about one token, except its secret. Never changed in
    place: every operation returns a new state. (Not `frozen`, like `Drift`: one is built
    per accepted code and a frozen constructor costs several times as much.)

    `watermark` is the last accepted time step (TOTP) or counter (HOTP); no code at or
    before it is ever accepted again. None: nothing accepted yet.
    `window`: a per-token override of `Policy.window` (None: use the policy's).
    `expires`: when the token's key may no longer be used (Unix seconds, from the seed
    file's key policy), or None. From then on every code is refused as `expired`.
    """

    kind: Kind
    digits: int = 6
    hash: Hash = Hash.SHA1
    period: int = DEFAULT_PERIOD
    t0: int = 0
    window: int | None = None
    watermark: int | None = None
    drift: Drift = field(default_factory=Drift)
    failures: int = 0
    locked_until: float = 0.0
    expires: float | None = None

    def __post_init__(self) -> None:
        if not MIN_DIGITS <= self.digits <= MAX_DIGITS:
            raise ValueError(f"digits must be {MIN_DIGITS} to {MAX_DIGITS}, not {self.digits}")
        # Labels are taken ("totp", "sha256"); the enums are kept, so `is` tests hold.
        if type(self.kind) is not Kind:
            self.kind = Kind.from_label(self.kind)
        if type(self.hash) is not Hash:
            self.hash = Hash.from_label(self.hash)
        if self.period <= 0:
            raise ValueError("period must be positive")
        if self.window is not None and self.window < 0:
            raise ValueError("window must be >= 0")

    @property
    def next_counter(self) -> int:
        """HOTP: the first counter not yet used up."""
        return 0 if self.watermark is None else self.watermark + 1

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            # "algorithm" is the stored key's name from before `hash`; kept so that every
            # stored state still loads.
            "kind": self.kind.value, "digits": self.digits, "algorithm": self.hash.label,
            "period": self.period, "t0": self.t0, "window": self.window,
            "watermark": self.watermark, "drift": self.drift.to_json(),
            "failures": self.failures, "locked_until": self.locked_until,
        }
        if self.expires is not None:
            out["expires"] = self.expires
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenState:
        return cls(
            kind=Kind.from_label(data["kind"]), digits=int(data["digits"]),
            hash=Hash.from_label(data["algorithm"]), period=int(data["period"]),
            t0=int(data["t0"]),
            window=data.get("window"), watermark=data.get("watermark"),
            drift=Drift.from_json(data.get("drift") or {}),
            failures=int(data.get("failures", 0)),
            locked_until=float(data.get("locked_until", 0.0)),
            expires=None if data.get("expires") is None else float(data["expires"]),
        )


@dataclass(slots=True, unsafe_hash=True)
class Decision:
    """The outcome of one verification, resync or enable check.

    `state` is the token's state to commit (failures counted, watermark moved, drift
    updated). `matched` is the step or counter the code matched (None when refused);
    `retry_after` the seconds to wait when `reason` is `locked`. `near_miss`: a refused
    TOTP code matched this step just outside the window, where the drift tracker says the
    token's clock may be (see `_near_miss`); a door may ask for the next code to complete
    an automatic resynchronisation. None otherwise. `window` is the guessing surface of
    this decision: how many steps (TOTP) or counters (HOTP) a code would have been
    accepted at (those at or before the watermark excluded); for a resync or enable, how
    many pairs were searched; 0 when the token was locked.
    """

    reason: Reason
    state: TokenState
    matched: int | None = None
    retry_after: float = 0.0
    near_miss: int | None = None
    _window: int = 0
    """The window, or -1: work it out from `_basis` when asked (the accept fast path)."""
    _basis: tuple[TokenState, float, float, Policy] | None = field(
        default=None, compare=False, hash=False, repr=False)

    @property
    def accepted(self) -> bool:
        return self.reason is _ACCEPTED

    @property
    def window(self) -> int:
        if self._window < 0 and self._basis is not None:
            state, now, center, policy = self._basis
            self._window = _surface(state, *window_steps(state, now, center, policy))
            self._basis = None
        return self._window


# Module constants: identity tests against these skip the enum classes' attribute lookups.
_TOTP: Final = Kind.TOTP
_HOTP: Final = Kind.HOTP
_ACCEPTED: Final = Reason.ACCEPTED
_INVALID: Final = Reason.INVALID_CODE
_REPLAYED: Final = Reason.REPLAYED
_TRACKING: Final = DriftPolicy.TRACKING
_new = object.__new__
_compare = hmac.compare_digest
_track = _drift.track


def _locked(state: TokenState, now: float) -> Decision | None:
    if state.locked_until > now:
        return Decision(Reason.LOCKED, state, retry_after=state.locked_until - now)
    return None


def _accepted_state(state: TokenState, matched: int, drift: Drift) -> TokenState:
    """`state` with the watermark at `matched`, `drift`, and failures and lock cleared.

    Built without `__init__`: every field comes from a state that was validated when it
    was made, and this runs on every accepted code.
    """
    new = _new(TokenState)
    new.kind = state.kind
    new.digits = state.digits
    new.hash = state.hash
    new.period = state.period
    new.t0 = state.t0
    new.window = state.window
    new.watermark = matched
    new.drift = drift
    new.failures = 0
    new.locked_until = 0.0
    new.expires = state.expires
    return new


def record_failure(state: TokenState, now: float, policy: Policy) -> TokenState:
    """The state after one more consecutive failure, locked if the limit is reached."""
    failures = state.failures + 1
    locked_until = state.locked_until
    if failures >= policy.max_failures:
        delay = policy.lock_base * 2.0 ** min(failures - policy.max_failures, 64)
        locked_until = now + min(delay, policy.lock_cap)
    return replace(state, failures=failures, locked_until=locked_until)


def unlock(state: TokenState) -> TokenState:
    """An admin unlock: the failure count and any lock are cleared."""
    return replace(state, failures=0, locked_until=0.0)


def _fail(state: TokenState, reason: Reason, now: float, policy: Policy) -> Decision:
    # A replayed code was valid once: it proves nothing wrong about the caller (a double
    # submit, a losing concurrent request), and counting it would let anyone who saw one
    # old code lock the token out. Only wrong codes count toward the throttle.
    if reason is _REPLAYED:
        return Decision(reason, state)
    return Decision(reason, record_failure(state, now, policy))


def _order(center: float, first: int, last: int) -> list[int]:
    """Steps `first..last`, nearest the step holding `center` (in steps) first."""
    return sorted(range(first, last + 1), key=lambda s: abs(s + 0.5 - center))


def window_steps(state: TokenState, now: float, center: float,
                 policy: Policy = DEFAULT_POLICY) -> tuple[int, int]:
    """The TOTP steps `[first, last]` a code arriving at `now` is accepted at, for a belief
    `center` (the believed step, fractional).

    ±`window` around the believed step, widened (tracking policy only) to every step where
    the token's clock can realistically be (`Drift.reach`: the tracker's feasible set under
    `window_rate_ppm`, grown by `window_rate_change_ppm` times the time since the newest
    code), but never more than `2 * max_window + 1` steps (`_capped` places them). A token
    whose rate is well learnt gets ±`window`; a young one, or one back from a long
    absence, what it needs.
    """
    w = policy.window if state.window is None else state.window
    base = int(center // 1)
    first, last = base - w, base + w
    cap = policy.max_window
    drift = state.drift
    if cap > w and drift.poly and policy.drift_policy is _TRACKING:
        lo, hi = drift.reach(now, policy.window_rate_ppm * 1e-6,
                             policy.window_rate_change_ppm * 1e-6,
                             policy.window_unsteady_ppm * 1e-6,
                             policy.window_young_ppm * 1e-6)
        period, t0 = state.period, state.t0
        # Steps whose offset interval [sP+T0-now, (s+1)P+T0-now+D) meets [lo, hi].
        low = int((lo + now - t0 - policy.typing_allowance) // period)
        high = int((hi + now - t0) // period)
        if low < first:
            first = low
        if high > last:
            last = high
        if last - first > 2 * cap:
            first, last = _capped(drift, now, policy, period, t0, base, w, cap, low, high)
    return first, last


def _capped(drift: Drift, now: float, policy: Policy, period: int, t0: int, base: int,
            w: int, cap: int, low: int, high: int) -> tuple[int, int]:
    """The `2 * cap + 1` steps of a window whose reach `[low, high]` is wider: centred on
    where the curve of the recent codes puts the clock (`Drift.bent`: a rate still moving
    the way it has been), else on the belief `base`; kept within the reach and always
    holding `base ± w`."""
    middle = base
    bent = drift.bent(now)
    if bent is not None:
        middle = int((now - policy.typing_allowance / 2 + bent - t0) // period)
    first = middle - cap
    if first > high - 2 * cap:
        first = high - 2 * cap
    if first < low:
        first = low
    if first > base - w:
        first = base - w
    if first + 2 * cap < base + w:
        first = base + w - 2 * cap
    return first, first + 2 * cap


def _surface(state: TokenState, first: int, last: int) -> int:
    """How many of the steps `first..last` a code can still be accepted at."""
    wm = state.watermark
    floor = 0 if wm is None else wm + 1
    n = last - (first if first > floor else floor) + 1
    return n if n > 0 else 0


def verify(state: TokenState, key: bytes, code: str, now: float,
           policy: Policy = DEFAULT_POLICY) -> Decision:
    """Check one code. Refuses malformed codes without any HMAC, and locked tokens without
    looking at the code, and expired tokens without either (an expiry is no failure: it is
    not counted). Accepting moves the watermark to the matched step or counter.

    The fast version of `verify_reference` (which says the same plainly; a property test
    holds them equal): the common case, a synced token's current code, costs one HMAC, and
    its decision works out its `window` only when asked.
    """
    if state.expires is not None and now >= state.expires:
        return Decision(Reason.EXPIRED, state)
    if state.locked_until > now:
        return Decision(Reason.LOCKED, state, None, state.locked_until - now)
    if state.kind is _HOTP:
        return _verify_hotp(state, key, code, now, policy)
    period = state.period
    t0 = state.t0
    watermark = state.watermark
    drift = state.drift
    # The code on display was read up to `typing_allowance` seconds before it arrived.
    shown = now - policy.typing_allowance / 2
    center = (shown + drift.predict(shown) - t0) / period
    digits = state.digits
    if len(code) != digits or not code.isascii() or not code.isdigit():
        first, last = window_steps(state, now, center, policy)
        return Decision(_INVALID, record_failure(state, now, policy), None, 0.0, None,
                        _surface(state, first, last))
    base = int(center // 1)
    # The common case, a synced token's current code: one HMAC, then the accepted state.
    # (The window always holds the believed step, whatever its size.)
    if base > (-1 if watermark is None else watermark) and _compare(
            truncate(digest(key, pack_counter(base), state.hash), digits), code):
        if policy.drift_policy is _TRACKING:  # `_observe`, inlined
            lo = base * period + t0 - now
            drift = _track(drift, now, lo, lo + period + policy.typing_allowance,
                           policy.max_rate_ppm * 1e-6, policy.history)
        else:
            drift = _observe(state, base, now, policy)
        return Decision(_ACCEPTED, _accepted_state(state, base, drift), base, 0.0, None, -1,
                        (state, now, center, policy))
    first, last = window_steps(state, now, center, policy)
    return _search(state, key, code, now, policy, center, first, last,
                   _surface(state, first, last))


def verify_reference(state: TokenState, key: bytes, code: str, now: float,
                     policy: Policy = DEFAULT_POLICY) -> Decision:
    """`verify` written plainly, as the specification its fast path is held to.

    `verify` inlines the common case (a synced token's current code: one HMAC, the drift
    update and the new state built without `__init__`, its window worked out only when
    asked), which a benchmark shows pays (docs/benchmarks.md). This version has none of
    that: every step of the window, nearest first, through `hotp` and `replace`, the drift
    through `_observe` (whose tracking path, `drift.track`, has its own reference in
    validator/drift.py). Property tests (tests/validator/test_reference.py,
    tests/validator/test_window.py) check both decide alike for any state, code, time and
    policy.
    """
    if state.expires is not None and now >= state.expires:
        return Decision(Reason.EXPIRED, state)
    if state.locked_until > now:
        return Decision(Reason.LOCKED, state, None, state.locked_until - now)
    if state.kind is Kind.HOTP:
        return _verify_hotp(state, key, code, now, policy)
    shown = now - policy.typing_allowance / 2
    center = (shown + state.drift.predict(shown) - state.t0) / state.period
    first, last = window_steps(state, now, center, policy)
    surface = _surface(state, first, last)
    if not well_formed(code, state.digits):
        return Decision(Reason.INVALID_CODE, record_failure(state, now, policy), None, 0.0,
                        None, surface)
    replayed = False
    for step in _order(center, first, last):
        if step < 0 or not hmac.compare_digest(hotp(key, step, state.digits, state.hash),
                                               code):
            continue
        if state.watermark is not None and step <= state.watermark:
            replayed = True
            continue
        drift = _observe(state, step, now, policy)
        return Decision(Reason.ACCEPTED, replace(state, watermark=step, drift=drift,
                                                 failures=0, locked_until=0.0),
                        step, 0.0, None, surface)
    if replayed or _recently_used(state, key, code, policy.replay_memory, first, last):
        return Decision(Reason.REPLAYED, state, None, 0.0, None, surface)
    if policy.near_miss_steps and policy.drift_policy is DriftPolicy.TRACKING and \
            state.drift.poly:
        learnt = _near_miss(state, key, code, now, center, first, last, policy)
        if learnt is not None:
            drift, step = learnt
            return Decision(Reason.INVALID_CODE,
                            record_failure(replace(state, drift=drift), now, policy),
                            None, 0.0, step, surface)
    return Decision(Reason.INVALID_CODE, record_failure(state, now, policy), None, 0.0, None,
                    surface)


def _search(state: TokenState, key: bytes, code: str, now: float, policy: Policy,
            center: float, first: int, last: int, surface: int) -> Decision:
    """Every step of the window, nearest the belief first; then near misses."""
    digits, hash_, watermark = state.digits, state.hash, state.watermark
    replayed = False
    for step in _order(center, first, last):
        if step < 0:  # before T0: no such code
            continue
        if hmac.compare_digest(hotp(key, step, digits, hash_), code):
            if watermark is not None and step <= watermark:
                replayed = True
                continue
            decision = _accept(state, step, now, policy)
            decision._window = surface
            return decision
    # A code matched at or before the watermark in the window, or one of the steps just
    # before it (a code used once, re-sent after it left the window): a replay, never a
    # failure that counts toward a lock.
    if replayed or _recently_used(state, key, code, policy.replay_memory, first, last):
        return Decision(Reason.REPLAYED, state, None, 0.0, None, surface)
    if policy.near_miss_steps and policy.drift_policy is DriftPolicy.TRACKING and \
            state.drift.poly:
        learnt = _near_miss(state, key, code, now, center, first, last, policy)
        if learnt is not None:
            drift, step = learnt
            return Decision(_INVALID, record_failure(replace(state, drift=drift), now, policy),
                            None, 0.0, step, surface)
    return Decision(Reason.INVALID_CODE, record_failure(state, now, policy), None, 0.0, None,
                    surface)


def _verify_hotp(state: TokenState, key: bytes, code: str, now: float,
                 policy: Policy) -> Decision:
    digits = state.digits
    hash_ = state.hash
    surface = policy.hotp_lookahead + 1
    if not well_formed(code, digits):
        return Decision(_INVALID, record_failure(state, now, policy), None, 0.0, None, surface)
    first = state.next_counter
    for counter in range(first, first + policy.hotp_lookahead + 1):
        if hmac.compare_digest(hotp(key, counter, digits, hash_), code):
            decision = _accept(state, counter, now, policy)
            decision._window = surface
            return decision
    if _recently_used(state, key, code, max(policy.replay_memory, policy.hotp_lookahead + 1)):
        return Decision(Reason.REPLAYED, state, None, 0.0, None, surface)
    return Decision(_INVALID, record_failure(state, now, policy), None, 0.0, None, surface)


def _recently_used(state: TokenState, key: bytes, code: str, memory: int,
                   seen_lo: int = 0, seen_hi: int = -1) -> bool:
    """Whether `code` is the code of one of the `memory` steps or counters at and before the
    watermark, newest first: a code that was valid once (only refused codes get here).
    Steps in [seen_lo, seen_hi] were compared already (the window) and are skipped."""
    watermark = state.watermark
    if watermark is None:
        return False
    digits, hash_ = state.digits, state.hash
    for n in range(watermark, max(-1, watermark - memory), -1):
        if seen_lo <= n <= seen_hi:
            continue
        if hmac.compare_digest(hotp(key, n, digits, hash_), code):
            return True
    return False


def _observe(state: TokenState, step: int, now: float, policy: Policy) -> Drift:
    """The drift after a TOTP code at `step` was accepted at `now`."""
    period = state.period
    lo = step * period + state.t0 - now  # as `drift.interval`
    hi = lo + period + policy.typing_allowance
    if policy.drift_policy is _TRACKING:
        return _drift.track(state.drift, now, lo, hi, policy.max_rate_ppm * 1e-6,
                            policy.history)
    return _drift.observe(state.drift, (now, lo, hi), policy=policy.drift_policy,
                          period=period, max_rate=policy.max_rate_ppm * 1e-6,
                          history=policy.history)


def _near_miss(state: TokenState, key: bytes, code: str, now: float, center: float,
               first_ok: int, last_ok: int, policy: Policy) -> tuple[Drift, int] | None:
    """The drift after a refused code that matches a step just outside the window, and
    that step.

    A token refused once because its clock has moved past the window's edge (early on,
    while its rate is unknown; or when its rate has changed: a token brought in from a cold
    car) would be refused again next time: a refused code teaches nothing. So a code that
    fails the window is also compared with up to `near_miss_steps` steps outside it, after
    the watermark, nearest the belief first, where the clock can physically be
    (`Drift.possible`: the newest code's interval, grown at the ±`max_rate_ppm` limit
    since, whatever the older codes said). A match is *not* accepted; the observation
    goes to the tracker (`drift.learn`): it narrows the feasible set if it agrees with it,
    and if it does not (the rate changed since the kept codes), the set is rebuilt from it
    and the newest kept codes that agree, as an accepted contradicting code does. The next
    code is then predicted where the clock really is.

    Why this is safe: a random guess matches one of k extra steps with probability
    k·10^-digits, and the throttle counts every guess; a lucky one is a real code of a
    step near the belief, so at worst the owner's next code is refused once and, being a
    near miss itself, teaches the tracker back. Old (observed) codes lie at or before the
    watermark and are never compared; the reason is the same `invalid_code` whether or not
    it matched. The HTTP and AWS doors show nothing more, so they are no oracle; the RADIUS
    door turns a near miss into a challenge for the token's next code (RFC 4226 §7.4),
    which only the token's holder can answer.
    """
    drift = state.drift
    period, t0 = state.period, state.t0
    allowance = policy.typing_allowance
    extra = policy.near_miss_steps
    lo, hi = drift.possible(now, policy.max_rate_ppm * 1e-6)
    # Steps whose offset interval [sP+T0-now, (s+1)P+T0-now+D) meets [lo, hi].
    first = max(int((lo + now - t0 - allowance) // period), first_ok - extra,
                0 if state.watermark is None else state.watermark + 1)
    last = min(int((hi + now - t0) // period), last_ok + extra)
    steps = [s for s in range(first, last + 1) if not first_ok <= s <= last_ok]
    if not steps:
        return None
    steps.sort(key=lambda s: abs(s + 0.5 - center))
    digits, hash_ = state.digits, state.hash
    for step in steps[:extra]:
        if hmac.compare_digest(hotp(key, step, digits, hash_), code):
            obs = _drift.interval(step, now, period, t0, allowance)
            return _drift.learn(drift, obs, history=policy.history,
                                max_rate=policy.max_rate_ppm * 1e-6), step
    return None


def _accept(state: TokenState, matched: int, now: float, policy: Policy) -> Decision:
    drift = _observe(state, matched, now, policy) if state.kind is _TOTP else state.drift
    return Decision(_ACCEPTED, _accepted_state(state, matched, drift), matched)


def resync(state: TokenState, key: bytes, code1: str, code2: str, now: float,
           policy: Policy = DEFAULT_POLICY) -> Decision:
    """Find two consecutive codes within the resync range (±`resync_seconds` around the
    believed clock for TOTP, `resync_counters` ahead for HOTP), nearest first, both after
    the watermark. On success the drift is reset to what the pair shows and the watermark
    moves to the second code, so the token's very next code is accepted."""
    if state.expires is not None and now >= state.expires:
        return Decision(Reason.EXPIRED, state)
    locked = _locked(state, now)
    if locked is not None:
        return locked
    digits = state.digits
    if not (well_formed(code1, digits) and well_formed(code2, digits)):
        return _fail(state, Reason.INVALID_CODE, now, policy)  # no pair searched: 0
    hash_ = state.hash
    lowest = state.next_counter if state.watermark is not None else None

    def pair_at(n: int) -> bool:
        return hmac.compare_digest(hotp(key, n, digits, hash_), code1) and \
            hmac.compare_digest(hotp(key, n + 1, digits, hash_), code2)

    if state.kind is Kind.HOTP:
        first = state.next_counter
        for n in range(first, first + policy.resync_counters + 1):
            if pair_at(n):
                new = replace(state, watermark=n + 1, failures=0, locked_until=0.0)
                return Decision(Reason.ACCEPTED, new, n + 1, 0.0, None,
                                policy.resync_counters + 1)
        failed = _fail(state, Reason.INVALID_CODE, now, policy)
        failed._window = policy.resync_counters + 1
        return failed

    period = state.period
    # The pair was read with the second code current: centre the search on it.
    center = int((now + state.drift.predict(now) - state.t0) // period)
    reach = max(1, policy.resync_seconds // period)
    replayed = False
    for k in range(0, 2 * reach + 1):
        second = center + ((k + 1) // 2 if k % 2 else -(k // 2))
        if second < 1:  # before T0: no such code
            continue
        if pair_at(second - 1):
            if lowest is not None and second - 1 < lowest:
                replayed = True
                continue
            obs = _drift.interval(second, now, period, state.t0, policy.typing_allowance)
            drift = _drift.reset(state.drift, obs, policy=policy.drift_policy, period=period,
                                 max_rate=policy.max_rate_ppm * 1e-6,
                                 fresh=policy.fresh_allowance)
            new = replace(state, watermark=second, drift=drift, failures=0, locked_until=0.0)
            return Decision(Reason.ACCEPTED, new, second, 0.0, None, 2 * reach + 1)
    failed = _fail(state, Reason.REPLAYED if replayed else Reason.INVALID_CODE, now, policy)
    failed._window = 2 * reach + 1
    return failed


def check_enable(state: TokenState, key: bytes, code1: str, code2: str, now: float,
                 policy: Policy = DEFAULT_POLICY) -> Decision:
    """Enabling needs two consecutive codes, found as a resync finds them: a token fresh out
    of its box may have drifted, and the pair is the first thing learnt about its clock."""
    return resync(state, key, code1, code2, now, policy)

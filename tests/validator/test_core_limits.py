"""The core's edges: what a policy and a token state accept and refuse (with the message an
operator sees), the stored form, and the exact decisions at the boundaries of the window,
the lock, the replay memory, the near-miss search and resync. Written from the survivors of
`make mutation` (docs/benchmarks.md): each test pins a behaviour that a one-token change in
validator/core.py altered without any other test noticing."""

from __future__ import annotations

import pytest

from protocol import Hash, Kind
from validator import core
from validator.core import Policy, Reason, TokenState
from validator.drift import Drift, DriftPolicy
from validator.otp import hotp

KEY = b"12345678901234567890"

COUNTS_MSG = ("window, max_window, hotp_lookahead, near_miss_steps, replay_memory must be "
              ">= 0 and max_failures >= 1")
RATES_MSG = ("window_rate_ppm, window_rate_change_ppm and window_unsteady_ppm must be "
             "within 0-10000")
LOCK_MSG = "lock_base > 0, lock_cap >= lock_base and history >= 1 required"


@pytest.mark.parametrize("field", ["window", "hotp_lookahead", "near_miss_steps",
                                   "max_window", "replay_memory"])
def test_policy_counts_may_be_zero_but_not_negative(field: str) -> None:
    assert getattr(Policy(**{field: 0}), field) == 0
    with pytest.raises(ValueError) as raised:
        Policy(**{field: -1})
    assert str(raised.value) == COUNTS_MSG


def test_policy_needs_at_least_one_failure_before_a_lock() -> None:
    assert Policy(max_failures=1).max_failures == 1
    with pytest.raises(ValueError) as raised:
        Policy(max_failures=0)
    assert str(raised.value) == COUNTS_MSG


@pytest.mark.parametrize("field", ["window_rate_ppm", "window_rate_change_ppm",
                                   "window_unsteady_ppm"])
def test_policy_rates_are_bounded_to_0_to_10000_ppm(field: str) -> None:
    for ok in (0.0, 10_000.0):
        assert getattr(Policy(**{field: ok}), field) == ok
    for bad in (-0.001, 10_000.001):
        with pytest.raises(ValueError) as raised:
            Policy(**{field: bad})
        assert str(raised.value) == RATES_MSG


def test_policy_lock_and_history_bounds() -> None:
    assert Policy(lock_base=0.5, lock_cap=0.5, history=1).lock_cap == 0.5
    for bad in ({"lock_base": 0.0}, {"lock_base": 10.0, "lock_cap": 9.99}, {"history": 0}):
        with pytest.raises(ValueError) as raised:
            Policy(**bad)
        assert str(raised.value) == LOCK_MSG


def test_token_state_digits_bounds_and_message() -> None:
    assert TokenState(kind=Kind.TOTP, digits=6).digits == 6
    assert TokenState(kind=Kind.TOTP, digits=10).digits == 10
    for bad in (5, 11):
        with pytest.raises(ValueError) as raised:
            TokenState(kind=Kind.TOTP, digits=bad)
        assert str(raised.value) == f"digits must be 6 to 10, not {bad}"


def test_token_state_period_and_window_bounds() -> None:
    assert TokenState(kind=Kind.TOTP, period=1).period == 1
    assert TokenState(kind=Kind.TOTP, window=0).window == 0
    with pytest.raises(ValueError, match="^period must be positive$"):
        TokenState(kind=Kind.TOTP, period=0)
    with pytest.raises(ValueError, match="^window must be >= 0$"):
        TokenState(kind=Kind.TOTP, window=-1)


def test_token_state_takes_labels_and_keeps_the_enums() -> None:
    state = TokenState(kind="hotp", hash="sha256")  # type: ignore[arg-type]
    assert state.kind is Kind.HOTP and state.hash is Hash.SHA256
    with pytest.raises(ValueError):
        TokenState(kind="motp")  # type: ignore[arg-type]


def test_defaults_of_a_new_token_state() -> None:
    state = TokenState(kind=Kind.TOTP)
    assert (state.digits, state.hash, state.period, state.t0, state.window, state.watermark,
            state.failures, state.locked_until, state.expires) == (
        6, Hash.SHA1, 30, 0, None, None, 0, 0.0, None)
    assert state.drift == Drift()
    assert state.next_counter == 0
    assert TokenState(kind=Kind.HOTP, watermark=0).next_counter == 1
    assert TokenState(kind=Kind.HOTP, watermark=41).next_counter == 42


def test_to_json_is_the_stored_form() -> None:
    state = TokenState(kind=Kind.HOTP, digits=8, hash=Hash.SHA512, period=60, t0=7,
                       window=2, watermark=9, failures=3, locked_until=12.5)
    assert state.to_json() == {
        "kind": "hotp", "digits": 8, "algorithm": "sha512", "period": 60, "t0": 7,
        "window": 2, "watermark": 9, "drift": Drift().to_json(), "failures": 3,
        "locked_until": 12.5}
    assert TokenState(kind=Kind.TOTP, expires=99.0).to_json()["expires"] == 99.0


def test_from_json_fills_what_old_rows_lack_and_converts_types() -> None:
    minimal = {"kind": "totp", "digits": "8", "algorithm": "sha256", "period": "60",
               "t0": "5"}
    state = TokenState.from_json(minimal)
    assert state == TokenState(kind=Kind.TOTP, digits=8, hash=Hash.SHA256, period=60, t0=5)
    assert (state.window, state.watermark, state.failures, state.locked_until,
            state.expires, state.drift) == (None, None, 0, 0.0, None, Drift())
    assert type(state.digits) is int and type(state.period) is int and type(state.t0) is int
    assert type(state.failures) is int and type(state.locked_until) is float
    full = dict(minimal, window=1, watermark=3, failures="2", locked_until="7",
                expires="100", drift=None)
    loaded = TokenState.from_json(full)
    assert (loaded.window, loaded.watermark, loaded.failures, loaded.locked_until,
            loaded.expires) == (1, 3, 2, 7.0, 100.0)
    assert type(loaded.failures) is int and type(loaded.locked_until) is float
    assert type(loaded.expires) is float
    assert TokenState.from_json(dict(minimal, expires=None)).expires is None


def test_reason_strings_are_stable() -> None:
    assert [r.value for r in Reason] == ["accepted", "invalid_code", "replayed", "locked",
                                         "no_device", "not_enabled", "expired"]


def test_default_policy_values() -> None:
    p = core.DEFAULT_POLICY
    assert (p.window, p.hotp_lookahead, p.resync_seconds, p.resync_counters, p.max_failures,
            p.lock_base, p.lock_cap, p.max_devices, p.drift_policy, p.typing_allowance,
            p.fresh_allowance, p.max_rate_ppm, p.history, p.near_miss_steps, p.max_window,
            p.window_rate_ppm, p.window_rate_change_ppm, p.window_unsteady_ppm,
            p.replay_memory) == (
        1, 10, 86_400, 1_000, 5, 30.0, 3_600.0, 8, DriftPolicy.TRACKING, 5.0, 5.0, 100.0,
        32, 8, 4, 50.0, 1.0, 14.0, 8)


def test_hotp_code_at_the_last_lookahead_counter_only() -> None:
    policy = Policy(hotp_lookahead=3)
    state = TokenState(kind=Kind.HOTP)
    assert core.verify(state, KEY, hotp(KEY, 4), 0.0, policy).reason is Reason.INVALID_CODE
    decision = core.verify(state, KEY, hotp(KEY, 3), 0.0, policy)
    assert decision.accepted and decision.matched == 3 and decision.state.watermark == 3
    assert decision.window == 4

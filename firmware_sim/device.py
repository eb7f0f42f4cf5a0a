"""The firmware: one protocol v1 request in, one reply out. Pure.

`handle(state, model, request, now_ms)` is all the token does. It reads no clock (the true
time comes in as `now_ms`), touches no port and no file: it returns the new state, the reply,
and whether the new state must be persisted *before* the reply leaves (an HOTP press moves
the counter, so the counter is on disk before anyone sees the code and can never go back
after a crash). The seed is used only to compute codes; no reply carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_sim import token as tk
from firmware_sim.clock import Crystal
from firmware_sim.models import Model
from firmware_sim.token import FirmwareState, Refused
from protocol import (
    PROTOCOL_VERSION,
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    ClockReply,
    ClockRequest,
    DisplayReply,
    DisplayRequest,
    DriftSettings,
    ErrorCode,
    ErrorReply,
    FactoryResetRequest,
    FreezeRequest,
    InfoReply,
    InfoRequest,
    Kind,
    PeekReply,
    PeekRequest,
    PressReply,
    PressRequest,
    ProvisionRequest,
    Reply,
    Request,
    SetDriftRequest,
    SetTimeRequest,
    UnfreezeRequest,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: FirmwareState
    reply: Reply
    persist: bool
    """True when `state` must reach the state file before `reply` is sent."""


MAX_DETAIL_BYTES = 255
"""An ERROR reply's detail is a str8: at most this many bytes of UTF-8."""


def error_reply(code: ErrorCode, detail: str) -> ErrorReply:
    """An ERROR reply whose detail is clipped to fit the wire, on a character boundary."""
    clipped = detail.encode()[:MAX_DETAIL_BYTES].decode(errors="ignore")
    return ErrorReply(code, clipped)


def info_reply(state: FirmwareState) -> InfoReply:
    return InfoReply(
        serial=state.serial,
        model=state.model,
        firmware=state.firmware,
        protocol_version=PROTOCOL_VERSION,
        kind=state.kind,
        hash=state.hash,
        digits=state.digits,
        period=state.period if state.kind is Kind.TOTP else 0,
        provisioned=state.provisioned,
        locked=state.locked,
        qa_mode=state.qa_mode,
        battery_ok=state.battery_ok,
    )


def drift_settings(crystal: Crystal) -> DriftSettings:
    """A crystal's settings as SET_DRIFT and CLOCK carry them (the same fields)."""
    return DriftSettings(
        ppm=crystal.ppm,
        aging_ppm_per_year=crystal.aging_ppm_per_year,
        temperature_mode=crystal.temperature_mode,
        temperature_c=crystal.temperature_c,
        temperature_swing_c=crystal.temperature_swing_c,
    )


def clock_reply(state: FirmwareState, now_ms: int) -> ClockReply:
    clock = state.clock
    token_ms = clock.token_ms(now_ms)
    return ClockReply(
        token_time_ms=token_ms,
        offset_ms=token_ms - now_ms,
        drift=drift_settings(clock.crystal),
        frozen=clock.frozen,
    )


def _crystal_in(settings: DriftSettings) -> Crystal:
    try:
        return Crystal(
            ppm=settings.ppm,
            aging_ppm_per_year=settings.aging_ppm_per_year,
            temperature_mode=settings.temperature_mode,
            temperature_c=settings.temperature_c,
            temperature_swing_c=settings.temperature_swing_c,
        )
    except ValueError as exc:
        raise Refused("BAD_ARGUMENT", str(exc)) from None


def _handle(state: FirmwareState, model: Model, req: Request, now: int) -> Outcome:
    if isinstance(req, PressRequest):
        new, shown, persist = tk.press(state, now)
        return Outcome(new, PressReply(shown.code, shown.seconds_left), persist)
    if isinstance(req, DisplayRequest):
        shown = tk.display(state, now)
        return Outcome(state, DisplayReply(shown.code, shown.seconds_left), False)
    if isinstance(req, InfoRequest):
        return Outcome(state, info_reply(state), False)
    if isinstance(req, ClockRequest):
        return Outcome(state, clock_reply(state, now), False)
    if isinstance(req, ProvisionRequest):
        new = tk.provision(state, req.seed, req.kind, req.hash, req.digits, req.period,
                           req.counter)
        return Outcome(new, info_reply(new), True)
    if isinstance(req, PeekRequest):
        step, left, codes = tk.peek(state, now, req.count)
        return Outcome(state, PeekReply(step, left, tuple(codes)), False)
    if isinstance(req, BatteryRequest):
        new = tk.battery(state, now, req.dead)
        return Outcome(new, info_reply(new), True)
    if isinstance(req, FactoryResetRequest):
        new = tk.factory_reset(state, model)
        return Outcome(new, info_reply(new), True)
    # the QA clock commands, each answered with the clock's new state
    if isinstance(req, SetDriftRequest):
        tk.require_qa(state)  # NOT_PERMITTED comes before any complaint about the payload
        new = tk.set_drift(state, now, _crystal_in(req.drift))
    elif isinstance(req, AdjustOffsetRequest):
        new = tk.adjust_offset(state, now, req.delta_ms)
    elif isinstance(req, AgeRequest):
        new = tk.age(state, now, req.span_ms)
    elif isinstance(req, SetTimeRequest):
        new = tk.set_time(state, now, req.time_ms)
    elif isinstance(req, FreezeRequest):
        new = tk.freeze(state, now)
    elif isinstance(req, UnfreezeRequest):
        new = tk.unfreeze(state, now)
    else:  # a request type this firmware does not know
        return Outcome(state, ErrorReply(ErrorCode.UNKNOWN_COMMAND, type(req).__name__), False)
    return Outcome(new, clock_reply(new, now), True)


def handle(state: FirmwareState, model: Model, request: Request, now_ms: int) -> Outcome:
    """Answer `request` at true time `now_ms`; every refusal is an ErrorReply."""
    try:
        return _handle(state, model, request, now_ms)
    except Refused as exc:
        return Outcome(state, error_reply(ErrorCode[exc.code], exc.detail), False)

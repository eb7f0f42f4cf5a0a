"""The token's state and what each button, display and QA operation does to it. Pure.

Every operation takes the state and the true time (`now_ms`, Unix milliseconds) and returns
a result and/or a new state; nothing here reads a clock, touches a file or a port. Refusals
are raised as `Refused` with the name of the protocol error code, which `device.py` turns into
an ERROR reply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from firmware_sim import otp_engine as otp
from firmware_sim.clock import Clock, Crystal
from firmware_sim.models import Model, validate_params
from protocol import MAX_SEED_BYTES, Hash, Kind

ErrorName = Literal[
    "BAD_ARGUMENT", "NOT_PERMITTED", "ALREADY_PROVISIONED", "NOT_PROVISIONED", "BATTERY_DEAD",
]
STATE_VERSION = 1
MAX_SERIAL = 64
MAX_PEEK = 32
"""Most codes a PEEK returns: 32 eight-digit codes still fit one frame."""


class Refused(Exception):
    """The token refuses a request; `code` names the protocol error code."""

    def __init__(self, code: ErrorName, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorName = code
        self.detail = detail


@dataclass(frozen=True)
class Display:
    """What the LCD shows: a code until `until_ms` (true time), or nothing."""

    code: str = ""
    until_ms: int = 0


@dataclass(frozen=True)
class FirmwareState:
    """Everything a token's firmware remembers (the validator's view of a token is
    `validator.core.TokenState`, a different thing). `display` lives in RAM only; the rest
    is persisted."""

    serial: str
    model: str
    firmware: str
    clock: Clock
    kind: Kind = Kind.TOTP
    hash: Hash = Hash.SHA1
    digits: int = 6
    period: int = 30
    counter: int = 0
    """HOTP: the counter the next press uses."""
    seed: bytes | None = field(default=None, repr=False)
    locked: bool = False
    battery_ok: bool = True
    qa_mode: bool = False
    display_timeout_s: int = 30
    display: Display = Display()

    @property
    def provisioned(self) -> bool:
        return self.seed is not None

    # -- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "serial": self.serial,
            "model": self.model,
            "firmware": self.firmware,
            "kind": self.kind,
            "hash": self.hash,
            "digits": self.digits,
            "period": self.period,
            "counter": self.counter,
            "seed": None if self.seed is None else self.seed.hex(),
            "locked": self.locked,
            "battery_ok": self.battery_ok,
            "display_timeout_s": self.display_timeout_s,
            "clock": self.clock.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, qa_mode: bool = False) -> FirmwareState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        seed = data["seed"]
        return cls(
            serial=str(data["serial"]),
            model=str(data["model"]),
            firmware=str(data["firmware"]),
            clock=Clock.from_dict(data["clock"]),
            kind=Kind.from_label(data["kind"]),
            hash=Hash.from_label(data["hash"]),
            digits=int(data["digits"]),
            period=int(data["period"]),
            counter=int(data["counter"]),
            seed=None if seed is None else bytes.fromhex(seed),
            locked=bool(data["locked"]),
            battery_ok=bool(data["battery_ok"]),
            qa_mode=qa_mode,
            display_timeout_s=int(data["display_timeout_s"]),
        )


def new_token(
    model: Model,
    now_ms: int,
    *,
    serial: str | None = None,
    seed: bytes | None = None,
    counter: int = 0,
    crystal: Crystal | None = None,
    qa_mode: bool = False,
    rng: random.Random | None = None,
) -> FirmwareState:
    """A token fresh from the factory: seeded and locked if `seed` is given, else blank."""
    serial = serial or model.make_serial(rng or random.Random())
    check_serial(serial)
    if seed is not None:
        _check_seed(seed)
    if counter < 0:
        raise ValueError("counter must be >= 0")
    return FirmwareState(
        serial=serial,
        model=model.name,
        firmware=model.firmware,
        clock=Clock(anchor_true_ms=now_ms, crystal=crystal or Crystal(), aging_start_ms=now_ms),
        kind=model.kind,
        hash=model.hash,
        digits=model.digits,
        period=model.period,
        counter=counter,
        seed=seed,
        locked=seed is not None,
        qa_mode=qa_mode,
        display_timeout_s=model.display_timeout_s,
    )


def check_serial(serial: str) -> None:
    """A serial as printed on the back: 1..MAX_SERIAL printable ASCII characters, no spaces
    (INFO carries it as ASCII; anything else could never be answered)."""
    if not (0 < len(serial) <= MAX_SERIAL and serial.isascii() and serial.isprintable()
            and " " not in serial):
        raise ValueError(f"serial must be 1..{MAX_SERIAL} printable ASCII characters "
                         f"without spaces, not {serial!r}")


def _check_seed(seed: bytes) -> None:
    if not 1 <= len(seed) <= MAX_SEED_BYTES:
        raise ValueError(f"seed must be 1..{MAX_SEED_BYTES} bytes")


def _need_code(state: FirmwareState) -> bytes:
    if not state.battery_ok:
        raise Refused("BATTERY_DEAD", "the battery is dead")
    if state.seed is None:
        raise Refused("NOT_PROVISIONED", "the token has no seed")
    return state.seed


def require_qa(state: FirmwareState) -> None:
    if not state.qa_mode:
        raise Refused("NOT_PERMITTED", "QA commands need a token in QA mode")


def code_at(state: FirmwareState, token_ms: int) -> str:
    """The TOTP code for a token time (the seed never leaves this module but as a code)."""
    seed = _need_code(state)
    return otp.totp(seed, token_ms, digits=state.digits, hash=state.hash, period=state.period)


# -- the button and the display ------------------------------------------------------
@dataclass(frozen=True)
class Shown:
    """A code on the display and its countdown (TOTP: the step; HOTP: the display timer)."""

    code: str
    seconds_left: int


def press(state: FirmwareState, now_ms: int) -> tuple[FirmwareState, Shown, bool]:
    """The button. Returns the new state, what the display shows, and whether the state
    must be persisted before the code is shown (HOTP: the counter moved)."""
    seed = _need_code(state)
    until = now_ms + state.display_timeout_s * 1000
    if state.kind is Kind.HOTP:
        code = otp.hotp(seed, state.counter, digits=state.digits, hash=state.hash)
        new = replace(state, counter=state.counter + 1, display=Display(code, until))
        return new, Shown(code, 0), True
    token_ms = state.clock.token_ms(now_ms)
    code = code_at(state, token_ms)
    new = replace(state, display=Display(code, until))
    return new, Shown(code, otp.seconds_left(token_ms, state.period)), False


def display(state: FirmwareState, now_ms: int) -> Shown:
    """What the display shows now: blank ("", 0) once it timed out or with a dead battery.
    A blank (unprovisioned) token refuses with NOT_PROVISIONED, as protocol.md says."""
    if state.seed is None:
        raise Refused("NOT_PROVISIONED", "the token has no seed")
    if not state.battery_ok or now_ms >= state.display.until_ms:
        return Shown("", 0)
    if state.kind is Kind.HOTP:
        return Shown(state.display.code, 0)
    token_ms = state.clock.token_ms(now_ms)  # a lit TOTP display follows the clock
    return Shown(code_at(state, token_ms), otp.seconds_left(token_ms, state.period))


# -- provisioning ----------------------------------------------------------------------
def provision(
    state: FirmwareState,
    seed: bytes,
    kind: Kind,
    hash: Hash,
    digits: int,
    period: int,
    counter: int,
) -> FirmwareState:
    """Seed a blank token; from then on it is locked."""
    if not state.battery_ok:
        raise Refused("BATTERY_DEAD", "the battery is dead")
    if state.locked or state.seed is not None:
        raise Refused("ALREADY_PROVISIONED", "the token is locked; reseeding is refused")
    try:
        _check_seed(seed)
        kind, hash = validate_params(kind, hash, digits,
                                     period if kind == Kind.TOTP else max(period, 1))
        if counter < 0:
            raise ValueError("counter must be >= 0")
    except ValueError as exc:
        raise Refused("BAD_ARGUMENT", str(exc)) from None
    return replace(state, seed=seed, kind=kind, hash=hash, digits=digits,
                   period=period if kind is Kind.TOTP else state.period,
                   counter=counter, locked=True, display=Display())


# -- QA ----------------------------------------------------------------------------------
def set_drift(state: FirmwareState, now_ms: int, crystal: Crystal) -> FirmwareState:
    require_qa(state)
    return replace(state, clock=state.clock.set_crystal(now_ms, crystal))


def adjust_offset(state: FirmwareState, now_ms: int, delta_ms: int) -> FirmwareState:
    require_qa(state)
    return replace(state, clock=state.clock.adjust(now_ms, delta_ms))


def age(state: FirmwareState, now_ms: int, span_ms: int) -> FirmwareState:
    require_qa(state)
    if span_ms < 0:
        raise Refused("BAD_ARGUMENT", "cannot age by a negative span")
    return replace(state, clock=state.clock.age(now_ms, span_ms))


def set_time(state: FirmwareState, now_ms: int, token_ms: int) -> FirmwareState:
    require_qa(state)
    if token_ms < 0:
        raise Refused("BAD_ARGUMENT", "time before 1970")
    return replace(state, clock=state.clock.set_time(now_ms, token_ms))


def freeze(state: FirmwareState, now_ms: int) -> FirmwareState:
    require_qa(state)
    if state.clock.frozen:
        return state
    return replace(state, clock=state.clock.hold(now_ms, "freeze"))


def unfreeze(state: FirmwareState, now_ms: int) -> FirmwareState:
    require_qa(state)
    return replace(state, clock=state.clock.release(now_ms, "freeze"))


def peek(state: FirmwareState, now_ms: int, count: int) -> tuple[int, int, list[str]]:
    """Codes as if the button were pressed now and in each of the next count-1 steps
    (HOTP: the next `count` presses), with the first step (or counter) and the seconds left
    in it (0 for HOTP). Changes nothing."""
    require_qa(state)
    if not 1 <= count <= MAX_PEEK:
        raise Refused("BAD_ARGUMENT", f"count must be 1..{MAX_PEEK}")
    seed = _need_code(state)
    if state.kind is Kind.HOTP:
        return state.counter, 0, [
            otp.hotp(seed, state.counter + i, digits=state.digits, hash=state.hash)
            for i in range(count)
        ]
    token_ms = state.clock.token_ms(now_ms)
    step = otp.time_step(token_ms, state.period)
    codes = [otp.hotp(seed, step + i, digits=state.digits, hash=state.hash) for i in range(count)]
    return step, otp.seconds_left(token_ms, state.period), codes


def battery(state: FirmwareState, now_ms: int, dead: bool) -> FirmwareState:
    """Kill the battery (the display blanks, the oscillator stops) or put in a new one
    (the clock runs on from where it stopped)."""
    require_qa(state)
    if dead and state.battery_ok:
        return replace(state, battery_ok=False, display=Display(),
                       clock=state.clock.hold(now_ms, "battery"))
    if not dead and not state.battery_ok:
        return replace(state, battery_ok=True, clock=state.clock.release(now_ms, "battery"))
    return state


def factory_reset(state: FirmwareState, model: Model) -> FirmwareState:
    """Erase the seed and counter and unlock, back to the model's algorithm. The crystal
    (clock and drift settings) is hardware and stays as it is."""
    require_qa(state)
    return replace(state, seed=None, locked=False, counter=0, kind=model.kind, hash=model.hash,
                   digits=model.digits, period=model.period, display=Display())

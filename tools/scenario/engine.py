"""Runs a scenario's timeline: a token over its wire protocol, a validator, and time.

The same `Engine` drives both modes; what differs is behind three small interfaces:

- the token is always a `protocol.TokenClient`: in-process it sits on an in-memory port on
  the real firmware (`firmware_sim.runner.Token`) whose true time is the simulated clock;
  live it is a serial port to an emulated token in QA mode;
- `TimeSource` moves time: in-process it *is* the simulated clock (the token's crystal and
  the validator's `now` both follow it); live, the validator runs on the wall clock, so time
  between events is applied to the token only, with AGE (see `tools.scenario.live`);
- `ValidatorSide`: in-process the real `validator.service.Validator` over a temporary SQLite
  file with `now` passed in; live the daemon's HTTP API.

Every event's outcome is compared with its expectation; nothing stops at a failed one, so a
report shows everything that went wrong.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from firmware_sim.models import build_model
from firmware_sim.runner import MemoryPort, open_token
from protocol import (
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    DriftSettings,
    ErrorCode,
    Hash,
    Kind,
    ProtocolError,
    SetDriftRequest,
    TemperatureMode,
    TokenClient,
    TokenRefused,
    pyserial_reader,
)
from tools.scenario.spec import ClockSpec, Event, Expect, Scenario
from validator.core import Policy
from validator.errors import InvalidAuthenticationCode, ValidatorError
from validator.service import Validator
from validator.store import Durability


@dataclass(frozen=True)
class Outcome:
    """What happened: `accepted`, `refused` (with a reason), `ok`, or `error` (the run
    itself failed: a port, the daemon, a malformed step)."""

    status: str
    reason: str | None = None
    detail: str = ""

    def describe(self) -> str:
        text = self.status if self.reason is None else f"{self.status} ({self.reason})"
        return f"{text}: {self.detail}" if self.status == "error" and self.detail else text


def held(expect: Expect, outcome: Outcome) -> bool:
    if outcome.status != expect.status:
        return False
    return expect.reason is None or expect.reason == outcome.reason


@dataclass(frozen=True)
class EventResult:
    event: Event
    outcome: Outcome
    ok: bool
    token_offset_s: float | None
    """Token time minus the validator's time after the event (live: minus wall time)."""
    estimate_s: float | None
    """The validator's believed offset of the token after the event."""
    seconds: float
    """Wall-clock seconds the event took to run."""


@dataclass
class RunResult:
    scenario: Scenario
    mode: str
    serial: str
    results: list[EventResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[EventResult]:
        return [r for r in self.results if not r.ok]

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.failures


class TimeSource(Protocol):
    live: bool
    battery_dead: bool
    """Set by the engine on battery events: live, a dead battery's clock loses the gaps."""

    def advance_to(self, at_ms: int) -> None:
        """Simulated time moves on to `at_ms` after the scenario's start."""

    def pause(self, ms: int) -> None:
        """Time passes within an event (waiting for the display to change)."""

    def now_s(self) -> float | None:
        """The validator's `now`, or None for the wall clock."""


class ValidatorSide(Protocol):
    def register(self, serial: str, secret: bytes, kind: Kind, hash: Hash, digits: int,
                 period: int) -> None: ...

    def enable(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome: ...

    def verify(self, user: str, code: str, now: float | None) -> Outcome: ...

    def resync(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome: ...

    def deactivate(self, user: str, serial: str, now: float | None) -> Outcome: ...

    def estimate(self, serial: str, now: float | None) -> float | None: ...


def drift_settings(clock: ClockSpec) -> DriftSettings:
    return DriftSettings(ppm=clock.ppm, aging_ppm_per_year=clock.aging_ppm_per_year,
                         temperature_mode=TemperatureMode.from_label(clock.temperature),
                         temperature_c=clock.temp_c, temperature_swing_c=clock.temp_swing_c)


def scenario_secret(scenario: Scenario) -> bytes:
    if scenario.token.secret is not None:
        return scenario.token.secret
    return random.Random(f"{scenario.seed}:secret").randbytes(scenario.token.hash.seed_bytes)


def scenario_serial(scenario: Scenario) -> str:
    """The in-process token's serial: the file's, or one in the model's format from the seed."""
    if scenario.token.serial:
        return scenario.token.serial
    return build_model(scenario.token.model).make_serial(random.Random(f"{scenario.seed}:serial"))


def wrong_code(code: str) -> str:
    """A well-formed code that is not `code` (nor, but by a one-in-a-million chance, any code
    near it): the digits a user gets wrong."""
    n = len(code)
    return f"{(int(code) + 5 * 10 ** (n - 1) + 1234) % 10 ** n:0{n}d}"


class Engine:
    """Runs the events of one scenario against a token client, a validator and a time source."""

    def __init__(self, scenario: Scenario, client: TokenClient, time_source: TimeSource,
                 validator: ValidatorSide, serial: str) -> None:
        self.scenario = scenario
        self.client = client
        self.time = time_source
        self.validator = validator
        self.serial = serial
        self.period_ms = scenario.token.period * 1000
        self.watermark: int | None = None
        """The newest step the validator accepted from us: no fresh code may be at or
        before it."""
        self.last_code: str | None = None

    # -- the token -------------------------------------------------------------------
    def _adjust(self, ms: int) -> None:
        if ms:
            self.client.clock_command(AdjustOffsetRequest(ms))

    def _press(self) -> tuple[str, int]:
        """The code the button shows now and its step."""
        token_ms = self.client.clock().token_time_ms
        code = self.client.press().code
        return code, token_ms // self.period_ms

    def _read(self, typing_ms: int) -> tuple[str, int]:
        """A code read now and typed in `typing_ms` later; returns it and its step.

        Live, the validator's clock cannot be moved: the token is put back by the typing
        time for the reading (and forward again), so the code arrives as late as it would."""
        if not self.time.live:
            code, step = self._press()
            self.time.pause(typing_ms)
            return code, step
        self._adjust(-typing_ms)
        try:
            peek = self.client.peek(1)
        finally:
            self._adjust(typing_ms)
        return peek.codes[0], peek.step

    def _catch_up(self, target_step: int, typing_ms: int, cap_steps: int = 2) -> None:
        """Live only: step the token's clock forward to `target_step` (0.2 s into it) when
        it is at most `cap_steps` steps away: what the days between events would have done
        to the token's step, had the validator's clock moved with them."""
        if not self.time.live:
            return
        read_ms = self.client.clock().token_time_ms - typing_ms
        need = target_step * self.period_ms + 200 - read_ms
        if 0 < need <= cap_steps * self.period_ms:
            self._adjust(need)

    def _fresh(self, typing_ms: int) -> tuple[str, int]:
        if self.watermark is not None:
            self._catch_up(self.watermark + 1, typing_ms)
        return self._read(typing_ms)

    def _pair(self, typing_ms: int) -> tuple[str, str, int, int]:
        """Two consecutive codes as a person reads them for enable/resync (AWS): the code on
        display, then, once it changes, the next one, then both are typed in. Returns the
        codes, the second one's step and (live) how far the token's clock was stepped."""
        if not self.time.live:
            c1, _ = self._press()
            token_ms = self.client.clock().token_time_ms
            self.time.pause((token_ms // self.period_ms + 1) * self.period_ms + 500 - token_ms)
            c2, step = self._press()
            self.time.pause(typing_ms)
            return c1, c2, step, 0
        # Live: waiting for the display to change is a forward step of the token's clock to
        # 0.5 s into the next step. Both codes must come after the last accepted one, as
        # they would days later: the token is stepped on as far as that needs (up to a day;
        # the validator learns the new offset from the pair anyway).
        read_ms = self.client.clock().token_time_ms - typing_ms
        target = read_ms // self.period_ms + 1
        if self.watermark is not None and target < self.watermark + 2 and \
                (self.watermark + 2 - target) * self.period_ms <= 86_400_000:
            target = self.watermark + 2
        jump = target * self.period_ms + 500 - read_ms
        self._adjust(jump)
        c2, step = self._read(typing_ms)
        self._adjust(-self.period_ms)
        try:
            c1, _ = self._read(typing_ms)
        finally:
            self._adjust(self.period_ms)
        return c1, c2, step, jump

    # -- events ----------------------------------------------------------------------
    def run(self, result: RunResult,
            on_event: Callable[[EventResult], None] | None = None) -> RunResult:
        """Run every event into `result`, calling `on_event` after each (for live output)."""
        started = time.perf_counter()
        for event in self.scenario.timeline():
            t0 = time.perf_counter()
            try:
                self.time.advance_to(event.at_ms)
                outcome = self._event(event)
            except TokenRefused as exc:
                outcome = Outcome("error", None, f"the token refused: {exc}")
            except (ProtocolError, OSError) as exc:
                outcome = Outcome("error", None, f"token link: {exc}")
            except ValidatorError as exc:
                outcome = Outcome("error", None, f"validator: {exc.message}")
            except RuntimeError as exc:  # the live daemon failed (see live.py)
                outcome = Outcome("error", None, str(exc))
            offset, estimate = self._observe()
            item = EventResult(event, outcome, held(event.expect, outcome), offset, estimate,
                               time.perf_counter() - t0)
            result.results.append(item)
            if on_event is not None:
                on_event(item)
        result.seconds = time.perf_counter() - started
        return result

    def _observe(self) -> tuple[float | None, float | None]:
        try:
            offset = self.client.clock().offset_ms / 1000
        except (ProtocolError, OSError):
            offset = None
        try:
            estimate = self.validator.estimate(self.serial, self.time.now_s())
        except (ValidatorError, RuntimeError):
            estimate = None
        return offset, estimate

    def _event(self, ev: Event) -> Outcome:
        action = ev.action
        typing_ms = round(ev.typing_s * 1000)
        if action in ("enable", "login", "resync") and self.time.battery_dead:
            return Outcome("refused", "battery_dead", "the display is blank")
        if action == "login":
            return self._login(ev, typing_ms)
        if action in ("enable", "resync"):
            c1, c2, step, jump = self._pair(typing_ms)
            if ev.code == "wrong":
                c1, c2 = wrong_code(c1), wrong_code(c2)
            call = self.validator.enable if action == "enable" else self.validator.resync
            outcome = call(ev.user, self.serial, c1, c2, self.time.now_s())
            if outcome.status == "accepted":
                self.watermark = step
                self.last_code = c2
            else:
                self._adjust(-jump)  # live: the validator learnt nothing; undo the step
            return outcome
        if action == "deactivate":
            return self.validator.deactivate(ev.user, self.serial, self.time.now_s())
        if action == "age":
            self.client.clock_command(AgeRequest(ev.span_ms))
        elif action == "set-drift":
            assert ev.clock is not None
            self.client.clock_command(SetDriftRequest(drift_settings(ev.clock)))
        elif action == "battery":
            self.client.info_command(BatteryRequest(ev.dead))
            self.time.battery_dead = ev.dead
        elif action == "step":
            self._adjust(ev.offset_ms)
        return Outcome("ok")

    def _login(self, ev: Event, typing_ms: int) -> Outcome:
        if ev.code == "replay":
            if self.last_code is None:
                return Outcome("error", None, "no code was accepted before: nothing to replay")
            code = self.last_code
            self.time.pause(typing_ms)
            return self.validator.verify(ev.user, code, self.time.now_s())
        if ev.code == "old":
            back = ev.steps_back * self.period_ms
            self._adjust(-back)
            try:
                code, _ = self._read(typing_ms)
            finally:
                self._adjust(back)
            return self.validator.verify(ev.user, code, self.time.now_s())
        try:
            code, step = self._fresh(typing_ms)
        except TokenRefused as exc:
            if exc.code is ErrorCode.BATTERY_DEAD:
                return Outcome("refused", "battery_dead", "the display is blank")
            raise
        if ev.code == "wrong":
            code = wrong_code(code)
        outcome = self.validator.verify(ev.user, code, self.time.now_s())
        if outcome.status == "accepted":
            self.watermark = step if self.watermark is None else max(step, self.watermark)
            self.last_code = code
        return outcome


# -- in-process ------------------------------------------------------------------------
class SimTime:
    """The simulated clock: true time for the token's crystal and `now` for the validator."""

    live = False

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self.now_ms = start_ms
        self.battery_dead = False  # the firmware's own clock stops: nothing to do here

    def advance_to(self, at_ms: int) -> None:
        self.now_ms = max(self.now_ms, self.start_ms + at_ms)

    def pause(self, ms: int) -> None:
        self.now_ms += max(0, ms)

    def now_s(self) -> float:
        return self.now_ms / 1000


class ServiceSide:
    """The real validator service over a SQLite file, `now` passed in."""

    def __init__(self, validator: Validator) -> None:
        self.v = validator

    def register(self, serial: str, secret: bytes, kind: Kind, hash: Hash, digits: int,
                 period: int) -> None:
        self.v.register_token(serial, secret, kind=kind, hash=hash, digits=digits,
                              period=period, now=0.0)

    @staticmethod
    def _outcome(call: Callable[[], object], done: str = "accepted") -> Outcome:
        """`done` if the call returns, the core's refusal (and its reason) if it raises."""
        try:
            call()
        except ValidatorError as exc:
            reason = exc.reason if isinstance(exc, InvalidAuthenticationCode) else exc.code
            return Outcome("refused", reason, exc.message)
        return Outcome(done)

    def enable(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome:
        return self._outcome(lambda: self.v.enable(user, serial, code1, code2, now=now))

    def verify(self, user: str, code: str, now: float | None) -> Outcome:
        r = self.v.verify(user, code, now=now)
        return Outcome("accepted") if r.accepted else Outcome("refused", r.reason.value)

    def resync(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome:
        return self._outcome(lambda: self.v.resync(user, serial, code1, code2, now=now))

    def deactivate(self, user: str, serial: str, now: float | None) -> Outcome:
        return self._outcome(lambda: self.v.deactivate(user, serial, now=now), done="ok")

    def estimate(self, serial: str, now: float | None) -> float | None:
        return self.v.get_token(serial, now=now).offset_seconds


@contextmanager
def _temp_validator(policy: Policy) -> Iterator[Validator]:
    with tempfile.TemporaryDirectory(prefix="foblab-scenario-") as tmp:
        v = Validator.open(Path(tmp) / "validator.db", policy=policy,
                           durability=Durability.NORMAL)
        try:
            yield v
        finally:
            v.close()


def run_in_process(scenario: Scenario,
                   on_event: Callable[[EventResult], None] | None = None) -> RunResult:
    """Run `scenario` with simulated time: the real firmware on an in-memory port and the
    real validator service on a temporary SQLite file. Deterministic for a seed."""
    spec = scenario.token
    sim = SimTime(scenario.start_ms)
    model = build_model(spec.model, kind=spec.kind, hash=spec.hash, digits=spec.digits,
                        period=spec.period)
    c = scenario.clock
    secret = scenario_secret(scenario)
    token = open_token(model, serial=scenario_serial(scenario), seed=secret, crystal=c.crystal(),
                       qa=True, now=lambda: sim.now_ms)
    port = MemoryPort(token)
    client = TokenClient(pyserial_reader(port), port.write)
    if c.offset_s:
        client.clock_command(AdjustOffsetRequest(round(c.offset_s * 1000)))
    result = RunResult(scenario, "in-process", token.serial)
    with _temp_validator(scenario.validator.policy()) as v:
        side = ServiceSide(v)
        side.register(token.serial, secret, model.kind, model.hash, model.digits, model.period)
        engine = Engine(scenario, client, sim, side, token.serial)
        return engine.run(result, on_event)

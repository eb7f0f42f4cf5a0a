"""A scenario against a running validator daemon and a token on a serial port (QA mode).

What is the same as in-process: the file, the token's firmware (the emulator behind the
port), the validator (the daemon's service and core), every code and every expectation.

What differs is time. The daemon runs on the wall clock and cannot be moved, so simulated
time is applied to the token alone, through its QA commands:

- a gap of 5 s or more between events is applied with AGE: the token's clock gains exactly
  the error its crystal would have accumulated over the gap (ppm, temperature, aging), but
  neither clock moves by the gap itself. The validator therefore sees the drift arrive within
  seconds instead of over days: it cannot learn a drift *rate* in live mode, only offsets;
- a shorter gap is slept for real, so the validator's own timers (throttling locks) run as
  in-process;
- while the battery is dead the clock stands still: a gap is also taken off the token's
  clock (ADJUST_OFFSET), as the stopped oscillator would have lost it;
- a fresh code needs a step the validator has not seen. Days later it always has one; live,
  the token's step may still be at (or up to two steps behind) the last accepted one, so the
  token's clock is stepped forward to 0.2 s into the next unused step (ADJUST_OFFSET). Beyond
  two steps behind, it is left alone (and its code is refused, as it would be);
- waiting for the display to change (the second code of an enable or resync pair) is a
  forward step of the token's clock to 0.5 s into the next step, not a sleep;
- the typing delay is reproduced by reading the code from the token's clock set back by the
  delay (ADJUST_OFFSET -d, PEEK, +d), so the code arrives as late as in-process.

The daemon's own policy applies (its [policy] table), not the file's [validator] table.
User names get a per-run suffix, so runs never collide. Nothing is destroyed without
consent: a token that holds a seed (it may be enrolled anywhere) or whose serial the daemon
already knows is refused unless `reset_token` is given (`--reset-token`). The token is then
factory-reset, provisioned with the scenario's secret and registered; at the end it is
removed from the daemon and factory-reset again, so it is left blank.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from protocol import (
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    FactoryResetRequest,
    Hash,
    Kind,
    ProtocolError,
    ProvisionRequest,
    SetDriftRequest,
    TokenClient,
    UnfreezeRequest,
    pyserial_reader,
)
from tools.api_client import ApiClient, ApiError
from tools.scenario.engine import (
    Engine,
    EventResult,
    Outcome,
    RunResult,
    drift_settings,
    scenario_secret,
)
from tools.scenario.spec import Scenario, ValidatorSpec

REAL_GAP_MS = 5000
"""Gaps shorter than this are slept for real in live mode."""


class LiveError(Exception):
    """The live run cannot start: the port, the token or the daemon."""


class LiveTime:
    live = True

    def __init__(self, client: TokenClient, sleep: Callable[[float], None] = time.sleep
                 ) -> None:
        self.client = client
        self.at_ms = 0
        self.battery_dead = False
        self._sleep = sleep

    def advance_to(self, at_ms: int) -> None:
        span = at_ms - self.at_ms
        self.at_ms = max(self.at_ms, at_ms)
        if span <= 0:
            return
        if span < REAL_GAP_MS:
            self._sleep(span / 1000)
            return
        self.client.clock_command(AgeRequest(span))
        if self.battery_dead:
            self.client.clock_command(AdjustOffsetRequest(-span))

    def pause(self, ms: int) -> None:
        """In-event waits are applied by the engine as clock steps; nothing to do here."""

    def now_s(self) -> float | None:
        return None


class HttpSide:
    """The daemon's API v1 as a `ValidatorSide`. A refusal of a step is its outcome; a
    failure of the run itself (no daemon, a bad key, a 5xx) is a RuntimeError."""

    def __init__(self, url: str, key: str, timeout: float, ca_file: Path | None = None) -> None:
        self.api = ApiClient(url, key, timeout, ca_file=ca_file)
        self.suffix = secrets.token_hex(4)
        self.users: set[str] = set()

    def close(self) -> None:
        self.api.close()

    def user(self, name: str) -> str:
        mapped = f"{name}.{self.suffix}"
        self.users.add(mapped)
        return mapped

    def _call(self, call: Callable[[], Any], done: str = "accepted") -> Outcome:
        """`done` if the call succeeds, the API's refusal (and its reason) if it refuses."""
        try:
            call()
        except ApiError as exc:
            return self._refusal(self._check(exc))
        return Outcome(done)

    @staticmethod
    def _check(exc: ApiError) -> ApiError:
        """`exc` if it is a refusal of the step; a RuntimeError if the run itself failed."""
        if exc.status is None or exc.status in (401, 403) or exc.status >= 500:
            raise RuntimeError(f"daemon: {exc}") from None
        return exc

    @staticmethod
    def _refusal(exc: ApiError) -> Outcome:
        data = exc.data if isinstance(exc.data, dict) else {}
        if not data:
            return Outcome("refused", None, "no JSON error")
        return Outcome("refused", data.get("reason") or exc.error, exc.message)

    def register(self, serial: str, secret: bytes, kind: Kind, hash: Hash, digits: int,
                 period: int) -> None:
        body = {"serial": serial, "secret_hex": secret.hex(), "kind": kind, "hash": hash,
                "digits": digits, "period": period}
        try:
            try:
                self.api.create_token(body)
            except ApiError as exc:
                if self._check(exc).status != 409:
                    raise
                self.remove(serial)  # known to the daemon: the caller consented to --reset-token
                self.api.create_token(body)
        except ApiError as exc:
            raise LiveError(f"the daemon refused to register {serial}: {exc.message}") from None

    def registered_to(self, serial: str) -> str | None:
        """None if the daemon does not know `serial`; else who holds it ("" for nobody)."""
        try:
            data = self.api.get_token(serial)
        except ApiError as exc:
            self._check(exc)  # no daemon, a bad key, a 5xx: the run fails
            return None
        return str(data.get("user") or "") if isinstance(data, dict) else ""

    def remove(self, serial: str) -> None:
        try:
            data = self.api.get_token(serial)
            if isinstance(data, dict) and data.get("user"):
                self.api.deactivate_device(data["user"], serial)
            self.api.delete_token(serial)
        except ApiError as exc:
            self._check(exc)

    def enable(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome:
        return self._call(lambda: self.api.enable_device(self.user(user), serial, code1, code2))

    def verify(self, user: str, code: str, now: float | None) -> Outcome:
        try:
            data = self.api.verify(self.user(user), code)
        except ApiError as exc:
            return self._refusal(self._check(exc))
        if not isinstance(data, dict):
            return Outcome("refused", None, "no JSON verdict")
        return Outcome("accepted") if data.get("ok") else Outcome("refused", data.get("reason"))

    def resync(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome:
        return self._call(lambda: self.api.resync_device(self.user(user), serial, code1, code2))

    def deactivate(self, user: str, serial: str, now: float | None) -> Outcome:
        return self._call(lambda: self.api.deactivate_device(self.user(user), serial), "ok")

    def estimate(self, serial: str, now: float | None) -> float | None:
        try:
            data = self.api.get_token(serial)
        except ApiError as exc:
            self._check(exc)
            return None
        drift = (data.get("drift") if isinstance(data, dict) else None) or {}
        value = drift.get("offset_seconds")
        return float(value) if isinstance(value, int | float) else None


def _check_consent(client: TokenClient, side: HttpSide, reset_token: bool) -> None:
    """Refuse a token that holds a seed or is known to the daemon, unless `reset_token`."""
    info = client.info()
    if not info.qa_mode:
        raise LiveError(f"token {info.serial} is not in QA mode (start it with --qa)")
    if reset_token:
        return
    holder = side.registered_to(info.serial)
    if holder is not None:
        whose = f", enabled for {holder}" if holder else ""
        raise LiveError(f"token {info.serial} is registered with the daemon{whose}; a live "
                        "run removes it and reseeds the token: give --reset-token to allow "
                        "that, or use a blank QA token (foblab sim run --qa --blank)")
    if info.provisioned:
        raise LiveError(f"token {info.serial} holds a seed (it may be enrolled on another "
                        "validator); a live run erases it: give --reset-token to allow that, "
                        "or use a blank QA token (foblab sim run --qa --blank)")


def _prepare_token(client: TokenClient, scenario: Scenario, secret: bytes) -> str:
    """Factory-reset the QA token, provision the scenario's secret and algorithm, set its
    crystal and its initial offset. Returns its serial."""
    info = client.info()
    t = scenario.token
    client.info_command(BatteryRequest(False))
    client.clock_command(UnfreezeRequest())
    client.info_command(FactoryResetRequest())
    client.info_command(ProvisionRequest(seed=secret, kind=Kind.TOTP, hash=t.hash,
                                         digits=t.digits, period=t.period, counter=0))
    client.clock_command(SetDriftRequest(drift_settings(scenario.clock)))
    offset_ms = client.clock().offset_ms
    wanted = round(scenario.clock.offset_s * 1000)
    if wanted != offset_ms:
        client.clock_command(AdjustOffsetRequest(wanted - offset_ms))
    return info.serial


def run_live(scenario: Scenario, *, url: str, key: str, port: str, timeout: float = 5.0,
             on_event: Callable[[EventResult], None] | None = None,
             sleep: Callable[[float], None] = time.sleep,
             reset_token: bool = False, ca_file: Path | None = None) -> RunResult:
    """Run `scenario` against the daemon at `url` (an admin key) and the QA token on
    `port`. Raises LiveError when the run cannot start."""
    try:
        link = serial.serial_for_url(port, timeout=timeout, write_timeout=timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LiveError(f"cannot open {port}: {exc}") from None
    try:
        side = HttpSide(url, key, timeout, ca_file)
    except ApiError as exc:
        link.close()
        raise LiveError(str(exc)) from None
    serial_no = None
    try:
        client = TokenClient(pyserial_reader(link), link.write)
        secret = scenario_secret(scenario)
        try:
            _check_consent(client, side, reset_token)
        except (ProtocolError, OSError, serial.SerialException) as exc:
            raise LiveError(f"{port}: {exc}") from None
        except RuntimeError as exc:
            raise LiveError(str(exc)) from None
        try:
            serial_no = _prepare_token(client, scenario, secret)
        except (ProtocolError, OSError, serial.SerialException) as exc:
            raise LiveError(f"{port}: {exc}") from None
        t = scenario.token
        try:
            side.register(serial_no, secret, Kind.TOTP, t.hash, t.digits, t.period)
        except RuntimeError as exc:
            raise LiveError(str(exc)) from None
        result = RunResult(scenario, "live", serial_no)
        if scenario.validator != ValidatorSpec():
            result.notes.append("the file's [validator] settings are not applied live: the "
                                "daemon's own [policy] decides")
        engine = Engine(scenario, client, LiveTime(client, sleep), side, serial_no)
        return engine.run(result, on_event)
    finally:
        try:
            if serial_no is not None:
                side.remove(serial_no)
                client.info_command(BatteryRequest(False))
                client.info_command(FactoryResetRequest())  # left blank, as it was found
        except (RuntimeError, ProtocolError, OSError, serial.SerialException):
            pass
        side.close()
        link.close()

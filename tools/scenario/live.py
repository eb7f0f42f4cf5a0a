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
from typing import Any

import httpx
import serial

from protocol.connection import TokenClient, pyserial_reader
from protocol.errors import ProtocolError
from protocol.messages import (
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    FactoryResetRequest,
    HashAlg,
    Kind,
    ProvisionRequest,
    SetDriftRequest,
    UnfreezeRequest,
)
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
_HASH = {"sha1": HashAlg.SHA1, "sha256": HashAlg.SHA256, "sha512": HashAlg.SHA512}


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
    """The daemon's API v1 as a `ValidatorSide`."""

    def __init__(self, url: str, key: str, timeout: float) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout,
                                 headers={"Authorization": f"Bearer {key}"})
        self.suffix = secrets.token_hex(4)
        self.users: set[str] = set()

    def close(self) -> None:
        self.http.close()

    def user(self, name: str) -> str:
        mapped = f"{name}.{self.suffix}"
        self.users.add(mapped)
        return mapped

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"daemon: {exc}") from None
        try:
            data = r.json() if r.content else None
        except ValueError:
            data = None
        if r.status_code in (401, 403) or r.status_code >= 500:
            message = data.get("message") if isinstance(data, dict) else r.text[:200]
            raise RuntimeError(f"daemon: HTTP {r.status_code} on {method} {path}: {message}")
        return r.status_code, data

    @staticmethod
    def _refusal(data: Any) -> Outcome:
        if not isinstance(data, dict):
            return Outcome("refused", None, "no JSON error")
        reason = data.get("reason") or data.get("error")
        return Outcome("refused", reason, str(data.get("message", "")))

    def register(self, serial: str, secret: bytes, kind: str, hash: str, digits: int,
                 period: int) -> None:
        body = {"serial": serial, "secret_hex": secret.hex(), "kind": kind, "hash": hash,
                "digits": digits, "period": period}
        status, data = self.call("POST", "/v1/tokens", body)
        if status == 409:  # known to the daemon: the caller consented to --reset-token
            self.remove(serial)
            status, data = self.call("POST", "/v1/tokens", body)
        if status != 201:
            raise LiveError(f"the daemon refused to register {serial}: "
                            f"{data.get('message') if isinstance(data, dict) else status}")

    def registered_to(self, serial: str) -> str | None:
        """None if the daemon does not know `serial`; else who holds it ("" for nobody)."""
        status, data = self.call("GET", f"/v1/tokens/{serial}")
        if status != 200:
            return None
        return str(data.get("user") or "") if isinstance(data, dict) else ""

    def remove(self, serial: str) -> None:
        status, data = self.call("GET", f"/v1/tokens/{serial}")
        if status == 200 and isinstance(data, dict) and data.get("user"):
            self.call("DELETE", f"/v1/users/{data['user']}/devices/{serial}")
        self.call("DELETE", f"/v1/tokens/{serial}")

    def enable(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome:
        status, data = self.call("POST", f"/v1/users/{self.user(user)}/devices",
                                 {"serial": serial, "code1": code1, "code2": code2})
        return Outcome("accepted") if status == 201 else self._refusal(data)

    def verify(self, user: str, code: str, now: float | None) -> Outcome:
        status, data = self.call("POST", "/v1/verify", {"user": self.user(user), "code": code})
        if status != 200 or not isinstance(data, dict):
            return self._refusal(data)
        return Outcome("accepted") if data.get("ok") else Outcome("refused", data.get("reason"))

    def resync(self, user: str, serial: str, code1: str, code2: str,
               now: float | None) -> Outcome:
        status, data = self.call("POST", f"/v1/users/{self.user(user)}/devices/{serial}/resync",
                                 {"code1": code1, "code2": code2})
        return Outcome("accepted") if status == 200 else self._refusal(data)

    def deactivate(self, user: str, serial: str, now: float | None) -> Outcome:
        status, data = self.call("DELETE", f"/v1/users/{self.user(user)}/devices/{serial}")
        return Outcome("ok") if status == 204 else self._refusal(data)

    def estimate(self, serial: str, now: float | None) -> float | None:
        status, data = self.call("GET", f"/v1/tokens/{serial}")
        if status != 200 or not isinstance(data, dict):
            return None
        drift = data.get("drift") or {}
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
    client.info_command(ProvisionRequest(seed=secret, kind=Kind.TOTP, hash=_HASH[t.hash],
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
             reset_token: bool = False) -> RunResult:
    """Run `scenario` against the daemon at `url` (an admin key) and the QA token on
    `port`. Raises LiveError when the run cannot start."""
    try:
        link = serial.serial_for_url(port, timeout=timeout, write_timeout=timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LiveError(f"cannot open {port}: {exc}") from None
    side = HttpSide(url, key, timeout)
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
            side.register(serial_no, secret, "totp", t.hash, t.digits, t.period)
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

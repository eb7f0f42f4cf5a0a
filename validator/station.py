"""The serial enrollment station: a token on a configured port, read and enrolled live.

Only the ports named in the configuration are ever opened (by name, never by a URL from a
request). Everything here blocks on the port: the daemon calls it from a worker thread and
holds `Station.lock` so one request at a time talks to a station.

Enrollment reads the token's serial; a blank token (when allowed) gets a fresh seed from
`secrets`, sized for its hash, and is registered *before* PROVISION is sent, so a seed is
never on a token without being stored. It then reads two consecutive codes and enables
the token: TOTP with the second code current, as a person would type them (PEEK 2 in QA
mode, else a press; then the step boundary is awaited, since enabling with a code that is
not yet current would teach the drift tracker a clock a step ahead and make the token's
next code look replayed); HOTP with two presses. If anything fails after the registration,
the registration is removed (and a QA token is factory-reset to blank), so nothing is left
half-registered.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import serial

from protocol import (
    DEFAULT_PERIOD,
    FactoryResetRequest,
    Hash,
    InfoReply,
    Kind,
    NoReply,
    ProtocolError,
    ProvisionRequest,
    RemoteProtocolError,
    TokenClient,
    TokenRefused,
    pyserial_reader,
)
from validator.errors import (
    AlreadyAssigned,
    DeviceLimit,
    StationUnavailable,
    TokenBatteryDead,
    TokenBlank,
    TokenClockStuck,
    TokenDeclined,
    TokenGarbage,
    TokenNotRegistered,
    TokenTimeout,
    UnknownSerial,
    ValidatorError,
)
from validator.service import TokenInfo, Validator

E = TypeVar("E", bound=ValidatorError)


class Port(Protocol):
    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def close(self) -> None: ...


def _open_serial(url: str, timeout: float) -> Port:
    port: Port = serial.serial_for_url(url, timeout=timeout)
    return port


@dataclass
class Enrolled:
    serial: str
    user: str
    provisioned: bool
    token: TokenInfo


class Station:
    """One configured port. `opener(url, timeout)` is pyserial's unless a test says so."""

    def __init__(self, name: str, url: str, *, timeout: float = 2.0,
                 opener: Callable[[str, float], Port] = _open_serial,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.url = url
        self.timeout = timeout
        self.lock = threading.Lock()
        self._heard = False  # whether the current session received any byte
        self._opener = opener
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return f"Station({self.name!r}, {self.url!r})"

    # -- port handling -------------------------------------------------------------------

    def _fail(self, error: type[E], what: str) -> E:
        """`error` with a message that names this station."""
        return error(f"station {self.name!r}: {what}")

    def _translate(self, exc: Exception) -> ValidatorError:
        if isinstance(exc, ValidatorError):
            return exc
        if isinstance(exc, TokenRefused):
            return self._fail(TokenDeclined,
                              f"the token refused {exc.command.name}: {exc.code.name.lower()}")
        if isinstance(exc, NoReply):
            if self._heard:  # bytes came, but never a valid reply
                return self._fail(TokenGarbage,
                                  "the token's answer was not valid protocol")
            return self._fail(TokenTimeout, "the token did not answer")
        if isinstance(exc, RemoteProtocolError | ProtocolError):
            return self._fail(TokenGarbage, "the token's answer was not valid protocol")
        if isinstance(exc, serial.SerialException | OSError):
            return self._fail(StationUnavailable, "cannot open or use the port")
        raise exc

    def _session(self) -> tuple[Port, TokenClient]:
        try:
            port = self._opener(self.url, self.timeout)
        except (serial.SerialException, OSError, ValueError):
            raise self._fail(StationUnavailable, "cannot open the port") from None
        self._heard = False
        read = pyserial_reader(port)

        def heard_read() -> bytes:
            data = read()
            if data:
                self._heard = True
            return data

        return port, TokenClient(heard_read, port.write)

    # -- operations ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The attached token's INFO, read live."""
        port, client = self._session()
        try:
            return client.info().to_json()
        except Exception as exc:
            raise self._translate(exc) from None
        finally:
            port.close()

    def enroll(self, validator: Validator, user: str, *, provision: bool = False,
               kind: str | None = None, hash: str | None = None, digits: int | None = None,
               period: int | None = None) -> Enrolled:
        port, client = self._session()
        try:
            return self._enroll(client, validator, user, provision=provision, kind=kind,
                                hash=hash, digits=digits, period=period)
        except ValidatorError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None
        finally:
            port.close()

    def _enroll(self, client: TokenClient, validator: Validator, user: str, *, provision: bool,
                kind: str | None, hash: str | None, digits: int | None,
                period: int | None) -> Enrolled:
        info = client.info()
        serial_no = info.serial
        # Everything that can be refused without the token is checked first, so a
        # provisioning is rolled back only for a failure of the token itself.
        held = validator.list_devices(user)
        if len(held) >= validator.policy.max_devices:
            raise self._fail(DeviceLimit,
                             f"user {user!r} already has {len(held)} devices")
        if not info.battery_ok:
            raise self._fail(TokenBatteryDead, f"token {serial_no}: battery dead")
        registered = False
        if not info.provisioned:
            if not provision:
                raise self._fail(TokenBlank, f"token {serial_no} is blank; send "
                                 "\"provision\": true to seed it")
            info = self._provision(client, validator, info, kind, hash, digits, period)
            registered = True
        else:
            try:
                known = validator.get_token(serial_no)
            except UnknownSerial:
                raise self._fail(TokenNotRegistered, f"token {serial_no} is not "
                                 "registered; import its seed file first") from None
            if known.user is not None:  # before waiting a step for codes that cannot help
                raise self._fail(AlreadyAssigned,
                                 f"token {serial_no} is already assigned")
        try:
            code1, code2 = self._two_codes(client, info)
            token = validator.enable(user, serial_no, code1, code2)
        except BaseException:
            if registered:
                self._roll_back(client, validator, info)
            raise
        return Enrolled(serial_no, user, registered, token)

    def _provision(self, client: TokenClient, validator: Validator, info: InfoReply,
                   kind: str | None, hash: str | None, digits: int | None,
                   period: int | None) -> InfoReply:
        kind_ = Kind.from_label(kind) if kind else info.kind
        hash_ = Hash.from_label(hash) if hash else info.hash
        digits_n = digits or info.digits
        period_n = period or info.period or DEFAULT_PERIOD
        seed = secrets.token_bytes(hash_.seed_bytes)
        validator.register_token(info.serial, seed, kind=kind_, hash=hash_,
                                 digits=digits_n, period=period_n, counter=0)
        request = ProvisionRequest(seed=seed, kind=kind_, hash=hash_, digits=digits_n,
                                   period=period_n, counter=0)
        del seed
        try:
            return client.info_command(request)
        except NoReply:
            # The reply may have been lost after the token took the seed: ask again. We
            # hold the station, so nobody else can have provisioned it meanwhile.
            try:
                after = client.info()
            except Exception:
                validator.delete_token(info.serial)
                raise
            if after.provisioned:
                return after
            validator.delete_token(info.serial)
            raise
        except BaseException:
            validator.delete_token(info.serial)
            raise

    def _roll_back(self, client: TokenClient, validator: Validator, info: InfoReply) -> None:
        try:
            validator.delete_token(info.serial)
        except ValidatorError:
            pass
        if info.qa_mode:  # back to blank, so the enrollment can simply be tried again
            try:
                client.info_command(FactoryResetRequest())
            except ProtocolError:
                pass

    def _two_codes(self, client: TokenClient, info: InfoReply) -> tuple[str, str]:
        if info.kind is Kind.HOTP:
            return client.press().code, client.press().code
        period = info.period or DEFAULT_PERIOD
        if info.qa_mode:
            peek = client.peek(2)
            if len(peek.codes) != 2:
                raise self._fail(TokenGarbage,
                                 f"the token answered PEEK 2 with {len(peek.codes)} code(s)")
            first, second, step = peek.codes[0], peek.codes[1], peek.step
            # A step lasts at most `period`, whatever seconds_left a token claims (it is a
            # 16-bit field: a garbled one must not hold the station for hours).
            deadline = self._clock() + min(peek.seconds_left, period) + 2.0
            while client.peek(1).step <= step:
                if self._clock() > deadline:
                    raise self._fail(TokenClockStuck,
                                     "the token's step did not advance (frozen clock?)")
                self._sleep(0.1)
            return first, second
        pressed = client.press()
        left = min(pressed.seconds_left, period)
        deadline = self._clock() + left + 2.0
        if left > 0.5:
            self._sleep(left - 0.5)
        while True:
            again = client.press()
            if again.code != pressed.code:
                return pressed.code, again.code
            if self._clock() > deadline:
                raise self._fail(TokenClockStuck,
                                 "the token's code did not change at the step boundary")
            self._sleep(0.1)

"""The enrollment station against a scripted token on an in-memory port: replies that are
well-formed frames but make no sense are a 502 naming the station, never a 500, and a
garbled wait time cannot hold the station for longer than a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from protocol import DeviceConnection, RequestReceived
from protocol.messages import (
    Hash,
    InfoReply,
    InfoRequest,
    Kind,
    PeekReply,
    PeekRequest,
    PressReply,
    Reply,
)
from validator.errors import InvalidAuthenticationCode, StationError
from validator.service import Validator
from validator.station import Station

SECRET = bytes(range(20))
INFO = InfoReply(serial="GAHT00000001", model="keyfob", firmware="1.0", protocol_version=1,
                 kind=Kind.TOTP, hash=Hash.SHA1, digits=6, period=30, provisioned=True,
                 locked=True, qa_mode=True, battery_ok=True)


class ScriptedPort:
    """A port whose token answers each request with `answer(request)`."""

    def __init__(self, answer: Callable[[Any], Reply]) -> None:
        self.timeout: float | None = 0.05
        self._device = DeviceConnection()
        self._answer = answer
        self._out = bytearray()

    @property
    def in_waiting(self) -> int:
        return len(self._out)

    def write(self, data: bytes, /) -> int:
        self._device.receive_data(data)
        while isinstance(event := self._device.next_event(), RequestReceived):
            self._out += self._device.send(event, self._answer(event.request))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._out[:size])
        del self._out[:size]
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def validator(tmp_path: Path) -> Any:
    v = Validator.open(tmp_path / "v.db")
    v.register_token(INFO.serial, SECRET)
    yield v
    v.close()


@pytest.mark.parametrize("codes", [(), ("123456",)])
def test_a_peek_with_too_few_codes_is_garbage_not_a_crash(validator: Validator,
                                                          codes: tuple[str, ...]) -> None:
    def answer(request: Any) -> Reply:
        if isinstance(request, InfoRequest):
            return INFO
        assert isinstance(request, PeekRequest)
        return PeekReply(step=1, seconds_left=10, codes=codes)

    station = Station("bench", "fake://", opener=lambda url, timeout: ScriptedPort(answer))
    with pytest.raises(StationError) as caught:
        station.enroll(validator, "alice")
    assert (caught.value.status, caught.value.code) == (502, "token_garbage")
    assert "'bench'" in caught.value.message
    assert validator.get_token(INFO.serial).user is None


class FakeClock:
    """`sleep` advances `now`; both injected into the station."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_a_garbled_seconds_left_waits_at_most_a_step(validator: Validator) -> None:
    """seconds_left is a 16-bit field: 65535 from a garbled reply must not hold the station
    for 18 hours. A step lasts at most the period, so that bounds every wait."""
    presses = iter([PressReply("111111", 65535), PressReply("222222", 30)])

    def answer(request: Any) -> Reply:
        if isinstance(request, InfoRequest):
            return replace(INFO, qa_mode=False)
        return next(presses)

    clock = FakeClock()
    station = Station("bench", "fake://", opener=lambda url, timeout: ScriptedPort(answer),
                      sleep=clock.sleep, clock=clock)
    with pytest.raises(InvalidAuthenticationCode):  # made-up codes; the wait is the point
        station.enroll(validator, "alice")
    assert clock.slept and max(clock.slept) <= INFO.period


def test_a_qa_token_whose_step_never_advances_gives_up_after_a_step(
        validator: Validator) -> None:
    def answer(request: Any) -> Reply:
        if isinstance(request, InfoRequest):
            return INFO
        return PeekReply(step=7, seconds_left=65535, codes=("111111", "222222")[:request.count])

    clock = FakeClock()
    station = Station("bench", "fake://", opener=lambda url, timeout: ScriptedPort(answer),
                      sleep=clock.sleep, clock=clock)
    with pytest.raises(StationError) as caught:
        station.enroll(validator, "alice")
    assert (caught.value.status, caught.value.code) == (504, "token_clock_stuck")
    assert clock.now <= INFO.period + 2.0 + 0.2

"""The pure firmware and the token around it, over the in-memory port (time passed in)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware_sim import device
from firmware_sim.models import PRESETS
from firmware_sim.runner import MemoryPort, Token, open_token
from firmware_sim.storage import StorageError, TokenBusyError
from firmware_sim.token import new_token
from protocol.connection import TokenClient, TokenRefused, pyserial_reader
from protocol.messages import (
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    ClockRequest,
    DisplayRequest,
    DriftSettings,
    ErrorCode,
    ErrorReply,
    FactoryResetRequest,
    FreezeRequest,
    InfoRequest,
    PeekRequest,
    PressReply,
    PressRequest,
    ProvisionRequest,
    Request,
    SetDriftRequest,
    SetTimeRequest,
    UnfreezeRequest,
)

FakeClock = Any  # the `clock` fixture of conftest.py: call it for ms, .advance(ms), .ms
RFC_SEED_SHA1 = b"12345678901234567890"
T0 = 1_700_000_000_000
HOTP_VECTORS = ["755224", "287082", "359152", "969429", "338314",
                "254676", "287922", "162583", "399871", "520489"]
QA_REQUESTS: list[Request] = [
    SetDriftRequest(DriftSettings(ppm=5)), AdjustOffsetRequest(1000), AgeRequest(1000),
    SetTimeRequest(59_000), FreezeRequest(), UnfreezeRequest(), PeekRequest(2),
    BatteryRequest(dead=True), FactoryResetRequest(),
]


def client(token: Token) -> TokenClient:
    port = MemoryPort(token)
    return TokenClient(pyserial_reader(port), port.write)


def test_hotp_rfc4226_vectors_through_presses(clock: FakeClock) -> None:
    c = client(open_token("event", seed=RFC_SEED_SHA1, now=clock))
    assert [c.press().code for _ in range(10)] == HOTP_VECTORS


def test_qa_refused_outside_qa_mode(clock: FakeClock) -> None:
    c = client(open_token(seed=RFC_SEED_SHA1, now=clock))
    for req in QA_REQUESTS:
        with pytest.raises(TokenRefused) as err:
            c.call(req)
        assert err.value.code is ErrorCode.NOT_PERMITTED, req
    assert c.info().provisioned  # nothing changed


def test_blank_token_provisioned_once_then_locked(clock: FakeClock) -> None:
    c = client(open_token(now=clock))
    assert not c.info().provisioned
    for req in (PressRequest(), DisplayRequest()):
        with pytest.raises(TokenRefused) as err:
            c.call(req)
        assert err.value.code is ErrorCode.NOT_PROVISIONED
    info = c.info_command(ProvisionRequest(seed=RFC_SEED_SHA1))
    assert info.provisioned and info.locked
    with pytest.raises(TokenRefused) as err:
        c.call(ProvisionRequest(seed=b"another seed"))
    assert err.value.code is ErrorCode.ALREADY_PROVISIONED
    clock.ms = 59_000
    assert c.press().code == "287082"  # still the first seed


def test_bad_provision_arguments_refused(clock: FakeClock) -> None:
    c = client(open_token(now=clock))
    with pytest.raises(TokenRefused) as err:
        c.call(ProvisionRequest(seed=b"x" * 20, digits=7))
    assert err.value.code is ErrorCode.BAD_ARGUMENT
    assert not c.info().locked


def test_no_reply_ever_contains_the_seed(clock: FakeClock) -> None:
    seed = bytes(range(0x41, 0x41 + 20))
    token = open_token("event", seed=seed, qa=True, now=clock)
    session = token.session()
    from protocol.connection import HostConnection

    host = HostConnection()
    requests: list[Request] = [InfoRequest(), PressRequest(), DisplayRequest(), ClockRequest(),
                               ProvisionRequest(seed=seed), *QA_REQUESTS,
                               ProvisionRequest(seed=seed)]
    for req in requests:
        _, data = host.send(req)
        out = session.feed(data)
        assert seed not in out and seed.hex().encode() not in out
        assert seed[:8] not in out


def test_display_times_out_like_a_real_token(clock: FakeClock) -> None:
    c = client(open_token(seed=RFC_SEED_SHA1, now=clock))
    assert c.display().code == ""
    code = c.press().code
    clock.advance(10_000)
    shown = c.display()
    assert shown.code and 1 <= shown.seconds_left <= 30
    clock.advance(PRESETS["keyfob"].display_timeout_s * 1000)
    assert c.display().code == ""
    assert code


def test_battery_dead_blanks_and_replaced_clock_is_behind(clock: FakeClock) -> None:
    c = client(open_token(seed=RFC_SEED_SHA1, qa=True, now=clock))
    c.press()
    info = c.info_command(BatteryRequest(dead=True))
    assert not info.battery_ok
    assert c.display().code == ""
    with pytest.raises(TokenRefused) as err:
        c.press()
    assert err.value.code is ErrorCode.BATTERY_DEAD
    clock.advance(3_600_000)
    assert c.info_command(BatteryRequest(dead=False)).battery_ok
    assert c.clock().offset_ms == -3_600_000  # the oscillator stood still for the hour
    assert c.press().code


def test_peek_does_not_advance(clock: FakeClock) -> None:
    c = client(open_token("event", seed=RFC_SEED_SHA1, qa=True, now=clock))
    assert c.peek(3).codes == tuple(HOTP_VECTORS[:3])
    assert c.press().code == HOTP_VECTORS[0]
    with pytest.raises(TokenRefused):
        c.peek(0)


def test_factory_reset_blanks_and_unlocks(clock: FakeClock) -> None:
    c = client(open_token(seed=RFC_SEED_SHA1, qa=True, now=clock))
    info = c.info_command(FactoryResetRequest())
    assert not info.provisioned and not info.locked
    assert c.info_command(ProvisionRequest(seed=b"new seed 12345")).locked


def test_clock_commands(clock: FakeClock) -> None:
    c = client(open_token(seed=RFC_SEED_SHA1, qa=True, now=clock))
    r = c.clock_command(SetDriftRequest(DriftSettings(ppm=40)))
    assert r.drift.ppm == 40
    r = c.clock_command(AgeRequest(365 * 86_400_000))
    assert 1_261_000 <= r.offset_ms <= 1_262_000
    r = c.clock_command(AdjustOffsetRequest(-1_261_440))
    assert abs(r.offset_ms) <= 1
    c.clock_command(FreezeRequest())
    frozen_at = c.clock().token_time_ms
    clock.advance(60_000)
    assert c.clock().token_time_ms == frozen_at and c.clock().frozen
    c.clock_command(UnfreezeRequest())
    clock.advance(1000)
    assert c.clock().token_time_ms == frozen_at + 1000 + 0  # 40 ppm of a second rounds away


def test_bad_drift_refused(clock: FakeClock) -> None:
    c = client(open_token(seed=RFC_SEED_SHA1, qa=True, now=clock))
    with pytest.raises(TokenRefused) as err:
        c.call(SetDriftRequest(DriftSettings(ppm=1e6)))
    assert err.value.code is ErrorCode.BAD_ARGUMENT


def test_garbage_then_a_valid_frame(clock: FakeClock) -> None:
    port = MemoryPort(open_token(seed=RFC_SEED_SHA1, now=clock))
    rng = random.Random(7)
    for _ in range(50):
        port.write(rng.randbytes(rng.randrange(1, 700)))
    port.write(b"\x00")
    port.read(1 << 20)  # whatever ERROR replies the noise earned
    c = TokenClient(pyserial_reader(port), port.write)
    assert c.info().serial.startswith("GAHT")


def test_pure_handle_is_deterministic() -> None:
    state = new_token(PRESETS["keyfob"], T0, serial="GAHT00000001", seed=RFC_SEED_SHA1)
    a = device.handle(state, PRESETS["keyfob"], PressRequest(), T0 + 5)
    b = device.handle(state, PRESETS["keyfob"], PressRequest(), T0 + 5)
    assert a.reply == b.reply and not a.persist
    dead = device.handle(state, PRESETS["keyfob"], BatteryRequest(dead=True), T0)
    assert isinstance(dead.reply, ErrorReply) and dead.state is state


def test_state_survives_restart(tmp_path: Path, clock: FakeClock) -> None:
    token = open_token("event", serial="GAEV00000001", seed=RFC_SEED_SHA1, state_dir=tmp_path,
                       now=clock)
    c = client(token)
    assert [c.press().code for _ in range(3)] == HOTP_VECTORS[:3]
    token.close()
    again = open_token("event", serial="GAEV00000001", seed=b"ignored", state_dir=tmp_path,
                       now=clock)
    assert again.restored
    assert client(again).press().code == HOTP_VECTORS[3]
    again.close()


def test_totp_codes_and_drift_survive_restart(tmp_path: Path, clock: FakeClock) -> None:
    token = open_token(serial="GAHT00000002", seed=RFC_SEED_SHA1, qa=True, state_dir=tmp_path,
                       now=clock)
    c = client(token)
    c.clock_command(SetDriftRequest(DriftSettings(ppm=-20)))
    c.clock_command(AgeRequest(30 * 86_400_000))
    before = (c.peek(2).codes, c.clock().offset_ms)
    token.close()
    again = open_token(serial="GAHT00000002", state_dir=tmp_path, qa=True, now=clock)
    c2 = client(again)
    assert (c2.peek(2).codes, c2.clock().offset_ms) == before
    again.close()


def test_two_emulators_cannot_run_one_token(tmp_path: Path) -> None:
    token = open_token(serial="GAHT00000003", seed=RFC_SEED_SHA1, state_dir=tmp_path)
    with pytest.raises(TokenBusyError, match="already running"):
        open_token(serial="GAHT00000003", state_dir=tmp_path)
    token.close()
    open_token(serial="GAHT00000003", state_dir=tmp_path).close()


def test_hotp_not_shown_when_it_cannot_be_saved(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = open_token("event", serial="GAEV00000009", seed=RFC_SEED_SHA1, state_dir=tmp_path,
                       now=clock)
    c = client(token)
    assert c.press().code == HOTP_VECTORS[0]
    assert token.file is not None

    def disk_full(data: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(token.file, "save", disk_full)
        with pytest.raises(TokenRefused) as err:
            c.press()
        assert err.value.code is ErrorCode.BUSY
    assert c.press().code == HOTP_VECTORS[1]  # the failed press consumed nothing
    token.close()


def test_a_long_non_ascii_refusal_still_travels_with_its_reason(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = open_token("event", serial="GAEV00000010", seed=RFC_SEED_SHA1, state_dir=tmp_path,
                       now=clock)
    assert token.file is not None

    def disk_full(data: object) -> None:  # an OSError naming a long non-ASCII path
        raise OSError(28, "No space left on device", "/tmp/" + "\u00e9t\u00e9/" * 60)

    monkeypatch.setattr(token.file, "save", disk_full)
    with pytest.raises(TokenRefused) as err:
        client(token).press()
    assert err.value.code is ErrorCode.BUSY
    assert err.value.reply.detail.startswith("cannot save state: [Errno 28] No space left")
    token.close()


def test_a_reply_that_cannot_be_encoded_is_busy_not_a_dead_port(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = open_token(seed=RFC_SEED_SHA1, now=clock)
    c = client(token)
    with monkeypatch.context() as m:  # a firmware bug: a code that is not ASCII
        m.setattr(token, "handle", lambda request: PressReply("\u00e9" * 6, 17))
        with pytest.raises(TokenRefused) as err:
            c.press()
        assert err.value.code is ErrorCode.BUSY
    assert c.info().serial == token.serial  # the same session answers the next request


@pytest.mark.parametrize("serial", ["GAHT\u00c41234", "GAHT 1234", "G" * 65, "GAHT\n1"])
def test_a_serial_info_could_not_carry_is_refused_before_any_file(
    tmp_path: Path, serial: str
) -> None:
    with pytest.raises(ValueError, match="serial must be"):
        new_token(PRESETS["keyfob"], T0, serial=serial)
    with pytest.raises(ValueError, match="serial must be"):
        open_token(serial=serial, seed=RFC_SEED_SHA1, state_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("seed"),
    lambda d: d.update(version=2),
    lambda d: d.update(seed="zz"),  # not hex
    lambda d: d.update(counter=None),
    lambda d: d["clock"]["drift"].update(wobble=1),  # a field the crystal does not have
])
def test_a_damaged_state_file_is_a_storage_error(
    tmp_path: Path, damage: Callable[[dict[str, Any]], object]
) -> None:
    open_token(serial="GAHT00000004", seed=RFC_SEED_SHA1, state_dir=tmp_path).close()
    path = tmp_path / "GAHT00000004.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    for _ in range(2):  # the second time shows the lock was released, not busy
        with pytest.raises(StorageError, match="GAHT00000004.json is damaged"):
            open_token(serial="GAHT00000004", state_dir=tmp_path)

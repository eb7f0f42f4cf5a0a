"""Payload and frame codec: round trips of every message type, and refusals of bad payloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import LocalProtocolError, PayloadError, crc16
from protocol.codec import (
    MAX_FRAME,
    Frame,
    FrameError,
    decode_frame_body,
    decode_reply,
    decode_request,
    encode_frame_body,
    encode_reply,
    encode_request,
)
from protocol.messages import (
    REPLY_TYPES,
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    ClockReply,
    ClockRequest,
    Command,
    DisplayReply,
    DisplayRequest,
    DriftSettings,
    ErrorCode,
    ErrorReply,
    FactoryResetRequest,
    FreezeRequest,
    Hash,
    InfoReply,
    InfoRequest,
    Kind,
    PeekReply,
    PeekRequest,
    PressReply,
    PressRequest,
    ProvisionRequest,
    SetDriftRequest,
    SetTimeRequest,
    TemperatureMode,
    UnfreezeRequest,
    command_of,
)

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
digits = st.text("0123456789", min_size=6, max_size=8)
i64 = st.integers(-(2**63), 2**63 - 1)
# Fixed-point fields: generate the integer on the wire, so every value is exactly representable.
drift = st.builds(
    DriftSettings,
    ppm=st.integers(-(2**31), 2**31 - 1).map(lambda n: n / 1000),
    aging_ppm_per_year=st.integers(-(2**31), 2**31 - 1).map(lambda n: n / 1000),
    temperature_mode=st.sampled_from(TemperatureMode),
    temperature_c=st.integers(-(2**15), 2**15 - 1).map(lambda n: n / 100),
    temperature_swing_c=st.integers(0, 2**16 - 1).map(lambda n: n / 100),
)
requests = st.one_of(
    st.just(InfoRequest()),
    st.just(PressRequest()),
    st.just(DisplayRequest()),
    st.just(ClockRequest()),
    st.just(FreezeRequest()),
    st.just(UnfreezeRequest()),
    st.just(FactoryResetRequest()),
    st.builds(
        ProvisionRequest,
        seed=st.binary(max_size=255),
        kind=st.sampled_from(Kind),
        hash=st.sampled_from(Hash),
        digits=st.integers(0, 255),
        period=st.integers(0, 65535),
        counter=st.integers(0, 2**64 - 1),
    ),
    st.builds(SetDriftRequest, drift=drift),
    st.builds(AdjustOffsetRequest, delta_ms=i64),
    st.builds(AgeRequest, span_ms=st.integers(0, 2**64 - 1)),
    st.builds(SetTimeRequest, time_ms=i64),
    st.builds(PeekRequest, count=st.integers(0, 255)),
    st.builds(BatteryRequest, dead=st.booleans()),
)
replies = st.one_of(
    st.builds(
        InfoReply,
        serial=ascii_text,
        model=ascii_text,
        firmware=ascii_text,
        protocol_version=st.integers(0, 255),
        kind=st.sampled_from(Kind),
        hash=st.sampled_from(Hash),
        digits=st.integers(0, 255),
        period=st.integers(0, 65535),
        provisioned=st.booleans(),
        locked=st.booleans(),
        qa_mode=st.booleans(),
        battery_ok=st.booleans(),
    ),
    st.builds(PressReply, code=digits, seconds_left=st.integers(0, 65535)),
    st.builds(DisplayReply, code=digits | st.just(""), seconds_left=st.integers(0, 65535)),
    st.builds(ClockReply, token_time_ms=i64, offset_ms=i64, drift=drift, frozen=st.booleans()),
    st.builds(
        PeekReply,
        step=st.integers(0, 2**64 - 1),
        seconds_left=st.integers(0, 65535),
        codes=st.lists(digits, max_size=40).map(tuple),
    ),
    st.builds(ErrorReply, code=st.sampled_from(ErrorCode), detail=st.text(max_size=40)),
)


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@given(requests, st.integers(0, 255))
def test_every_request_round_trips(request: object, seq: int) -> None:
    command, payload = encode_request(request)  # type: ignore[arg-type]
    assert command == command_of(request)  # type: ignore[arg-type]
    frame = decode_frame_body(encode_frame_body(Frame(seq=seq, command=command, payload=payload)))
    assert (frame.seq, frame.command) == (seq, command)
    assert decode_request(frame.command, frame.payload) == request


@given(replies)
def test_every_reply_round_trips(reply: object) -> None:
    commands = (
        [Command.INFO]
        if isinstance(reply, ErrorReply)
        else [c for c, t in REPLY_TYPES.items() if isinstance(reply, t)]
    )
    for request_command in commands:
        command, payload = encode_reply(request_command, reply)  # type: ignore[arg-type]
        assert command == (0xFF if isinstance(reply, ErrorReply) else request_command | 0x80)
        assert decode_reply(command, payload, request_command) == reply


def test_reply_must_fit_its_command() -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(
            Command.PRESS, InfoReply("S", "m", "f", 1, Kind.TOTP, Hash.SHA1, 6, 30, 1, 1, 1, 1)
        )  # type: ignore[arg-type]


def test_values_out_of_wire_range_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(PeekRequest(count=256))
    with pytest.raises(LocalProtocolError):
        encode_request(ProvisionRequest(seed=b"x" * 256))
    with pytest.raises(LocalProtocolError):
        encode_reply(Command.PRESS, PressReply(code="é", seconds_left=1))


@pytest.mark.parametrize(
    ("command", "payload", "error"),
    [
        (0x33, b"", ErrorCode.UNKNOWN_COMMAND),
        (Command.ERROR, b"", ErrorCode.UNKNOWN_COMMAND),
        (Command.PRESS, b"\x00", ErrorCode.BAD_LENGTH),
        (Command.PEEK, b"", ErrorCode.BAD_LENGTH),
        (Command.PEEK, b"\x01\x02", ErrorCode.BAD_LENGTH),
        (Command.AGE, b"\x00" * 7, ErrorCode.BAD_LENGTH),
        (Command.BATTERY, b"\x02", ErrorCode.BAD_ARGUMENT),
        (
            Command.PROVISION,
            bytes([9, 1, 6, 0, 30]) + b"\x00" * 8 + b"\x00",
            ErrorCode.BAD_ARGUMENT,
        ),
        (
            Command.PROVISION,
            bytes([1, 1, 6, 0, 30]) + b"\x00" * 8 + b"\x05ab",
            ErrorCode.BAD_LENGTH,
        ),
        (Command.SET_DRIFT, b"\x00" * 8 + b"\x07" + b"\x00" * 4, ErrorCode.BAD_ARGUMENT),
    ],
)
def test_bad_request_payloads_name_the_error_to_answer(
    command: int, payload: bytes, error: ErrorCode
) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_request(command, payload)
    assert caught.value.error_code == error


def test_bad_reply_text_is_a_payload_error() -> None:
    with pytest.raises(PayloadError) as caught:
        decode_reply(0x82, b"\x02\xff\xfe\x00\x01", Command.PRESS)
    assert caught.value.error_code == ErrorCode.BAD_ARGUMENT


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:4], "truncated"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "bad_crc"),
        (lambda b: b[:-2], "bad_crc"),
        (lambda b: b + b"\x00" * (MAX_FRAME), "oversize"),
    ],
)
def test_broken_frames_are_frame_errors(mutate: object, reason: str) -> None:
    good = encode_frame_body(Frame(seq=1, command=Command.AGE, payload=b"\x00" * 8))
    with pytest.raises(FrameError) as caught:
        decode_frame_body(mutate(good))  # type: ignore[operator]
    assert caught.value.reason == reason


def test_unknown_version_and_lying_length_are_refused() -> None:
    other = encode_frame_body(Frame(seq=1, command=1, payload=b"", version=2))
    with pytest.raises(FrameError) as caught:
        decode_frame_body(other)
    assert caught.value.reason == "bad_version"
    body = bytearray(encode_frame_body(Frame(seq=1, command=1, payload=b"ab"))[:-2])
    body[4] = 3  # claims three payload bytes, carries two
    lying = bytes(body) + crc16(bytes(body)).to_bytes(2, "big")
    with pytest.raises(FrameError) as caught:
        decode_frame_body(lying)
    assert caught.value.reason == "bad_length"


def test_payload_cap() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame_body(Frame(seq=0, command=1, payload=b"x" * 506))
    assert len(encode_frame_body(Frame(seq=0, command=1, payload=b"x" * 505))) == MAX_FRAME

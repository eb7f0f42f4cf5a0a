"""Host and device connections over a fake link, and the blocking client."""

from __future__ import annotations

from collections import deque

import pytest

from protocol import (
    NEED_DATA,
    BadRequest,
    DeviceConnection,
    HostConnection,
    LocalProtocolError,
    NoReply,
    RemoteProtocolError,
    ReplyReceived,
    RequestReceived,
    TokenClient,
    TokenRefused,
    UnexpectedReply,
    encode_frame,
    pyserial_reader,
)
from protocol.codec import Frame
from protocol.messages import (
    AgeRequest,
    ClockReply,
    Command,
    DriftSettings,
    ErrorCode,
    ErrorReply,
    InfoRequest,
    PeekRequest,
    PressReply,
    PressRequest,
    ProvisionRequest,
)


def test_request_and_reply_cross_the_link_intact() -> None:
    host, device = HostConnection(first_seq=250), DeviceConnection()
    seen = []
    for i in range(10):  # crosses the 255 -> 0 wrap
        seq, data = host.send(PressRequest())
        assert seq == (250 + i) % 256
        device.receive_data(data)
        event = device.next_event()
        assert isinstance(event, RequestReceived) and event.seq == seq
        assert event.request == PressRequest() and device.next_event() is NEED_DATA
        host.receive_data(device.send(event, PressReply(f"{i:06d}", 30 - i)))
        reply = host.next_event()
        assert isinstance(reply, ReplyReceived) and reply.seq == seq
        seen.append(reply.reply)
        assert host.outstanding == frozenset()
    assert seen == [PressReply(f"{i:06d}", 30 - i) for i in range(10)]


def test_reply_with_wrong_sequence_number_is_an_event_not_a_crash() -> None:
    host = HostConnection()
    seq, _ = host.send(PressRequest())
    from protocol.codec import encode_reply

    command, payload = encode_reply(Command.PRESS, PressReply("123456", 1))
    host.receive_data(encode_frame(Frame(seq=(seq + 1) % 256, command=command, payload=payload)))
    event = host.next_event()
    assert isinstance(event, UnexpectedReply) and "sequence number" in event.reason
    assert host.outstanding == {seq}  # still waiting for the real one


def test_reply_of_the_wrong_type_is_unexpected() -> None:
    host, device = HostConnection(), DeviceConnection()
    seq, data = host.send(PressRequest())
    device.receive_data(data)
    event = device.next_event()
    assert isinstance(event, RequestReceived)
    with pytest.raises(LocalProtocolError):  # the device side refuses to encode it at all
        device.send(event, ClockReply(0, 0, DriftSettings(), False))
    from protocol.codec import encode_reply

    command, payload = encode_reply(Command.AGE, ClockReply(0, 0, DriftSettings(), False))
    host.receive_data(encode_frame(Frame(seq=seq, command=command, payload=payload)))
    assert isinstance(host.next_event(), UnexpectedReply)


def test_device_answers_bad_requests_with_errors() -> None:
    device = DeviceConnection()
    device.receive_data(encode_frame(Frame(seq=9, command=0x42, payload=b"")))
    device.receive_data(encode_frame(Frame(seq=10, command=Command.PEEK, payload=b"")))
    device.receive_data(encode_frame(Frame(seq=11, command=0x82, payload=b"")))  # a reply: ignored
    first, second = device.next_event(), device.next_event()
    assert isinstance(first, BadRequest) and first.error is ErrorCode.UNKNOWN_COMMAND
    assert isinstance(second, BadRequest) and second.error is ErrorCode.BAD_LENGTH
    assert device.next_event() is NEED_DATA and device.ignored_replies == 1
    host = HostConnection(first_seq=10)
    seq, _ = host.send(PeekRequest(1))
    host.receive_data(device.send(second, second.error_reply()))
    event = host.next_event()
    assert isinstance(event, ReplyReceived) and event.seq == seq
    assert event.reply == ErrorReply(ErrorCode.BAD_LENGTH, second.detail)
    with pytest.raises(LocalProtocolError):
        device.send(first, PressReply("1", 1))


class FakeToken:
    """A device connection behind read/write callables, with scripted misbehaviour."""

    def __init__(self) -> None:
        self.device = DeviceConnection()
        self.outbox: deque[bytes] = deque()
        self.noise = b""
        self.silent = False
        self.stale: bytes | None = None

    def write(self, data: bytes) -> None:
        self.device.receive_data(data)
        while isinstance(event := self.device.next_event(), RequestReceived | BadRequest):
            if self.silent:
                continue
            if isinstance(event, BadRequest):
                self.outbox.append(self.device.send(event, event.error_reply()))
            elif isinstance(event.request, ProvisionRequest):
                self.outbox.append(
                    self.device.send(event, ErrorReply(ErrorCode.ALREADY_PROVISIONED, "locked"))
                )
            else:
                reply = PressReply(f"{event.seq:06d}", 5)
                if self.stale is not None:
                    self.outbox.append(self.stale)
                self.outbox.append(self.noise + self.device.send(event, reply))

    def read(self) -> bytes:
        return self.outbox.popleft() if self.outbox else b""


def test_client_gets_replies_and_skips_noise_and_stale_answers() -> None:
    token = FakeToken()
    client = TokenClient(token.read, token.write)
    assert client.press() == PressReply("000000", 5)
    token.noise = b"\xde\xad\x00\x17garbage\x00"
    token.stale = encode_frame(Frame(seq=0, command=0x82, payload=b"\x01\x39\x00\x01"))
    assert client.press() == PressReply("000001", 5)


def test_client_raises_on_refusal_and_silence() -> None:
    token = FakeToken()
    client = TokenClient(token.read, token.write)
    with pytest.raises(TokenRefused) as refused:
        client.call(ProvisionRequest(seed=b"\x01" * 20))
    assert refused.value.code is ErrorCode.ALREADY_PROVISIONED
    assert "already_provisioned" in str(refused.value) and "01" * 20 not in str(refused.value)
    token.silent = True
    with pytest.raises(NoReply):
        client.press()
    token.silent = False
    assert client.press().code == f"{client.connection._next_seq - 1:06d}"


def test_client_gives_up_on_endless_junk() -> None:
    client = TokenClient(lambda: b"\x01" * 1000, lambda data: None, max_bytes=10_000)
    with pytest.raises(RemoteProtocolError):
        client.call(InfoRequest())


def test_pyserial_reader_asks_for_what_is_waiting() -> None:
    class Port:
        in_waiting = 0
        asked: list[int] = []

        def read(self, n: int) -> bytes:
            self.asked.append(n)
            return b"x" * n

    port = Port()
    read = pyserial_reader(port)
    assert read() == b"x"
    port.in_waiting = 7
    assert read() == b"x" * 7
    assert port.asked == [1, 7]


def test_age_request_travels_with_its_number() -> None:
    host, device = HostConnection(), DeviceConnection()
    _, data = host.send(AgeRequest(span_ms=365 * 86_400_000))
    device.receive_data(data)
    event = device.next_event()
    assert isinstance(event, RequestReceived) and event.request == AgeRequest(31_536_000_000)

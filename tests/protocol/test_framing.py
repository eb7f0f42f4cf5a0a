"""The frame buffer finds exactly the intact frames in any stream, and stays bounded."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FrameBuffer, encode_frame
from protocol.codec import Frame
from protocol.framing import MAX_ENCODED, MAX_PENDING


def _frames(n: int, rng: random.Random) -> list[Frame]:
    return [
        Frame(
            seq=i % 256,
            command=rng.choice([1, 2, 0x82, 0x16]),
            payload=rng.randbytes(rng.randint(0, 60)),
        )
        for i in range(n)
    ]


def _drain(buffer: FrameBuffer) -> list[Frame]:
    return list(buffer)


def test_glued_frames_come_out_in_order() -> None:
    frames = _frames(50, random.Random(1))
    buffer = FrameBuffer()
    buffer.feed(b"".join(encode_frame(f) for f in frames))
    assert _drain(buffer) == frames
    assert buffer.dropped.total == 0 and buffer.buffered == 0


def test_split_at_every_byte_boundary() -> None:
    frames = _frames(3, random.Random(2))
    wire = b"".join(encode_frame(f) for f in frames)
    for cut in range(len(wire) + 1):
        buffer = FrameBuffer()
        buffer.feed(wire[:cut])
        got = _drain(buffer)
        buffer.feed(wire[cut:])
        got += _drain(buffer)
        assert got == frames, cut
    one_byte = FrameBuffer()
    got = []
    for byte in wire:
        one_byte.feed(bytes([byte]))
        got += _drain(one_byte)
    assert got == frames


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=4, max_size=4), st.integers(0, 2**32))
def test_garbage_between_frames_never_loses_an_intact_frame(
    garbage: list[bytes], seed: int
) -> None:
    rng = random.Random(seed)
    frames = _frames(3, rng)
    # Garbage ends with a delimiter so it cannot run into the next frame's first block.
    wire = b"".join(g + b"\x00" + encode_frame(f) for g, f in zip(garbage, frames, strict=False))
    wire += garbage[3]
    buffer = FrameBuffer()
    buffer.feed(wire)
    got = _drain(buffer)
    # Random garbage may itself form a valid frame only with a 1 in 65536 CRC match and a
    # valid header; the intact frames must all be there, in order.
    it = iter(got)
    assert all(any(f == g for g in it) for f in frames)


def test_single_bit_flips_are_dropped_not_delivered() -> None:
    rng = random.Random(3)
    frame = _frames(1, rng)[0]
    wire = encode_frame(frame)
    for bit in range((len(wire) - 1) * 8):  # every bit of the frame, not the delimiter
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        buffer = FrameBuffer()
        buffer.feed(bytes(flipped) + encode_frame(frame))
        got = _drain(buffer)
        assert got[-1] == frame, bit  # the next good frame always arrives
        assert all(g == frame for g in got), bit  # a corrupted frame is never delivered
        if len(got) == 1:
            assert buffer.dropped.total >= 1


def test_truncated_frames_are_counted() -> None:
    rng = random.Random(4)
    frame = _frames(1, rng)[0]
    wire = encode_frame(frame)
    for cut in range(1, len(wire) - 1):
        buffer = FrameBuffer()
        buffer.feed(wire[:cut] + b"\x00" + wire)
        assert _drain(buffer) == [frame], cut
        assert buffer.dropped.total == 1, cut


def test_stream_without_delimiter_stays_under_the_cap() -> None:
    buffer = FrameBuffer()
    chunk = bytes(b | 1 for b in os.urandom(65536))  # no 0x00 anywhere
    for _ in range(64):  # 4 MiB
        buffer.feed(chunk)
        assert buffer.buffered <= MAX_ENCODED
    assert buffer.dropped.oversize == 1
    # and the next real frame after the next delimiter is found
    frame = Frame(seq=7, command=2, payload=b"")
    buffer.feed(b"\x00" + encode_frame(frame))
    assert _drain(buffer) == [frame]


def test_one_huge_chunk_is_handled_without_keeping_it() -> None:
    buffer = FrameBuffer()
    frame = Frame(seq=1, command=1, payload=b"abc")
    buffer.feed(b"\x01" * 3_000_000 + b"\x00" + encode_frame(frame) + b"\x02" * 3_000_000)
    assert _drain(buffer) == [frame]
    assert buffer.buffered == 0  # the tail is over-long: discarded, not held
    assert buffer.dropped.oversize == 2


def test_uncollected_frames_are_capped() -> None:
    buffer = FrameBuffer()
    frames = [Frame(seq=i % 256, command=1, payload=b"") for i in range(MAX_PENDING + 10)]
    buffer.feed(b"".join(encode_frame(f) for f in frames))
    assert _drain(buffer) == frames[10:]
    assert buffer.dropped.overflow == 10


def test_bad_cobs_is_counted() -> None:
    buffer = FrameBuffer()
    buffer.feed(b"\x05\x01\x00")  # the code byte promises more than there is
    assert _drain(buffer) == []
    assert buffer.dropped.bad_cobs == 1


def test_idle_delimiters_are_not_errors() -> None:
    buffer = FrameBuffer()
    buffer.feed(b"\x00" * 100)
    assert _drain(buffer) == [] and buffer.dropped.total == 0

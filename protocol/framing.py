"""COBS framing: frames on the wire, and a buffer that finds them in any byte stream.

On the wire each frame is COBS-encoded (so it holds no 0x00) and followed by one 0x00.
A receiver that joins mid-stream, or sees noise, resynchronizes at the next 0x00.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import Final

from cobs import cobs

from protocol.codec import MAX_FRAME, Frame, FrameError, decode_frame_body, encode_frame_body

DELIMITER: Final = b"\x00"
# COBS adds one byte per 254 bytes of data, plus one.
MAX_ENCODED: Final = MAX_FRAME + MAX_FRAME // 254 + 1
# Frames decoded but not yet taken; past this the oldest are dropped (and counted).
MAX_PENDING: Final = 64


def encode_frame(frame: Frame) -> bytes:
    """A frame as it goes on the wire: COBS-encoded, then the 0x00 delimiter."""
    return bytes(cobs.encode(encode_frame_body(frame))) + DELIMITER


@dataclass
class DropStats:
    """What a FrameBuffer threw away, by reason. Never raised: only counted."""

    oversize: int = 0  # a run longer than a frame can be
    bad_cobs: int = 0
    truncated: int = 0  # shorter than a header and CRC
    bad_crc: int = 0
    bad_version: int = 0
    bad_length: int = 0  # length field disagrees with the frame
    overflow: int = 0  # decoded frames nobody took, past MAX_PENDING

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


class FrameBuffer:
    """Feed it any chunks of bytes; take complete, checked frames out, in order.

    Memory is bounded: at most MAX_ENCODED bytes of an unfinished frame and MAX_PENDING
    decoded frames are held, whatever the peer sends.
    """

    def __init__(self) -> None:
        self._partial = bytearray()
        self._discarding = False  # inside an over-long run: skip to the next delimiter
        self._frames: deque[Frame] = deque()
        self.dropped = DropStats()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        start = 0
        while (end := data.find(0, start)) >= 0:
            self._append(data, start, end)
            self._finish()
            start = end + 1
        self._append(data, start, len(data))

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        return self._frames.popleft() if self._frames else None

    def __iter__(self) -> FrameBuffer:
        return self

    def __next__(self) -> Frame:
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._partial)

    def _append(self, data: bytes, start: int, end: int) -> None:
        if self._discarding or start == end:
            return
        if len(self._partial) + (end - start) > MAX_ENCODED:
            self._partial.clear()
            self._discarding = True
            self.dropped.oversize += 1
            return
        self._partial += data[start:end]

    def _finish(self) -> None:
        if self._discarding:
            self._discarding = False
            return
        if not self._partial:
            return  # back-to-back delimiters: idle filler, not an error
        encoded = bytes(self._partial)
        self._partial.clear()
        try:
            body = cobs.decode(encoded)
        except cobs.DecodeError:
            self.dropped.bad_cobs += 1
            return
        try:
            frame = decode_frame_body(body)
        except FrameError as exc:
            setattr(self.dropped, exc.reason, getattr(self.dropped, exc.reason) + 1)
            return
        if len(self._frames) >= MAX_PENDING:
            self._frames.popleft()
            self.dropped.overflow += 1
        self._frames.append(frame)

"""The foblab token wire protocol, version 1: sans-I/O framing, codec and connections.

Nothing here opens a port, starts a thread or reads a clock. See docs/protocol.md.
"""

from protocol.codec import MAX_FRAME, MAX_PAYLOAD, Frame, crc16
from protocol.connection import (
    NEED_DATA,
    BadRequest,
    DeviceConnection,
    HostConnection,
    NeedData,
    NoReply,
    ReplyReceived,
    RequestReceived,
    TokenClient,
    TokenRefused,
    UnexpectedReply,
    pyserial_reader,
)
from protocol.errors import LocalProtocolError, PayloadError, ProtocolError, RemoteProtocolError
from protocol.framing import DropStats, FrameBuffer, encode_frame
from protocol.messages import *  # noqa: F403

__all__ = [
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "NEED_DATA",
    "BadRequest",
    "DeviceConnection",
    "DropStats",
    "Frame",
    "FrameBuffer",
    "HostConnection",
    "LocalProtocolError",
    "NeedData",
    "NoReply",
    "PayloadError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplyReceived",
    "RequestReceived",
    "TokenClient",
    "TokenRefused",
    "UnexpectedReply",
    "crc16",
    "encode_frame",
    "pyserial_reader",
]

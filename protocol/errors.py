"""The two kinds of protocol error (after h11): we misused the API, or the peer broke it."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error `protocol` raises."""


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol cannot express (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


class PayloadError(RemoteProtocolError):
    """A frame arrived intact but its payload does not fit its command.

    `error_code` is the `ErrorCode` a device answers with (BAD_LENGTH, BAD_ARGUMENT or
    UNKNOWN_COMMAND).
    """

    def __init__(self, error_code: int, detail: str) -> None:
        super().__init__(detail)
        self.error_code = error_code
        self.detail = detail

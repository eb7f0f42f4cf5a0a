"""Every refusal the validator gives, as one tree of exceptions.

Each class carries its stable machine `code` and its HTTP `status`; the HTTP daemon answers
`{"error": code, "message": message}` with that status, and other doors (AWS, RADIUS) map
the code to their own answers. Messages are one line and never hold a code or a secret.

Failures of the machinery itself (a configuration that cannot be used, a key file that
cannot be read, a database that fails) are not refusals and are not in this tree.
"""

from __future__ import annotations

from collections.abc import Mapping


class ValidatorError(Exception):
    """Base of every refusal: `code` and `status` are the class's, `message` the instance's.
    `headers` are extra HTTP headers of the answer (a 401's challenge)."""

    code = "validator_error"
    status = 400

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


# -- the request itself --------------------------------------------------------------------

class InvalidRequest(ValidatorError):
    """A body, query or path that breaks the API's schema or its rules."""

    code = "invalid_request"


class InvalidJson(InvalidRequest):
    code = "invalid_json"


class Disconnected(InvalidRequest):
    """The client went away before its body arrived."""

    code = "disconnected"


class BodyTooLarge(ValidatorError):
    code = "body_too_large"
    status = 413


class UnsupportedMediaType(ValidatorError):
    code = "unsupported_media_type"
    status = 415


class Unauthorized(ValidatorError):
    """No API key, or an unknown one."""

    code = "unauthorized"
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ValidatorError):
    """A known key whose role may not call this operation."""

    code = "forbidden"
    status = 403


# -- tokens and users ------------------------------------------------------------------------

class InvalidParameter(ValidatorError):
    """A malformed argument: a bad serial, digits, hash, period or secret."""

    code = "invalid_parameter"


class BadSecret(InvalidParameter):
    """A secret that is not valid base32/hex, or outside the length every way in allows
    (see `Validator.min_secret_bytes`)."""

    code = "bad_secret"


class InvalidUser(ValidatorError):
    """A user name outside 1-64 (configurable) of letters, digits and `+=,.@_-`."""

    code = "invalid_user"


class SeedFileError(ValidatorError):
    """A seed file was refused; nothing from it was imported. The message names the key."""

    code = "invalid_seed_file"


class SeedFileLimit(SeedFileError):
    """A seed file past one of the import limits (size, depth, elements, keys, field
    length); the message names the limit and its config key."""

    code = "seed_file_limit"


class InvalidAuthenticationCode(ValidatorError):
    """Enable or resync refused: `reason` says why (invalid_code, replayed, locked), and
    `retry_after` how long to wait when locked."""

    code = "invalid_authentication_code"

    def __init__(self, message: str, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class UnknownSerial(ValidatorError):
    code = "unknown_serial"
    status = 404


class NotAssigned(ValidatorError):
    """Deactivate or resync of a token that is not assigned to the named user."""

    code = "not_assigned"
    status = 404


class DuplicateSerial(ValidatorError):
    """Serials already registered, or (`in_file`) given more than once in one seed file:
    `serials` names them. Raised by the store itself, so there is one class for it."""

    code = "duplicate_serial"
    status = 409

    def __init__(self, serials: list[str], *, in_file: bool = False) -> None:
        self.serials = serials
        self.in_file = in_file
        what = "repeated in the file" if in_file else "already registered"
        super().__init__(f"serial(s) {what}: {', '.join(serials)}")


class AlreadyAssigned(ValidatorError):
    """Enable of a token that is assigned (to this or another user)."""

    code = "already_assigned"
    status = 409


class DeviceLimit(ValidatorError):
    code = "device_limit"
    status = 409


class DeleteConflict(ValidatorError):
    """Delete of a token still assigned to a user: deactivate it first."""

    code = "delete_conflict"
    status = 409


class Conflict(ValidatorError):
    """A write kept losing its compare-and-set to concurrent writers; try again."""

    code = "conflict"
    status = 503


class ReloadFailed(ValidatorError):
    """A reload that changed nothing: the config or the keys file has a problem (the
    message says which), or this process cannot reload (not started by `serve`)."""

    code = "reload_failed"
    status = 409


class DoorDisabled(ValidatorError):
    """A page or request of a door that is not running (the AWS endpoint without [aws])."""

    code = "door_disabled"
    status = 404


# -- enrollment stations ---------------------------------------------------------------------

class UnknownStation(ValidatorError):
    code = "unknown_station"
    status = 404


class StationError(ValidatorError):
    """A station request failed because of the port or the token on it; the message names
    the station."""

    code = "station_error"
    status = 502


class StationUnavailable(StationError):
    """The station's port cannot be opened or used."""

    code = "station_unavailable"
    status = 503


class TokenTimeout(StationError):
    """The token on the station did not answer."""

    code = "token_timeout"
    status = 504


class TokenGarbage(StationError):
    """The token answered, but not with valid protocol."""

    code = "token_garbage"
    status = 502


class TokenClockStuck(StationError):
    """The token's step did not advance while two codes were read (a frozen clock)."""

    code = "token_clock_stuck"
    status = 504


class TokenDeclined(StationError):
    """The token refused a command (an ERROR reply); named apart from the protocol's own
    `TokenRefused`, which is what the station translates into this."""

    code = "token_refused"
    status = 409


class TokenBatteryDead(StationError):
    code = "token_battery_dead"
    status = 409


class TokenBlank(StationError):
    """A blank token, and the request did not allow provisioning it."""

    code = "token_blank"
    status = 409


class TokenNotRegistered(StationError):
    """A provisioned token whose seed was never imported."""

    code = "token_not_registered"
    status = 404


def refusals() -> list[type[ValidatorError]]:
    """Every class of the tree (the tests check codes are unique and statuses are 4xx/5xx)."""
    out: list[type[ValidatorError]] = []
    todo: list[type[ValidatorError]] = [ValidatorError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out

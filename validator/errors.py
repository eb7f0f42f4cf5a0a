"""The validator's exceptions, each with a stable machine `code` that the HTTP daemon and
the AWS emulation map to their own statuses. Messages never hold a code or a secret."""

from __future__ import annotations


class ValidatorError(Exception):
    """Base of every refusal the service raises."""

    code = "validator_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(ValidatorError):
    """A malformed argument: a bad serial, digits, algorithm, period or secret."""

    code = "invalid_parameter"


class InvalidUser(ValidatorError):
    """A user name outside 1-64 (configurable) of letters, digits and `+=,.@_-`."""

    code = "invalid_user"


class UnknownSerial(ValidatorError):
    code = "unknown_serial"


class BadSecret(InvalidParameter):
    """A secret outside the length every way in allows (see `Validator.min_secret_bytes`)."""

    code = "bad_secret"


class DuplicateSerial(ValidatorError):
    """Serials already registered, or (`in_file`) given more than once in one seed file."""

    code = "duplicate_serial"

    def __init__(self, serials: list[str], *, in_file: bool = False) -> None:
        self.serials = serials
        self.in_file = in_file
        what = "repeated in the file" if in_file else "already registered"
        super().__init__(f"serial(s) {what}: {', '.join(serials)}")


class AlreadyAssigned(ValidatorError):
    """Enable of a token that is assigned (to this or another user)."""

    code = "already_assigned"


class NotAssigned(ValidatorError):
    """Deactivate or resync of a token that is not assigned to the named user."""

    code = "not_assigned"


class DeviceLimit(ValidatorError):
    code = "device_limit"


class DeleteConflict(ValidatorError):
    """Delete of a token still assigned to a user: deactivate it first."""

    code = "delete_conflict"


class InvalidAuthenticationCode(ValidatorError):
    """Enable or resync refused: `reason` says why (invalid_code, replayed, locked), and
    `retry_after` how long to wait when locked."""

    code = "invalid_authentication_code"

    def __init__(self, message: str, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Conflict(ValidatorError):
    """A write kept losing its compare-and-set to concurrent writers; try again."""

    code = "conflict"


class SeedFileError(ValidatorError):
    """A seed file was refused; nothing from it was imported. The message names the key."""

    code = "invalid_seed_file"


class SeedFileLimit(SeedFileError):
    """A seed file past one of the import limits (size, depth, elements, keys, field
    length); the message names the limit and its config key."""

    code = "seed_file_limit"

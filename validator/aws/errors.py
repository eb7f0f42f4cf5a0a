"""AWS errors as the query protocol answers them: a code, an HTTP status, a fault side.

Every refusal the endpoint gives is an `AwsError`; the endpoint turns it into the
`<ErrorResponse>` XML. Messages never hold an authentication code, a seed or a secret key.
"""

from __future__ import annotations


class AwsError(Exception):
    """One AWS error answer: `code` (e.g. `NoSuchEntity`), `status` (e.g. 404) and `sender`
    (True for `<Type>Sender</Type>`, False for `Receiver`)."""

    def __init__(self, code: str, message: str, status: int = 400, *,
                 sender: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.sender = sender


def validation_error(member: str, constraint: str) -> AwsError:
    """IAM/STS's `ValidationError` in AWS's wording. The offending value is left out on
    purpose: it may be an authentication code."""
    return AwsError("ValidationError", f"1 validation error detected: Value at '{member}' "
                    f"failed to satisfy constraint: {constraint}", 400)


def missing(member: str) -> AwsError:
    return AwsError("ValidationError", f"1 validation error detected: Value null at "
                    f"'{member}' failed to satisfy constraint: Member must not be null", 400)


def no_such_entity(message: str) -> AwsError:
    return AwsError("NoSuchEntity", message, 404)


def access_denied_mfa() -> AwsError:
    return AwsError("AccessDenied",
                    "MultiFactorAuthentication failed with invalid MFA one time pass code.", 403)


def service_failure() -> AwsError:
    return AwsError("ServiceFailure", "The request processing has failed because of an "
                    "unknown error, exception or failure.", 500, sender=False)


def service_unavailable() -> AwsError:
    """The database does not answer now (a 503, which clients retry)."""
    return AwsError("ServiceUnavailable", "The request has failed due to a temporary "
                    "failure of the server.", 503, sender=False)

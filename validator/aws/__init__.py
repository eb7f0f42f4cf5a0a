"""The AWS-compatible MFA endpoint: IAM and STS over the query protocol, SigV4-signed.

`AwsEndpoint(validator, settings).handle(request)` answers one Starlette request; the
daemon routes `/aws` to it. Its tables live in the validator's database, SQLite or
PostgreSQL (`validator.aws.store`). See docs/aws.md.
"""

from validator.aws.endpoint import AwsEndpoint

__all__ = ["AwsEndpoint"]

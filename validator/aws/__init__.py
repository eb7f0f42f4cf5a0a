"""The AWS-compatible MFA endpoint: IAM and STS over the query protocol, SigV4-signed.

`AwsEndpoint(validator, db_path, settings).handle(request)` answers one Starlette request;
the daemon routes `/aws` to it. See docs/aws.md.
"""

from validator.aws.endpoint import AwsEndpoint

__all__ = ["AwsEndpoint"]

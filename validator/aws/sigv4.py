"""Server-side AWS Signature Version 4 verification (header form), stdlib only.

The client (botocore, the aws CLI, any SDK) signs a canonical form of the request; this
module rebuilds that canonical form from what arrived, derives the signing key from the
secret access key and the credential scope, and compares the signatures in constant time.
See https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html.

Pure: the caller passes the request pieces, a secret lookup and `now`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from validator.aws.errors import AwsError

ALGORITHM = "AWS4-HMAC-SHA256"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_SERVICES = frozenset({"iam", "sts"})
_SCOPE_DATE = re.compile(r"\d{8}")


@dataclass(frozen=True, slots=True)
class Request:
    """What the signature covers: the method, the path as sent (still percent-encoded),
    the raw query string, the headers (names in any case, repeated names allowed) and the
    body bytes."""

    method: str
    raw_path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parsed `Authorization` header."""

    access_key_id: str
    date: str  # scope date, YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def _incomplete(message: str) -> AwsError:
    return AwsError("IncompleteSignature", message, 400)


def _mismatch(message: str | None = None) -> AwsError:
    return AwsError("SignatureDoesNotMatch", message or (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service "
        "documentation for details."), 403)


def parse_authorization(value: str) -> Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Unsupported AWS 'algorithm': '{algorithm[:40]}'; only "
                          f"{ALGORITHM} (Signature Version 4) is accepted")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, val = part.strip().partition("=")
        if eq:
            fields[key] = val
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in fields:
            raise _incomplete(f"Authorization header requires '{required}' parameter. "
                              "Authorization=" + ALGORITHM + " ...")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not _SCOPE_DATE.fullmatch(scope[1]) \
            or not scope[0] or not scope[2]:
        raise _incomplete("Credential should be of the form "
                          "ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request")
    if scope[3] not in _SERVICES:
        raise _incomplete(f"Credential should be scoped to a valid service ('iam' or 'sts'), "
                          f"not '{scope[3][:40]}'")
    signed = tuple(fields["SignedHeaders"].split(";"))
    if "host" not in signed:
        raise _incomplete("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    if list(signed) != sorted(signed) or any(h != h.lower() or not h for h in signed):
        raise _incomplete("SignedHeaders must be lower-case header names, sorted, "
                          "separated by ';'")
    return Authorization(scope[0], scope[1], scope[2], scope[3], signed,
                         fields["Signature"])


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4 with empty segments dropped too, and a trailing slash kept only when
    # the path ends with one: exactly what botocore does to a path before signing
    # (botocore.utils.remove_dot_segments), so a botocore-signed path verifies.
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    return "/" + "/".join(out) + ("/" if out and path.endswith("/") else "")


def canonical_uri(raw_path: str) -> str:
    # Non-S3 services sign the already-encoded path encoded once more.
    return quote(_remove_dot_segments(raw_path or "/"), safe="/~")


def canonical_query(query: str) -> str:
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(request: Request, signed_headers: Sequence[str],
                      payload_hash: str) -> str:
    lines = []
    for name in signed_headers:
        values = request.header(name)
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "\n".join([
        request.method.upper(), canonical_uri(request.raw_path), canonical_query(request.query),
        "".join(lines), ";".join(signed_headers), payload_hash])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.digest(("AWS4" + secret).encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def request_time(request: Request) -> tuple[str, float]:
    """The signed request time from `X-Amz-Date` (or `Date` in the same basic ISO form)."""
    values = request.header("x-amz-date") or request.header("date")
    if not values:
        raise _incomplete("Authorization header requires existence of either a "
                          "'X-Amz-Date' or a 'Date' header.")
    try:
        moment = datetime.strptime(values[0].strip(), _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete("X-Amz-Date must be in the ISO 8601 basic format "
                          "YYYYMMDD'T'HHMMSS'Z'") from None
    return values[0].strip(), moment.timestamp()


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(_AMZ_DATE)


def verify(request: Request, secret_for: Callable[[Authorization], str], now: float,
           max_skew: float = 300.0) -> Authorization:
    """Check the request's signature; answer its parsed `Authorization` or raise AwsError.

    `secret_for` answers the secret access key of the credential (raising
    `InvalidClientTokenId` for an unknown one)."""
    headers = request.header("authorization")
    if not headers:
        raise AwsError("MissingAuthenticationToken", "Request is missing Authentication Token",
                       403)
    auth = parse_authorization(headers[0])
    amz_date, signed_at = request_time(request)
    if signed_at < now - max_skew:
        raise _mismatch(f"Signature expired: {amz_date} is now earlier than "
                        f"{_stamp(now - max_skew)} ({_stamp(now)} - {max_skew:g} s.)")
    if signed_at > now + max_skew:
        raise _mismatch(f"Signature not yet current: {amz_date} is still later than "
                        f"{_stamp(now + max_skew)} ({_stamp(now)} + {max_skew:g} s.)")
    if auth.date != amz_date[:8]:
        raise _mismatch(f"Credential should be scoped to a valid date, '{amz_date[:8]}', "
                        f"not '{auth.date}'")
    secret = secret_for(auth)
    body_hash = hashlib.sha256(request.body).hexdigest()
    claimed = request.header("x-amz-content-sha256")
    if claimed and claimed[0] != body_hash:
        # The body changed after signing (or the client lied about it).
        raise _mismatch("The provided 'x-amz-content-sha256' header does not match what "
                        "was computed.")
    canonical = canonical_request(request, auth.signed_headers, body_hash)
    key = signing_key(secret, auth.date, auth.region, auth.service)
    expected = hmac.new(key, string_to_sign(amz_date, auth.scope, canonical).encode(),
                        hashlib.sha256).hexdigest()
    given = auth.signature.strip().lower().encode("utf-8", "replace")
    if not hmac.compare_digest(expected.encode("ascii"), given):
        raise _mismatch()
    return auth

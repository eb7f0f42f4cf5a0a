"""The query protocol's XML answers, in AWS's exact shapes.

A result is a list of `(name, value)` members; a value is a string (escaped here), None
(member left out), or a nested member list. A list member is written as a nested list of
`("member", ...)` pairs, as the query protocol does.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from xml.sax.saxutils import escape

# Characters XML 1.0 does not allow at all, escaped or not. They can only come from a
# request (an unknown Action echoed in InvalidAction); replaced, so the answer still parses.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

Members = list[tuple[str, object]]

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def iso8601(unix_time: float) -> str:
    """AWS's timestamp form, e.g. `2024-05-01T12:00:00Z` (botocore parses it as UTC)."""
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def blob(data: bytes) -> str:
    """A blob member: base64, as AWS sends `Base32StringSeed` and `QRCodePNG`."""
    return base64.b64encode(data).decode("ascii")


def boolean(value: bool) -> str:
    return "true" if value else "false"


def _text(value: object) -> str:
    return escape(_NOT_XML.sub("\ufffd", str(value)))


def _members(members: Members) -> str:
    out: list[str] = []
    for name, value in members:
        if value is None:
            continue
        if isinstance(value, list):
            out.append(f"<{name}>{_members(value)}</{name}>")
        else:
            out.append(f"<{name}>{_text(value)}</{name}>")
    return "".join(out)


def response(action: str, namespace: str, request_id: str,
             result: Members | None = None) -> bytes:
    """`<ActionResponse><ActionResult>...</ActionResult><ResponseMetadata>...`; actions
    without output (EnableMFADevice, ...) carry the metadata only, as AWS's do."""
    body = f'<{action}Response xmlns="{namespace}">'
    if result is not None:
        body += f"<{action}Result>{_members(result)}</{action}Result>"
    body += (f"<ResponseMetadata><RequestId>{_text(request_id)}</RequestId>"
             f"</ResponseMetadata></{action}Response>")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode("utf-8")


def error(namespace: str, request_id: str, code: str, message: str, *,
          sender: bool = True) -> bytes:
    body = (f'<ErrorResponse xmlns="{namespace}"><Error>'
            f"<Type>{'Sender' if sender else 'Receiver'}</Type>"
            f"<Code>{_text(code)}</Code><Message>{_text(message)}</Message></Error>"
            f"<RequestId>{_text(request_id)}</RequestId></ErrorResponse>")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode("utf-8")

"""Signature Version 4: requests signed by botocore's own signer verify; anything else is
refused with AWS's error. Pure checks pass `now`; end-to-end ones go through the daemon."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from aws_helpers import aws_error, error_of, signed_post
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from starlette.applications import Starlette
from starlette.routing import Route

from validator.aws import AwsEndpoint, sigv4
from validator.aws.errors import AwsError
from validator.service import Validator

KEY = ("AKIAEXAMPLEEXAMPLE12", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
BODY = b"Action=ListMFADevices&Version=2010-05-08&UserName=alice"


def _botocore_signed(url: str, body: bytes = BODY, service: str = "iam",
                     key: tuple[str, str] = KEY, token: str | None = None
                     ) -> tuple[sigv4.Request, float]:
    from urllib.parse import urlsplit

    request = AWSRequest(method="POST", url=url, data=body, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    signed_at = time.time()
    SigV4Auth(Credentials(*key, token), service, "eu-west-3").add_auth(request)
    parts = urlsplit(request.url)
    headers = [(k, v) for k, v in request.headers.items()]
    headers.append(("Host", parts.netloc))  # the HTTP client adds it as signed
    return sigv4.Request("POST", parts.path, parts.query, headers, body), signed_at


def _secret(auth: sigv4.Authorization) -> str:
    if auth.access_key_id != KEY[0]:
        raise AwsError("InvalidClientTokenId", "unknown", 403)
    return KEY[1]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8700/aws", "http://127.0.0.1:8700/aws/", "http://localhost/aws",
    "http://127.0.0.1:8700/aws?b=2&a=1", "http://127.0.0.1:8700/aws?x=%20y%2F&a=",
    "http://127.0.0.1:8700/a%20b/./c/../aws"])
@pytest.mark.parametrize("service", ["iam", "sts"])
def test_botocore_signatures_verify(url: str, service: str) -> None:
    request, signed_at = _botocore_signed(url, service=service)
    auth = sigv4.verify(request, _secret, now=signed_at)
    assert (auth.access_key_id, auth.region, auth.service) == (KEY[0], "eu-west-3", service)


def _refused(request: sigv4.Request, now: float) -> tuple[str, int]:
    with pytest.raises(AwsError) as exc:
        sigv4.verify(request, _secret, now=now)
    return exc.value.code, exc.value.status


def test_clock_skew_limit() -> None:
    request, t = _botocore_signed("http://127.0.0.1/aws")
    sigv4.verify(request, _secret, now=t + 299)
    sigv4.verify(request, _secret, now=t - 299)
    assert _refused(request, t + 302) == ("SignatureDoesNotMatch", 403)
    assert _refused(request, t - 302) == ("SignatureDoesNotMatch", 403)
    sigv4.verify(request, _secret, now=t + 590, max_skew=600)


def test_any_change_breaks_the_signature() -> None:
    request, t = _botocore_signed("http://127.0.0.1/aws")
    changes = [
        dict(body=BODY.replace(b"alice", b"mallory")),
        dict(method="GET"),
        dict(raw_path="/aws/"),
        dict(query="a=1"),
        dict(headers=[(k, v + "x" if k.lower() == "host" else v) for k, v in request.headers]),
        dict(headers=[(k, v[:-2] + ("1" if v[-2] == "0" else "0") + "Z"
                       if k.lower() == "x-amz-date" else v) for k, v in request.headers]),
    ]
    for change in changes:
        fields = {"method": request.method, "raw_path": request.raw_path,
                  "query": request.query, "headers": request.headers, "body": request.body,
                  **change}
        assert _refused(sigv4.Request(**fields), t) == ("SignatureDoesNotMatch", 403), change
    wrong_secret, t = _botocore_signed("http://127.0.0.1/aws", key=(KEY[0], "x" * 40))
    assert _refused(wrong_secret, t) == ("SignatureDoesNotMatch", 403)
    unknown, t = _botocore_signed("http://127.0.0.1/aws", key=("AKIANOBODYNOBODY1234", KEY[1]))
    assert _refused(unknown, t) == ("InvalidClientTokenId", 403)


@pytest.mark.parametrize("authorization,code", [
    (None, "MissingAuthenticationToken"),
    ("AWS3-HMAC-SHA256 Credential=a/20240101/us-east-1/iam/aws4_request", "IncompleteSignature"),
    ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/iam/aws4_request, "
     "SignedHeaders=host;x-amz-date", "IncompleteSignature"),
    ("AWS4-HMAC-SHA256 Credential=A/2024/us-east-1/iam/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=00", "IncompleteSignature"),
    ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=00", "IncompleteSignature"),
    ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/iam/aws4_request, "
     "SignedHeaders=x-amz-date, Signature=00", "IncompleteSignature"),
    ("AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/iam/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=é", "SignatureDoesNotMatch"),
])
def test_malformed_authorization(authorization: str | None, code: str) -> None:
    headers = [("Host", "h"), ("X-Amz-Date", "20240101T000000Z")]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    request = sigv4.Request("POST", "/aws", "", headers, BODY)
    t = 1_704_067_200.0  # 2024-01-01T00:00:00Z
    with pytest.raises(AwsError) as exc:
        sigv4.verify(request, lambda auth: KEY[1], now=t)
    assert exc.value.code == code and exc.value.status in (400, 403)


# -- through the daemon ------------------------------------------------------------------

def test_unknown_key_and_bad_secret_refused(daemon) -> None:
    with pytest.raises(ClientError) as exc:
        daemon.client("iam", key=("AKIAUNKNOWNUNKNOWN12", "s" * 40)).list_mfa_devices()
    assert error_of(exc) == ("InvalidClientTokenId", 403,
                             "The security token included in the request is invalid.")
    with pytest.raises(ClientError) as exc:
        daemon.client("sts", key=(daemon.access_key_id, "s" * 40)).get_session_token()
    assert error_of(exc)[:2] == ("SignatureDoesNotMatch", 403)


def test_unsigned_and_tampered_requests_refused(daemon) -> None:
    import httpx

    with httpx.Client(trust_env=False) as client:
        response = client.post(daemon.url, content=BODY, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
    assert aws_error(response) == ("MissingAuthenticationToken", 403)
    key = (daemon.access_key_id, daemon.secret_access_key)
    assert signed_post(daemon.url, BODY, key).status_code == 200
    tampered = signed_post(daemon.url, BODY, key, tamper=BODY.replace(b"alice", b"mallo"))
    assert aws_error(tampered) == ("SignatureDoesNotMatch", 403)


def test_deleted_key_is_refused(daemon) -> None:
    from validator.aws.store import SQLiteAwsStore
    from validator.keys import open_box
    from validator.store import SQLiteStore

    store = SQLiteAwsStore(daemon.db, open_box(SQLiteStore(daemon.db), daemon.key_file,
                                              settle=False))
    try:
        akid, secret = store.create_key(time.time())
        assert daemon.client("iam", key=(akid, secret)).list_mfa_devices()["MFADevices"] \
            is not None
        assert store.delete_key(akid) == 0  # deleted; it had issued no session
    finally:
        store.close()
    with pytest.raises(ClientError) as exc:
        daemon.client("iam", key=(akid, secret)).list_mfa_devices()
    assert error_of(exc)[:2] == ("InvalidClientTokenId", 403)


def _post(app, body: bytes, headers: dict[str, str] | None = None):
    """One request to `app` in-process (httpx's ASGI transport, no server)."""
    import asyncio

    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            return await client.post("/aws", content=body, headers=headers or {})

    return asyncio.run(go())


def _app(tmp_path: Path, settings: dict, clock=time.time):
    validator = Validator.open(tmp_path / "v.db", tmp_path / "v.key")
    endpoint = AwsEndpoint(validator, settings, clock=clock)
    return Starlette(routes=[Route("/aws", endpoint.handle, methods=["POST"])]), validator


def test_lab_switch_accepts_any_signature_and_says_so(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="foblab.aws"):
        app, validator = _app(tmp_path, {"allow_any_signature": True})
    assert any("ANY SIGNATURE" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    try:
        response = _post(app, BODY, {"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200
        assert b"<MFADevices></MFADevices>" in response.content
    finally:
        validator.close()


def test_lab_switch_is_off_by_default(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="foblab.aws"):
        app, validator = _app(tmp_path, {})
    assert not caplog.records
    try:
        response = _post(app, BODY)
        assert aws_error(response) == ("MissingAuthenticationToken", 403)
    finally:
        validator.close()


def test_an_echoed_action_cannot_break_the_xml_or_the_log(tmp_path: Path, caplog) -> None:
    """An unknown Action is echoed in InvalidAction's message and logged, also before (and
    without) a valid signature: control characters must neither make the answer unparsable
    XML nor write a forged line into the daemon's log."""
    import xml.etree.ElementTree as ET
    from urllib.parse import quote

    action = "Create\x01User\n2031-01-01 00:00:00 foblab.aws WARNING forged"
    body = f"Action={quote(action)}&Version=2010-05-08".encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    codes = []
    for settings in ({"allow_any_signature": True}, {}):
        app, validator = _app(tmp_path, settings)
        try:
            with caplog.at_level(logging.INFO, logger="foblab.aws"):
                response = _post(app, body, form)
        finally:
            validator.close()
        ET.fromstring(response.content)  # well-formed
        codes.append(aws_error(response))
    assert codes == [("InvalidAction", 400), ("MissingAuthenticationToken", 403)]
    logged = [r.getMessage() for r in caplog.records if r.name == "foblab.aws"]
    assert len(logged) >= 2
    assert not any("\n" in m or "\x01" in m for m in logged), logged


@pytest.mark.parametrize("settings", [
    {"account_id": "12345"}, {"allow_any_signature": "yes"}, {"max_skew_s": 0},
    {"max_skew_s": "5"}, {"acount_id": "123456789012"}])
def test_bad_settings_refused(tmp_path: Path, settings: dict) -> None:
    with pytest.raises(ValueError):
        _app(tmp_path, settings)


def test_server_clock_is_injectable(tmp_path: Path) -> None:
    app, validator = _app(tmp_path, {"account_id": "210987654321"},
                          clock=lambda: time.time() + 3600)
    try:
        from validator.aws.store import SQLiteAwsStore

        store = SQLiteAwsStore(tmp_path / "v.db", validator.box)
        key = store.create_key(time.time())
        store.close()
        request = AWSRequest(method="POST", url="http://testserver/aws", data=BODY, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        SigV4Auth(Credentials(*key), "iam", "us-east-1").add_auth(request)
        response = _post(app, BODY, dict(request.headers.items()))
        code, status = aws_error(response)
        assert (code, status) == ("SignatureDoesNotMatch", 403)
        assert b"Signature expired" in response.content
    finally:
        validator.close()


def test_get_with_query_parameters(daemon) -> None:
    import httpx

    url = f"{daemon.url}?Action=ListVirtualMFADevices&Version=2010-05-08&MaxItems=1"
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(daemon.access_key_id, daemon.secret_access_key), "iam",
              "us-east-1").add_auth(request)
    with httpx.Client(trust_env=False) as client:
        response = client.get(url, headers=dict(request.headers.items()))
    assert response.status_code == 200, response.text
    assert b"<ListVirtualMFADevicesResult>" in response.content


UNSIGNED = [("Date", "Mon, 30 Nov 2026 12:00:00 GMT"), ("X-Extra", "1"),
            ("User-Agent", "curl/8"), ("X-Forwarded-For", "203.0.113.9")]


def test_unsigned_headers_never_stand_in_for_the_signature() -> None:
    """Headers added after signing (not in SignedHeaders), an unsigned Date among them, in
    either format: the signature is still checked, so a tampered request still fails."""
    request, t = _botocore_signed("http://127.0.0.1/aws")
    iso = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
    for extra in ([*UNSIGNED], [("Date", iso)], [("date", iso), ("X-Extra", "2")]):
        with_extra = sigv4.Request(request.method, request.raw_path, request.query,
                                   [*request.headers, *extra], request.body)
        sigv4.verify(with_extra, _secret, now=t)  # unsigned extras are ignored...
        for tampered in (dict(body=BODY.replace(b"alice", b"mallo")),
                         dict(headers=[(k, v.replace(v[-8:], "0" * 8)
                                        if k.lower() == "authorization" else v)
                                       for k, v in with_extra.headers])):
            fields = {"method": request.method, "raw_path": request.raw_path,
                      "query": request.query, "headers": with_extra.headers,
                      "body": with_extra.body, **tampered}
            # ...but never replace the check
            assert _refused(sigv4.Request(**fields), t) == ("SignatureDoesNotMatch", 403), \
                (extra, tampered.keys())


def test_unsigned_headers_through_the_daemon(daemon) -> None:
    import httpx

    key = (daemon.access_key_id, daemon.secret_access_key)
    request = AWSRequest(method="POST", url=daemon.url, data=BODY, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(*key), "iam", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    iso = headers["X-Amz-Date"]
    with httpx.Client(trust_env=False, timeout=15) as client:
        for extra in (dict(UNSIGNED), {"Date": iso}):
            sent = {**headers, **extra}
            assert client.post(daemon.url, content=BODY, headers=sent).status_code == 200
            tampered = client.post(daemon.url, content=BODY.replace(b"alice", b"mallo"),
                                   headers=sent)
            assert aws_error(tampered) == ("SignatureDoesNotMatch", 403)

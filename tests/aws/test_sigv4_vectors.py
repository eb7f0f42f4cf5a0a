"""Signature Version 4 against AWS's own published values and botocore's own canonical forms,
and the exact answer to every refusal. Pure: every check passes `now`.

The worked example is the one AWS documents for IAM (a signed `GET /?Action=ListUsers`,
key AKIDEXAMPLE, 2015-08-30T12:36:00Z): its signing key, canonical request hash and
signature are AWS's published values; `get-vanilla` is from AWS's sigv4 test suite."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import normalize_url_path

from validator.aws import sigv4
from validator.aws.errors import AwsError

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
EXAMPLE_TIME = 1_440_938_160.0  # 2015-08-30T12:36:00Z
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EXAMPLE_SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
EXAMPLE_AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
                "SignedHeaders=content-type;host;x-amz-date, Signature=" + EXAMPLE_SIGNATURE)
MISMATCH = ("The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.")


def example(authorization: str | None = EXAMPLE_AUTH, date_header: str = "X-Amz-Date",
            date: str = "20150830T123600Z", extra: tuple[tuple[str, str], ...] = (),
            body: bytes = b"") -> sigv4.Request:
    headers = [("Host", "iam.amazonaws.com"),
               ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
               (date_header, date), *extra]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    return sigv4.Request("GET", "/", "Action=ListUsers&Version=2010-05-08", headers, body)


def _secret(auth: sigv4.Authorization) -> str:
    assert auth.access_key_id == "AKIDEXAMPLE"
    return SECRET


def refusal(request: sigv4.Request, now: float = EXAMPLE_TIME, **kwargs: float
            ) -> tuple[str, str, int]:
    with pytest.raises(AwsError) as exc:
        sigv4.verify(request, _secret, now=now, **kwargs)
    return exc.value.code, exc.value.message, exc.value.status


def test_aws_documented_iam_example() -> None:
    assert sigv4.signing_key(SECRET, "20150830", "us-east-1", "iam").hex() == (
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9")
    canonical = sigv4.canonical_request(example(), ["content-type", "host", "x-amz-date"],
                                        EMPTY_SHA256)
    assert canonical == (
        "GET\n/\nAction=ListUsers&Version=2010-05-08\n"
        "content-type:application/x-www-form-urlencoded; charset=utf-8\n"
        "host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "content-type;host;x-amz-date\n" + EMPTY_SHA256)
    assert sigv4.string_to_sign("20150830T123600Z", "20150830/us-east-1/iam/aws4_request",
                                canonical) == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59")
    auth = sigv4.verify(example(), _secret, now=EXAMPLE_TIME)
    assert auth == sigv4.Authorization("AKIDEXAMPLE", "20150830", "us-east-1", "iam",
                                       ("content-type", "host", "x-amz-date"),
                                       EXAMPLE_SIGNATURE)
    # the signature is compared whatever its case and surrounding blanks
    sigv4.verify(example(EXAMPLE_AUTH.replace(EXAMPLE_SIGNATURE, EXAMPLE_SIGNATURE.upper())),
                 _secret, now=EXAMPLE_TIME)


def test_aws_test_suite_get_vanilla() -> None:
    import hmac

    request = sigv4.Request("GET", "/", "", [("Host", "example.amazonaws.com"),
                                             ("X-Amz-Date", "20150830T123600Z")], b"")
    canonical = sigv4.canonical_request(request, ["host", "x-amz-date"], EMPTY_SHA256)
    key = sigv4.signing_key(SECRET, "20150830", "us-east-1", "service")
    text = sigv4.string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request",
                                canonical)
    assert hmac.new(key, text.encode(), "sha256").hexdigest() == (
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


def test_repeated_and_spaced_header_values() -> None:
    # the test suite's get-header-key-duplicate and get-header-value-trim rules: repeated
    # names join their values in order with commas; runs of blanks become one space
    request = sigv4.Request("GET", "/", "", [
        ("Host", "example.amazonaws.com"), ("My-Header1", "value2"), ("my-header1", "value2"),
        ("MY-HEADER1", "value1"), ("My-Header2", ' "a   b   c" ')], b"")
    canonical = sigv4.canonical_request(request, ["host", "my-header1", "my-header2"], "h")
    assert canonical.split("\n")[3:6] == [
        "host:example.amazonaws.com", "my-header1:value2,value2,value1", 'my-header2:"a b c"']


@pytest.mark.parametrize("query,canonical", [
    ("Param2=value2&Param1=value1", "Param1=value1&Param2=value2"),
    ("-._~0-9A-Za-z=-._~0-9A-Za-z", "-._~0-9A-Za-z=-._~0-9A-Za-z"),  # unreserved: as is
    ("%E1%88%B4=bar", "%E1%88%B4=bar"),
    ("ሴ=bar", "%E1%88%B4=bar"),
    ("a/b~=c/d~", "a%2Fb~=c%2Fd~"),  # '/' is encoded in the query, '~' never
    ("a=b=c", "a=b%3Dc"),  # the first '=' separates
    ("a=1&&b=2&", "a=1&b=2"),  # an empty parameter is none
    ("x=%20y%2F&a=", "a=&x=%20y%2F"),
    ("", ""),
])
def test_canonical_query(query: str, canonical: str) -> None:
    assert sigv4.canonical_query(query) == canonical


PATHS = ["", "/", "/aws", "/aws/", "/a/.", "/a/..", "/a/b/..", "/a/b/c/./../../g", "/../a",
         "/./a/./b/", "//x//y//", "/a/b/../../..", "/~u/%7E", "/a%20b/./c/../aws", "/..",
         "/./"]


@pytest.mark.parametrize("path", PATHS)
def test_paths_are_normalized_as_botocore_signs_them(path: str) -> None:
    assert sigv4.canonical_uri(path) == quote(normalize_url_path(path), safe="/~")


@pytest.mark.parametrize("path", [p for p in PATHS if p])
def test_botocore_signed_paths_verify(path: str) -> None:
    request = AWSRequest(method="POST", url="http://127.0.0.1:8700" + path, data=b"x=1",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    signed_at = time.time()
    SigV4Auth(Credentials("AKIDEXAMPLE", SECRET), "sts", "us-east-1").add_auth(request)
    headers = [*request.headers.items(), ("Host", "127.0.0.1:8700")]
    sigv4.verify(sigv4.Request("POST", path, "", headers, b"x=1"), _secret, now=signed_at)


def test_a_correct_content_hash_header_verifies_and_a_wrong_one_is_named() -> None:
    body = b"Action=GetSessionToken&Version=2011-06-15"
    request = AWSRequest(method="POST", url="http://127.0.0.1/aws", data=body, headers={
        "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    signed_at = time.time()
    SigV4Auth(Credentials("AKIDEXAMPLE", SECRET), "sts", "us-east-1").add_auth(request)
    assert "x-amz-content-sha256" in request.headers["Authorization"]
    headers = [*request.headers.items(), ("Host", "127.0.0.1")]
    sigv4.verify(sigv4.Request("POST", "/aws", "", headers, body), _secret, now=signed_at)
    tampered = sigv4.Request("POST", "/aws", "", headers, body + b"&x=1")
    assert refusal(tampered, signed_at) == (
        "SignatureDoesNotMatch", "The provided 'x-amz-content-sha256' header does not match "
        "what was computed.", 403)


def test_skew_limit_is_inclusive_to_the_second() -> None:
    sigv4.verify(example(), _secret, now=EXAMPLE_TIME + 300)
    sigv4.verify(example(), _secret, now=EXAMPLE_TIME - 300)
    assert refusal(example(), EXAMPLE_TIME + 300.5) == (
        "SignatureDoesNotMatch", "Signature expired: 20150830T123600Z is now earlier than "
        "20150830T123600Z (20150830T124100Z - 300 s.)", 403)
    assert refusal(example(), EXAMPLE_TIME - 301) == (
        "SignatureDoesNotMatch", "Signature not yet current: 20150830T123600Z is still later "
        "than 20150830T123559Z (20150830T123059Z + 300 s.)", 403)
    assert refusal(example(), EXAMPLE_TIME + 900, max_skew=600)[1] == (
        "Signature expired: 20150830T123600Z is now earlier than 20150830T124100Z "
        "(20150830T125100Z - 600 s.)")


def test_times_are_utc_whatever_the_local_zone(new_york_clock: None) -> None:
    sigv4.verify(example(), _secret, now=EXAMPLE_TIME)
    assert refusal(example(), EXAMPLE_TIME + 3600)[1] == (
        "Signature expired: 20150830T123600Z is now earlier than 20150830T133100Z "
        "(20150830T133600Z - 300 s.)")


def test_date_header_stands_in_for_x_amz_date() -> None:
    request = example(date_header="Date", date="20150830T120000Z")
    assert refusal(request) == (
        "SignatureDoesNotMatch", "Signature expired: 20150830T120000Z is now earlier than "
        "20150830T123100Z (20150830T123600Z - 300 s.)", 403)


LONG = "A" * 60
AUTH = "AWS4-HMAC-SHA256 Credential={}, SignedHeaders={}, Signature=00"
CREDENTIAL = "AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request"
FORM = ("IncompleteSignature", "Credential should be of the form "
        "ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request", 400)
HEADERS = ("IncompleteSignature", "SignedHeaders must be lower-case header names, sorted, "
           "separated by ';'", 400)


@pytest.mark.parametrize("request_,answer", [
    (example(None), ("MissingAuthenticationToken", "Request is missing Authentication Token",
                     403)),
    (example(LONG + " Credential=x"), (
        "IncompleteSignature", f"Unsupported AWS 'algorithm': '{'A' * 40}'; only "
        "AWS4-HMAC-SHA256 (Signature Version 4) is accepted", 400)),
    (example(f"AWS4-HMAC-SHA256 Credential={CREDENTIAL}, SignedHeaders=host"), (
        "IncompleteSignature", "Authorization header requires 'Signature' parameter. "
        "Authorization=AWS4-HMAC-SHA256 ...", 400)),
    (example(AUTH.format("/20150830/us-east-1/iam/aws4_request", "host")), FORM),
    (example(AUTH.format("AKIDEXAMPLE/20150830//iam/aws4_request", "host")), FORM),
    (example(AUTH.format(CREDENTIAL + "/aws4_request", "host")), FORM),
    (example(AUTH.format("AKIDEXAMPLE/2015083/us-east-1/iam/aws4_request", "host")), FORM),
    (example(AUTH.format(f"AKIDEXAMPLE/20150830/us-east-1/{LONG}/aws4_request", "host")), (
        "IncompleteSignature", "Credential should be scoped to a valid service ('iam' or "
        f"'sts'), not '{'A' * 40}'", 400)),
    (example(AUTH.format(CREDENTIAL, "x-amz-date")), (
        "IncompleteSignature", "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        400)),
    (example(AUTH.format(CREDENTIAL, "x-amz-date;host")), HEADERS),
    (example(AUTH.format(CREDENTIAL, "X-Amz-Date;host")), HEADERS),
    (example(AUTH.format(CREDENTIAL, ";host")), HEADERS),
    (example(date_header="X-Date"), (
        "IncompleteSignature", "Authorization header requires existence of either a "
        "'X-Amz-Date' or a 'Date' header.", 400)),
    (example(date="2015-08-30T12:36:00Z"), (
        "IncompleteSignature", "X-Amz-Date must be in the ISO 8601 basic format "
        "YYYYMMDD'T'HHMMSS'Z'", 400)),
    (example(EXAMPLE_AUTH.replace("/20150830/", "/20150831/")), (
        "SignatureDoesNotMatch", "Credential should be scoped to a valid date, '20150830', "
        "not '20150831'", 403)),
    (example(EXAMPLE_AUTH[:-1] + "0"), ("SignatureDoesNotMatch", MISMATCH, 403)),
    (example(EXAMPLE_AUTH + "="), ("SignatureDoesNotMatch", MISMATCH, 403)),
    (example(body=b"Action=DeleteUser"), ("SignatureDoesNotMatch", MISMATCH, 403)),
])
def test_every_refusal_says_what_aws_says(request_: sigv4.Request,
                                          answer: tuple[str, str, int]) -> None:
    assert refusal(request_) == answer

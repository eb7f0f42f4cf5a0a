"""Every constraint botocore leaves to the server answers AWS's error, never a 500.

The clients make one attempt only, so a 500 would show at once instead of being retried.
"""

from __future__ import annotations

import pytest
from aws_helpers import aws_error, error_of, signed_post
from botocore.exceptions import ClientError

SERIAL = "arn:aws:iam::123456789012:mfa/validation"
GOOD = dict(UserName="val", SerialNumber=SERIAL, AuthenticationCode1="123456",
            AuthenticationCode2="654321")


@pytest.fixture(scope="module")
def raw_iam(daemon):
    """An IAM client that skips botocore's own parameter checks entirely."""
    return daemon.client("iam", validate=False)


@pytest.fixture(scope="module")
def raw_sts(daemon):
    return daemon.client("sts", validate=False)


ENABLE_CASES = [
    ("7-digit code", {"AuthenticationCode1": "1234567"}),
    ("5-digit code", {"AuthenticationCode2": "12345"}),
    ("letters", {"AuthenticationCode1": "12345a"}),
    ("unicode digits", {"AuthenticationCode1": "١٢٣٤٥٦"}),
    ("spaces", {"AuthenticationCode1": "123 56"}),
    ("empty code", {"AuthenticationCode2": ""}),
    ("serial too short", {"SerialNumber": "GAHT1234"}),
    ("serial too long", {"SerialNumber": "a" * 257}),
    ("serial with a space", {"SerialNumber": "GAHT 12345678"}),
    ("serial with !", {"SerialNumber": "GAHT12345678!"}),
    ("user too long", {"UserName": "u" * 129}),
    ("user with /", {"UserName": "a/b"}),
    ("user empty", {"UserName": ""}),
    ("user unicode", {"UserName": "zoë"}),
]


@pytest.mark.parametrize("what,change", ENABLE_CASES, ids=[c[0] for c in ENABLE_CASES])
@pytest.mark.parametrize("action", ["enable_mfa_device", "resync_mfa_device"])
def test_enable_and_resync_constraints(raw_iam, action: str, what: str, change: dict) -> None:
    with pytest.raises(ClientError) as exc:
        getattr(raw_iam, action)(**{**GOOD, **change})
    assert error_of(exc)[:2] == ("ValidationError", 400)
    assert "123456" not in error_of(exc)[2]  # codes are never echoed


def test_longest_user_name_is_accepted_as_aws_does(raw_iam) -> None:
    with pytest.raises(ClientError) as exc:  # valid name: only the device is missing
        raw_iam.enable_mfa_device(**{**GOOD, "UserName": "u" * 128})
    assert error_of(exc)[:2] == ("NoSuchEntity", 404)


OTHER_CASES = [
    ("sts", "get_session_token", {"DurationSeconds": 899}),
    ("sts", "get_session_token", {"DurationSeconds": 129_601}),
    ("sts", "get_session_token", {"DurationSeconds": "soon"}),
    ("sts", "get_session_token", {"SerialNumber": SERIAL, "TokenCode": "1234567"}),
    ("sts", "get_session_token", {"SerialNumber": SERIAL, "TokenCode": "abcdef"}),
    ("sts", "get_session_token", {"SerialNumber": "short", "TokenCode": "123456"}),
    ("iam", "list_mfa_devices", {"MaxItems": 0}),
    ("iam", "list_mfa_devices", {"MaxItems": 1001}),
    ("iam", "list_mfa_devices", {"Marker": "not-a-marker"}),
    ("iam", "list_mfa_devices", {"UserName": "bad user"}),
    ("iam", "list_virtual_mfa_devices", {"AssignmentStatus": "Sometimes"}),
    ("iam", "create_virtual_mfa_device", {"VirtualMFADeviceName": "a/b"}),
    ("iam", "create_virtual_mfa_device", {"VirtualMFADeviceName": ""}),
    ("iam", "create_virtual_mfa_device", {"VirtualMFADeviceName": "ok", "Path": "nopath"}),
    ("iam", "create_virtual_mfa_device", {"VirtualMFADeviceName": "ok", "Path": "/a b/"}),
    ("iam", "create_virtual_mfa_device", {"VirtualMFADeviceName": "ok",
                                          "Tags": [{"Key": "a*b", "Value": "v"}]}),
    ("iam", "create_virtual_mfa_device", {"VirtualMFADeviceName": "ok", "Tags": [
        {"Key": f"k{i}", "Value": "v"} for i in range(51)]}),
    ("iam", "create_virtual_mfa_device", {}),
    ("iam", "get_mfa_device", {}),
    ("iam", "get_mfa_device", {"SerialNumber": "x" * 300}),
    ("iam", "delete_virtual_mfa_device", {"SerialNumber": "tiny"}),
    ("iam", "tag_mfa_device", {"SerialNumber": SERIAL}),
    ("iam", "untag_mfa_device", {"SerialNumber": SERIAL, "TagKeys": [""]}),
    ("iam", "deactivate_mfa_device", {"SerialNumber": SERIAL, "UserName": "u" * 129}),
]


@pytest.mark.parametrize("service,action,kwargs", OTHER_CASES,
                         ids=[f"{a}-{i}" for i, (_, a, _) in enumerate(OTHER_CASES)])
def test_other_constraints(raw_iam, raw_sts, service: str, action: str, kwargs: dict) -> None:
    client = raw_iam if service == "iam" else raw_sts
    with pytest.raises(ClientError) as exc:
        getattr(client, action)(**kwargs)
    assert error_of(exc)[:2] == ("ValidationError", 400)


def test_duplicate_tag_keys_are_invalid_input(raw_iam) -> None:
    with pytest.raises(ClientError) as exc:
        raw_iam.create_virtual_mfa_device(VirtualMFADeviceName="dup", Tags=[
            {"Key": "k", "Value": "1"}, {"Key": "K", "Value": "2"}])
    assert error_of(exc)[:2] == ("InvalidInput", 400)


RAW_CASES = [
    ("no action", "Version=2010-05-08", "MissingAction"),
    ("unknown action", "Action=CreateUser&Version=2010-05-08", "InvalidAction"),
    ("STS action at IAM's version", "Action=GetSessionToken&Version=2010-05-08",
     "InvalidAction"),
    ("no version", "Action=ListMFADevices", "MissingParameter"),
    ("list gap", "Action=TagMFADevice&Version=2010-05-08&SerialNumber=" + SERIAL
     + "&Tags.member.1.Key=a&Tags.member.1.Value=b&Tags.member.3.Key=c"
     "&Tags.member.3.Value=d", "ValidationError"),
    ("tag without value", "Action=TagMFADevice&Version=2010-05-08&SerialNumber=" + SERIAL
     + "&Tags.member.1.Key=a", "ValidationError"),
]


@pytest.mark.parametrize("what,body,code", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_malformed_requests(daemon, what: str, body: str, code: str) -> None:
    response = signed_post(daemon.url, body, (daemon.access_key_id, daemon.secret_access_key))
    assert aws_error(response) == (code, 400)


def test_body_not_utf8(daemon) -> None:
    response = signed_post(daemon.url, b"Action=ListMFADevices&Version=2010-05-08&x=\xff",
                           (daemon.access_key_id, daemon.secret_access_key))
    assert aws_error(response) == ("MalformedQueryString", 400)
    response = signed_post(daemon.url, "Action=ListMFADevices&Version=2010-05-08&x=%ff",
                           (daemon.access_key_id, daemon.secret_access_key))
    assert aws_error(response) == ("MalformedQueryString", 400)


def test_body_too_large(daemon) -> None:
    response = signed_post(daemon.url, "Action=ListMFADevices&Version=2010-05-08&x="
                           + "a" * 300_000, (daemon.access_key_id, daemon.secret_access_key))
    assert aws_error(response) == ("RequestEntityTooLarge", 413)


def test_trailing_slash_endpoint(daemon) -> None:
    response = signed_post(daemon.url + "/", "Action=ListMFADevices&Version=2010-05-08",
                           (daemon.access_key_id, daemon.secret_access_key))
    assert response.status_code == 200
    assert b"<ListMFADevicesResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">" \
        in response.content

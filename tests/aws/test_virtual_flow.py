"""The virtual MFA device life cycle through real boto3 against a real daemon, every code
computed independently (pyotp) from the seed the endpoint returned."""

from __future__ import annotations

import time

import pytest
from aws_helpers import Otp, error_of
from botocore.exceptions import ClientError

DENIED = "MultiFactorAuthentication failed with invalid MFA one time pass code."


def test_virtual_device_life_cycle(daemon, iam, sts, step: int) -> None:
    created = iam.create_virtual_mfa_device(VirtualMFADeviceName="flow-alice",
                                            Path="/team/")["VirtualMFADevice"]
    serial = created["SerialNumber"]
    assert serial == "arn:aws:iam::123456789012:mfa/team/flow-alice"
    seed = created["Base32StringSeed"].decode("ascii")  # boto3 decodes the base64 blob
    assert len(seed) == 64 and seed.isalnum() and seed.isupper()
    otp = Otp(seed)

    # Unassigned, and the seed is never shown again.
    listed = iam.list_virtual_mfa_devices(AssignmentStatus="Unassigned")["VirtualMFADevices"]
    entry = next(d for d in listed if d["SerialNumber"] == serial)
    assert "Base32StringSeed" not in entry and "QRCodePNG" not in entry and "User" not in entry

    # Enable with two consecutive codes: the previous step's and the current one.
    iam.enable_mfa_device(UserName="alice", SerialNumber=serial,
                          AuthenticationCode1=otp.at(step - 1),
                          AuthenticationCode2=otp.at(step))
    devices = iam.list_mfa_devices(UserName="alice")["MFADevices"]
    assert [d["SerialNumber"] for d in devices] == [serial]
    assert abs(devices[0]["EnableDate"].timestamp() - time.time()) < 60
    got = iam.get_mfa_device(SerialNumber=serial)
    assert got["UserName"] == "alice" and got["SerialNumber"] == serial
    assigned = iam.list_virtual_mfa_devices(AssignmentStatus="Assigned")["VirtualMFADevices"]
    entry = next(d for d in assigned if d["SerialNumber"] == serial)
    assert entry["User"]["UserName"] == "alice"
    assert entry["User"]["Arn"] == "arn:aws:iam::123456789012:user/alice"

    # A session with the next code, expiring when asked.
    before = time.time()
    creds = sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 1),
                                  DurationSeconds=900)["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["SecretAccessKey"]) == 40
    assert before + 895 <= creds["Expiration"].timestamp() <= time.time() + 901

    # The same code again, and a wrong one: refused as AWS refuses them.
    for code in (otp.at(step + 1), otp.wrong(step), otp.at(step)):
        with pytest.raises(ClientError) as exc:
            sts.get_session_token(SerialNumber=serial, TokenCode=code)
        assert error_of(exc) == ("AccessDenied", 403, DENIED)

    # The temporary credentials sign requests of their own (with their session token).
    temp = daemon.client("iam", key=(creds["AccessKeyId"], creds["SecretAccessKey"]),
                         token=creds["SessionToken"])
    assert temp.get_mfa_device(SerialNumber=serial)["UserName"] == "alice"
    without_token = daemon.client("iam", key=(creds["AccessKeyId"], creds["SecretAccessKey"]))
    with pytest.raises(ClientError) as exc:
        without_token.get_mfa_device(SerialNumber=serial)
    assert error_of(exc)[:2] == ("InvalidClientTokenId", 403)
    with pytest.raises(ClientError) as exc:  # as in AWS: no session from a session
        daemon.client("sts", key=(creds["AccessKeyId"], creds["SecretAccessKey"]),
                      token=creds["SessionToken"]).get_session_token()
    assert error_of(exc)[:2] == ("AccessDenied", 403)

    # Resync to a pair far ahead (a token whose clock ran fast): the very next code works.
    with pytest.raises(ClientError) as exc:
        iam.resync_mfa_device(UserName="alice", SerialNumber=serial,
                              AuthenticationCode1=otp.at(step + 6),
                              AuthenticationCode2=otp.at(step + 8))
    assert error_of(exc)[:2] == ("InvalidAuthenticationCode", 403)
    iam.resync_mfa_device(UserName="alice", SerialNumber=serial,
                          AuthenticationCode1=otp.at(step + 6),
                          AuthenticationCode2=otp.at(step + 7))
    with pytest.raises(ClientError) as exc:  # behind the resync: dead
        sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 2))
    assert error_of(exc)[:2] == ("AccessDenied", 403)
    sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 8))

    # Deleting needs a deactivation first.
    with pytest.raises(ClientError) as exc:
        iam.delete_virtual_mfa_device(SerialNumber=serial)
    assert error_of(exc)[:2] == ("DeleteConflict", 409)
    iam.deactivate_mfa_device(UserName="alice", SerialNumber=serial)
    assert iam.list_mfa_devices(UserName="alice")["MFADevices"] == []
    with pytest.raises(ClientError) as exc:  # unassigned devices give no sessions
        sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 9))
    assert error_of(exc)[:2] == ("AccessDenied", 403)
    iam.delete_virtual_mfa_device(SerialNumber=serial)
    with pytest.raises(ClientError) as exc:
        iam.get_mfa_device(SerialNumber=serial)
    assert error_of(exc)[:2] == ("NoSuchEntity", 404)
    assert serial not in [d["SerialNumber"] for d in
                          iam.list_virtual_mfa_devices()["VirtualMFADevices"]]


def test_session_without_mfa_and_default_duration(sts) -> None:
    creds = sts.get_session_token()["Credentials"]
    assert abs(creds["Expiration"].timestamp() - (time.time() + 43_200)) < 60


def test_enable_refusals(iam, step: int) -> None:
    a = iam.create_virtual_mfa_device(VirtualMFADeviceName="refusals")["VirtualMFADevice"]
    otp, serial = Otp(a["Base32StringSeed"].decode()), a["SerialNumber"]
    cases = [
        (dict(SerialNumber="arn:aws:iam::123456789012:mfa/nobody", AuthenticationCode1="123456",
              AuthenticationCode2="654321"), ("NoSuchEntity", 404)),
        (dict(SerialNumber=serial, AuthenticationCode1=otp.at(step),
              AuthenticationCode2=otp.at(step - 1)), ("InvalidAuthenticationCode", 403)),
        (dict(SerialNumber=serial, AuthenticationCode1=otp.at(step),
              AuthenticationCode2=otp.at(step)), ("InvalidAuthenticationCode", 403)),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ClientError) as exc:
            iam.enable_mfa_device(UserName="refused", **kwargs)
        assert error_of(exc)[:2] == expected, kwargs
    iam.enable_mfa_device(UserName="refused", SerialNumber=serial,
                          AuthenticationCode1=otp.at(step - 1), AuthenticationCode2=otp.at(step))
    with pytest.raises(ClientError) as exc:  # in use, by anyone
        iam.enable_mfa_device(UserName="someone-else", SerialNumber=serial,
                              AuthenticationCode1=otp.at(step + 1),
                              AuthenticationCode2=otp.at(step + 2))
    assert error_of(exc)[:2] == ("EntityAlreadyExists", 409)
    with pytest.raises(ClientError) as exc:
        iam.create_virtual_mfa_device(VirtualMFADeviceName="refusals")
    assert error_of(exc)[:2] == ("EntityAlreadyExists", 409)
    with pytest.raises(ClientError) as exc:
        iam.deactivate_mfa_device(UserName="someone-else", SerialNumber=serial)
    assert error_of(exc)[:2] == ("NoSuchEntity", 404)
    iam.deactivate_mfa_device(SerialNumber=serial)  # UserName left out: its assigned user
    iam.delete_virtual_mfa_device(SerialNumber=serial)


def test_device_limit_is_eight(iam, step: int) -> None:
    serials = []
    for i in range(9):
        d = iam.create_virtual_mfa_device(VirtualMFADeviceName=f"limit-{i}")["VirtualMFADevice"]
        serials.append((d["SerialNumber"], Otp(d["Base32StringSeed"].decode())))
    for serial, otp in serials[:8]:
        iam.enable_mfa_device(UserName="collector", SerialNumber=serial,
                              AuthenticationCode1=otp.at(step - 1),
                              AuthenticationCode2=otp.at(step))
    serial, otp = serials[8]
    with pytest.raises(ClientError) as exc:
        iam.enable_mfa_device(UserName="collector", SerialNumber=serial,
                              AuthenticationCode1=otp.at(step - 1),
                              AuthenticationCode2=otp.at(step))
    assert error_of(exc) == ("LimitExceeded", 409,
                             "Cannot exceed quota for MFADevicesPerUser: 8")
    # Paging through the user's eight devices, three at a time.
    seen, marker = [], None
    while True:
        kwargs = {"UserName": "collector", "MaxItems": 3}
        if marker:
            kwargs["Marker"] = marker
        page = iam.list_mfa_devices(**kwargs)
        seen += [d["SerialNumber"] for d in page["MFADevices"]]
        assert len(page["MFADevices"]) <= 3
        if not page["IsTruncated"]:
            break
        marker = page["Marker"]
    assert sorted(seen) == sorted(s for s, _ in serials[:8])
    # boto3's own paginator follows the markers too.
    pages = iam.get_paginator("list_virtual_mfa_devices").paginate(
        AssignmentStatus="Assigned", PaginationConfig={"PageSize": 2})
    assigned = [d["SerialNumber"] for page in pages for d in page["VirtualMFADevices"]]
    assert set(s for s, _ in serials[:8]) <= set(assigned)
    assert serials[8][0] not in assigned


def test_tags(iam) -> None:
    d = iam.create_virtual_mfa_device(VirtualMFADeviceName="tagged",
                                      Tags=[{"Key": "team", "Value": "qa"}])
    serial = d["VirtualMFADevice"]["SerialNumber"]
    assert d["VirtualMFADevice"]["Tags"] == [{"Key": "team", "Value": "qa"}]
    iam.tag_mfa_device(SerialNumber=serial, Tags=[{"Key": "Team", "Value": "ops"},
                                                  {"Key": "site", "Value": "lab 2"}])
    tags = iam.list_mfa_device_tags(SerialNumber=serial)
    assert tags["Tags"] == [{"Key": "Team", "Value": "ops"}, {"Key": "site", "Value": "lab 2"}]
    first = iam.list_mfa_device_tags(SerialNumber=serial, MaxItems=1)
    assert first["IsTruncated"] and len(first["Tags"]) == 1
    rest = iam.list_mfa_device_tags(SerialNumber=serial, Marker=first["Marker"])
    assert rest["Tags"] == [{"Key": "site", "Value": "lab 2"}] and not rest["IsTruncated"]
    iam.untag_mfa_device(SerialNumber=serial, TagKeys=["TEAM"])
    assert iam.list_mfa_device_tags(SerialNumber=serial)["Tags"] == [
        {"Key": "site", "Value": "lab 2"}]
    with pytest.raises(ClientError) as exc:
        iam.tag_mfa_device(SerialNumber=serial, Tags=[
            {"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert error_of(exc)[:2] == ("LimitExceeded", 409)
    with pytest.raises(ClientError) as exc:
        iam.list_mfa_device_tags(SerialNumber="arn:aws:iam::123456789012:mfa/untagged-ghost")
    assert error_of(exc)[:2] == ("NoSuchEntity", 404)
    iam.delete_virtual_mfa_device(SerialNumber=serial)


def test_wrong_codes_throttle_the_device(iam, sts, step: int) -> None:
    d = iam.create_virtual_mfa_device(VirtualMFADeviceName="throttled")["VirtualMFADevice"]
    otp, serial = Otp(d["Base32StringSeed"].decode()), d["SerialNumber"]
    iam.enable_mfa_device(UserName="dave", SerialNumber=serial,
                          AuthenticationCode1=otp.at(step - 1), AuthenticationCode2=otp.at(step))
    for _ in range(5):
        with pytest.raises(ClientError) as exc:
            sts.get_session_token(SerialNumber=serial, TokenCode=otp.wrong(step))
        assert error_of(exc) == ("AccessDenied", 403, DENIED)
    with pytest.raises(ClientError) as exc:  # locked: even the right code is refused
        sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 1))
    assert error_of(exc) == ("AccessDenied", 403, DENIED)
    with pytest.raises(ClientError) as exc:
        iam.resync_mfa_device(UserName="dave", SerialNumber=serial,
                              AuthenticationCode1=otp.at(step + 1),
                              AuthenticationCode2=otp.at(step + 2))
    code, status, message = error_of(exc)
    assert (code, status) == ("InvalidAuthenticationCode", 403) and "locked" in message

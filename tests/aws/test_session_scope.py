"""Session scope as AWS has it, through real boto3 against the real daemon: credentials
from GetSessionToken without an MFA code may call no IAM action; deleting an access key
revokes the sessions it issued; `aws-keys sessions` lists and revokes sessions; a key bound
to a user (`aws-keys create --user`) manages only that user's MFA devices."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from aws_helpers import Otp, aws_error, error_of, foblab, settled_step, signed_post
from botocore.exceptions import ClientError

from validator.aws.actions import IAM_ACTIONS

DENIED = ("AccessDenied", 403)
REVOKED = ("InvalidClientTokenId", 403)


def _form(action: str) -> bytes:
    return urllib.parse.urlencode({"Action": action, "Version": "2010-05-08"}).encode()


def _new_key(daemon, user: str | None = None) -> tuple[str, str]:
    args = ["validator", "aws-keys", "create", "--dir", str(daemon.folder), "--json"]
    made = json.loads(foblab(*args, *(["--user", user] if user else [])).stdout)
    assert made["user"] == user
    return made["access_key_id"], made["secret_access_key"]


def _sessions(daemon) -> list[dict]:
    out = foblab("validator", "aws-keys", "sessions", "--dir", str(daemon.folder), "--json")
    return json.loads(out.stdout)


def _device(iam, name: str, user: str, step: int) -> tuple[str, Otp]:
    made = iam.create_virtual_mfa_device(VirtualMFADeviceName=name)["VirtualMFADevice"]
    otp = Otp(made["Base32StringSeed"].decode())
    iam.enable_mfa_device(UserName=user, SerialNumber=made["SerialNumber"],
                          AuthenticationCode1=otp.at(step - 1), AuthenticationCode2=otp.at(step))
    return made["SerialNumber"], otp


def test_a_session_without_mfa_can_call_no_iam_action(daemon, sts) -> None:
    creds = sts.get_session_token(DurationSeconds=900)["Credentials"]
    key = (creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    for action in IAM_ACTIONS:  # every one, from the endpoint's own table
        answer = signed_post(daemon.url, _form(action), key)
        assert aws_error(answer) == DENIED, (action, answer.text)
        assert f"iam:{action}" in answer.text and "no MFA code was presented" in answer.text
    temp = daemon.client("iam", key=key[:2], token=key[2])
    for call in (lambda: temp.create_virtual_mfa_device(VirtualMFADeviceName="nomfa"),
                 lambda: temp.deactivate_mfa_device(UserName="alice", SerialNumber="x" * 9),
                 lambda: temp.list_mfa_devices()):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc)[:2] == DENIED
    listed = {s["access_key_id"]: s for s in _sessions(daemon)}
    assert listed[creds["AccessKeyId"]]["mfa"] is False
    assert listed[creds["AccessKeyId"]]["parent"] == daemon.access_key_id


def test_deleting_a_key_revokes_its_sessions(daemon) -> None:
    step = settled_step()
    key = _new_key(daemon)
    iam, sts = daemon.client("iam", key=key), daemon.client("sts", key=key)
    serial, otp = _device(iam, "revoked-by-delete", "sess-ella", step)
    with_mfa = sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 1),
                                     DurationSeconds=900)["Credentials"]
    without = sts.get_session_token(DurationSeconds=900)["Credentials"]
    temp = daemon.client("iam", key=(with_mfa["AccessKeyId"], with_mfa["SecretAccessKey"]),
                         token=with_mfa["SessionToken"])
    assert temp.get_mfa_device(SerialNumber=serial)["UserName"] == "sess-ella"
    mine = {s["access_key_id"]: s for s in _sessions(daemon) if s["parent"] == key[0]}
    assert set(mine) == {with_mfa["AccessKeyId"], without["AccessKeyId"]}
    assert mine[with_mfa["AccessKeyId"]]["mfa"] is True
    assert mine[with_mfa["AccessKeyId"]]["serial"] == serial

    out = foblab("validator", "aws-keys", "delete", "--dir", str(daemon.folder), key[0])
    assert "2 session(s) revoked" in out.stdout
    for creds, service in ((with_mfa, "iam"), (without, "sts")):
        client = daemon.client(service, key=(creds["AccessKeyId"], creds["SecretAccessKey"]),
                               token=creds["SessionToken"])
        with pytest.raises(ClientError) as exc:
            client.get_mfa_device(SerialNumber=serial) if service == "iam" \
                else client.get_session_token()
        assert error_of(exc)[:2] == REVOKED
    assert not [s for s in _sessions(daemon) if s["parent"] == key[0]]
    daemon.client("iam").deactivate_mfa_device(UserName="sess-ella", SerialNumber=serial)


def test_sessions_are_listed_and_revoked_by_the_command(daemon, sts) -> None:
    a = sts.get_session_token(DurationSeconds=900)["Credentials"]
    b = sts.get_session_token(DurationSeconds=900)["Credentials"]
    text = foblab("validator", "aws-keys", "sessions", "--dir", str(daemon.folder)).stdout
    assert a["AccessKeyId"] in text and a["SecretAccessKey"] not in text
    assert a["SessionToken"] not in text and "no mfa" in text
    out = foblab("validator", "aws-keys", "sessions", "--dir", str(daemon.folder),
                 "--revoke", a["AccessKeyId"])
    assert "1 session(s) revoked" in out.stdout

    def sts_of(c: dict):
        return daemon.client("sts", key=(c["AccessKeyId"], c["SecretAccessKey"]),
                             token=c["SessionToken"])

    with pytest.raises(ClientError) as exc:
        sts_of(a).get_session_token()
    assert error_of(exc)[:2] == REVOKED
    with pytest.raises(ClientError) as exc:  # still alive: refused for being a session
        sts_of(b).get_session_token()
    assert error_of(exc)[:2] == DENIED
    out = foblab("validator", "aws-keys", "sessions", "--dir", str(daemon.folder),
                 "--revoke-key", daemon.access_key_id, "--json")
    assert json.loads(out.stdout)["revoked"] >= 1
    with pytest.raises(ClientError) as exc:
        sts_of(b).get_session_token()
    assert error_of(exc)[:2] == REVOKED
    both = foblab("validator", "aws-keys", "sessions", "--dir", str(daemon.folder),
                  "--revoke-all", "--revoke-key", "AKIAX", check=False)
    assert both.returncode == 1 and "one of" in both.stderr


def test_a_key_bound_to_a_user_manages_only_that_users_devices(daemon, iam, sts) -> None:
    step = settled_step(margin=8.0)
    mine = _new_key(daemon, user="bound-alice")
    my_iam, my_sts = daemon.client("iam", key=mine), daemon.client("sts", key=mine)
    listed = json.loads(foblab("validator", "aws-keys", "list", "--dir", str(daemon.folder),
                               "--json").stdout)
    assert {"access_key_id": mine[0], "user": "bound-alice"}.items() <= \
        next(k for k in listed if k["access_key_id"] == mine[0]).items()
    # someone else's device, made and enabled with the unbound key
    bob_serial, bob_otp = _device(iam, "bound-bob-dev", "bound-bob", step)
    spare = iam.create_virtual_mfa_device(VirtualMFADeviceName="bound-spare")
    spare_serial = spare["VirtualMFADevice"]["SerialNumber"]
    # own devices: create, enable, list, get, tag, session, resync
    serial, otp = _device(my_iam, "bound-alice-dev", "bound-alice", step)
    assert [d["SerialNumber"] for d in my_iam.list_mfa_devices()["MFADevices"]] == [serial]
    assert my_iam.get_mfa_device(SerialNumber=serial)["UserName"] == "bound-alice"
    my_iam.tag_mfa_device(SerialNumber=serial, Tags=[{"Key": "k", "Value": "v"}])
    my_iam.tag_mfa_device(SerialNumber=spare_serial, Tags=[{"Key": "k", "Value": "v"}])
    assert my_iam.list_virtual_mfa_devices()["VirtualMFADevices"]  # viewing is allowed
    refused = [
        lambda: my_iam.enable_mfa_device(UserName="bound-bob", SerialNumber=spare_serial,
                                         AuthenticationCode1="123456",
                                         AuthenticationCode2="654321"),
        lambda: my_iam.resync_mfa_device(UserName="bound-bob", SerialNumber=bob_serial,
                                         AuthenticationCode1="123456",
                                         AuthenticationCode2="654321"),
        lambda: my_iam.list_mfa_devices(UserName="bound-bob"),
        lambda: my_iam.get_mfa_device(SerialNumber=bob_serial),
        lambda: my_iam.deactivate_mfa_device(SerialNumber=bob_serial),
        lambda: my_iam.deactivate_mfa_device(UserName="bound-bob", SerialNumber=bob_serial),
        lambda: my_iam.delete_virtual_mfa_device(SerialNumber=bob_serial),
        lambda: my_iam.tag_mfa_device(SerialNumber=bob_serial,
                                      Tags=[{"Key": "k", "Value": "v"}]),
        lambda: my_iam.untag_mfa_device(SerialNumber=bob_serial, TagKeys=["k"]),
        lambda: my_iam.list_mfa_device_tags(SerialNumber=bob_serial),
    ]
    for i, call in enumerate(refused):
        with pytest.raises(ClientError) as exc:
            call()
        code, status, message = error_of(exc)
        assert (code, status) == DENIED, i
        assert message.startswith("User: arn:aws:iam::123456789012:user/bound-alice is not "
                                  "authorized to perform: iam:"), message
    # MFA with someone else's device is refused before the code is even looked at
    with pytest.raises(ClientError) as exc:
        my_sts.get_session_token(SerialNumber=bob_serial, TokenCode=bob_otp.at(step + 1))
    assert error_of(exc)[:2] == DENIED
    sts.get_session_token(SerialNumber=bob_serial, TokenCode=bob_otp.at(step + 1))  # unused
    # a session from the bound key is bound too
    creds = my_sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 1),
                                     DurationSeconds=900)["Credentials"]
    temp = daemon.client("iam", key=(creds["AccessKeyId"], creds["SecretAccessKey"]),
                         token=creds["SessionToken"])
    assert temp.get_mfa_device(SerialNumber=serial)["UserName"] == "bound-alice"
    with pytest.raises(ClientError) as exc:
        temp.get_mfa_device(SerialNumber=bob_serial)
    assert error_of(exc)[:2] == DENIED
    # bob's device is untouched; the bound key cleans up its own
    assert iam.get_mfa_device(SerialNumber=bob_serial)["UserName"] == "bound-bob"
    my_iam.deactivate_mfa_device(SerialNumber=serial)
    my_iam.delete_virtual_mfa_device(SerialNumber=serial)
    iam.deactivate_mfa_device(UserName="bound-bob", SerialNumber=bob_serial)
    bad = foblab("validator", "aws-keys", "create", "--dir", str(daemon.folder), "--user",
                 "no spaces", check=False)
    assert bad.returncode == 1 and "--user" in bad.stderr


def test_an_older_database_gets_the_new_columns(tmp_path) -> None:
    import sqlite3

    from validator.aws.store import SQLiteAwsStore
    from validator.service import Validator

    db = tmp_path / "old.db"
    Validator.open(db, tmp_path / "seed.key").close()
    with sqlite3.connect(db) as conn:  # the tables as the first release made them
        conn.execute("CREATE TABLE aws_access_keys (access_key_id TEXT PRIMARY KEY, "
                     "sealed BLOB NOT NULL, created REAL NOT NULL)")
        conn.execute("CREATE TABLE aws_sessions (access_key_id TEXT PRIMARY KEY, sealed BLOB "
                     "NOT NULL, token_sha256 TEXT NOT NULL, user TEXT, serial TEXT, "
                     "created REAL NOT NULL, expires REAL NOT NULL)")
    conn.close()
    validator = Validator.open(db, tmp_path / "seed.key")  # its envelope box seals for AWS
    store = SQLiteAwsStore(db, lambda: validator.box)
    try:
        akid, _ = store.create_key(time.time(), user="old-alice")
        assert store.list_keys()[0].user == "old-alice"
        made = store.create_session(None, None, time.time() + 900, time.time(), parent=akid)
        found = store.credentials(made.access_key_id)
        assert found is not None and found.mfa is False and found.user == "old-alice"
        assert store.delete_key(akid) == 1 and store.credentials(made.access_key_id) is None
    finally:
        store.close()
        validator.close()

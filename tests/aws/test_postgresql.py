"""The AWS endpoint on PostgreSQL: real daemons (`foblab validator serve`) on one database
of the session's server (tests/pg.py), boto3 signing every request; the endpoint in-process
while its database refuses connections; `foblab validator copy` of the AWS rows both ways."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from aws_helpers import Otp, boto_client, error_of, foblab, serving, settled_step
from botocore.exceptions import ClientError

from validator.aws import AwsEndpoint
from validator.aws.store import VirtualDevice, open_aws_store
from validator.service import Validator

T0 = 1_700_000_000.0
LIST = b"Action=ListVirtualMFADevices&Version=2010-05-08"


def _console_delete(base: str, admin_key: str, access_key_id: str) -> str:
    """Delete an access key through the daemon's web console, as an operator would; the
    page's notice."""
    def csrf(html: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found, html[:500]
        return found.group(1)

    with httpx.Client(base_url=base, trust_env=False, timeout=15) as c:
        r = c.post("/ui/login", data={"key": admin_key, "csrf": csrf(c.get("/ui/login").text)})
        assert r.status_code in (200, 303), r.text
        r = c.post("/ui/aws-keys/delete", data={"csrf": csrf(c.get("/ui/aws-keys").text),
                                                "access_key_id": access_key_id})
        assert r.status_code == 200, r.text
        return r.text


def test_two_daemons_share_keys_sessions_devices_and_revocations(tmp_path: Path,
                                                                 pg_url: str) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    foblab("validator", "init", str(a_dir), "--port", "0", "--database-url", pg_url)
    shutil.copytree(a_dir, b_dir)  # a second machine: the same seed key and API keys
    made = json.loads(foblab("validator", "aws-keys", "create", "--dir", str(b_dir),
                             "--json").stdout)
    key = (made["access_key_id"], made["secret_access_key"])
    admin = (a_dir / "admin.key").read_text().strip()
    with serving(a_dir, tmp_path / "a.log") as a, serving(b_dir, tmp_path / "b.log") as b:
        iam_a, iam_b = (boto_client(f"{d}/aws", "iam", key) for d in (a, b))
        device = iam_a.create_virtual_mfa_device(
            VirtualMFADeviceName="pg-alice", Tags=[{"Key": "team", "Value": "ops"}]
        )["VirtualMFADevice"]
        serial, otp = device["SerialNumber"], Otp(device["Base32StringSeed"].decode())
        assert iam_b.list_mfa_device_tags(SerialNumber=serial)["Tags"] == [
            {"Key": "team", "Value": "ops"}]  # made through a, seen through b
        step = settled_step()
        iam_b.enable_mfa_device(UserName="alice", SerialNumber=serial,
                                AuthenticationCode1=otp.at(step - 1),
                                AuthenticationCode2=otp.at(step))
        creds = boto_client(f"{a}/aws", "sts", key).get_session_token(
            SerialNumber=serial, TokenCode=otp.at(step + 1), DurationSeconds=900
        )["Credentials"]
        with pytest.raises(ClientError) as exc:  # the code is spent on every daemon
            boto_client(f"{b}/aws", "sts", key).get_session_token(
                SerialNumber=serial, TokenCode=otp.at(step + 1))
        assert error_of(exc)[:2] == ("AccessDenied", 403)
        session = (creds["AccessKeyId"], creds["SecretAccessKey"])
        on_b = boto_client(f"{b}/aws", "iam", session, token=creds["SessionToken"])
        assert on_b.get_mfa_device(SerialNumber=serial)["UserName"] == "alice"

        # A data-key rotation on one daemon: both keep opening the key and the session.
        with httpx.Client(base_url=b, trust_env=False, timeout=30,
                          headers={"Authorization": f"Bearer {admin}"}) as c:
            assert c.post("/v1/admin/rotate-key").status_code == 200
        assert boto_client(f"{a}/aws", "iam", session, token=creds["SessionToken"]
                           ).get_mfa_device(SerialNumber=serial)["UserName"] == "alice"
        assert iam_a.list_mfa_devices(UserName="alice")["MFADevices"]
        assert on_b.get_mfa_device(SerialNumber=serial)["UserName"] == "alice"

        # The key deleted through a's console: b refuses it and the session it issued.
        assert f"Deleted {key[0]}." in _console_delete(a, admin, key[0])
        for client in (on_b, iam_b):
            with pytest.raises(ClientError) as exc:
                client.get_mfa_device(SerialNumber=serial)
            assert error_of(exc)[:2] == ("InvalidClientTokenId", 403)
        listed = json.loads(foblab("validator", "aws-keys", "sessions", "--dir", str(a_dir),
                                   "--json").stdout)
        assert listed == []


class Endpoint:
    """The AWS endpoint in-process (no server) on `validator`'s database."""

    def __init__(self, validator: Validator) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.endpoint = AwsEndpoint(validator, {})
        self.app = Starlette(routes=[Route("/aws", self.endpoint.handle, methods=["POST"])])

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.endpoint.close()

    def signed(self, key: tuple[str, str]) -> httpx.Response:
        """A SigV4-signed IAM call (ListVirtualMFADevices)."""
        return self.signed_at_once(key, 1)[0]

    def signed_at_once(self, key: tuple[str, str], count: int) -> list[httpx.Response]:
        """`count` of `signed`'s calls, all sent at once."""
        import asyncio

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method="POST", url="http://testserver/aws", data=LIST, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        SigV4Auth(Credentials(*key), "iam", "us-east-1").add_auth(request)

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url="http://testserver") as client:
                return list(await asyncio.gather(*(
                    client.post("/aws", content=LIST, headers=dict(request.headers))
                    for _ in range(count))))

        return asyncio.run(go())


def _signed(validator: Validator, key: tuple[str, str]) -> httpx.Response:
    with Endpoint(validator) as endpoint:
        return endpoint.signed(key)


def _allow_connections(pg_url: str, allowed: bool) -> None:
    import psycopg

    name = psycopg.conninfo.conninfo_to_dict(pg_url)["dbname"]
    admin = re.sub(r"/[^/?]+\?", "/postgres?", pg_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s", (name,))


def test_the_endpoint_answers_503_while_its_database_is_unreachable(tmp_path: Path,
                                                                     pg_url: str) -> None:
    v = Validator.open(pg_url, tmp_path / "seed.key")
    try:
        with Endpoint(v) as endpoint:
            key = endpoint.endpoint.store.create_key(time.time())
            assert endpoint.signed(key).status_code == 200
            _allow_connections(pg_url, False)
            try:
                down = endpoint.signed(key)
                assert down.status_code == 503, down.text
                assert b"<Code>ServiceUnavailable</Code>" in down.content
                assert b"postgres" not in down.content  # no server, socket or URL in it
            finally:
                _allow_connections(pg_url, True)
            deadline = time.monotonic() + 10  # back by itself (one probe a second)
            while (answer := endpoint.signed(key)).status_code != 200:
                assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
                time.sleep(0.2)
    finally:
        v.close()


def test_requests_beyond_the_pool_wait_their_turn(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL the endpoint runs at most as many requests at once as the store has
    connections; the others wait their turn (never the pool's timeout, a 503)."""
    v = Validator.open(pg_url, tmp_path / "seed.key")
    try:
        with Endpoint(v) as endpoint:
            key = endpoint.endpoint.store.create_key(time.time())
            handle = endpoint.endpoint._handle
            running, peak, lock = [0], [0], threading.Lock()

            def held(*args: object) -> object:
                with lock:
                    running[0] += 1
                    peak[0] = max(peak[0], running[0])
                try:
                    time.sleep(0.2)  # long enough for the others to pile up
                    return handle(*args)  # type: ignore[arg-type]
                finally:
                    with lock:
                        running[0] -= 1

            endpoint.endpoint._handle = held  # type: ignore[method-assign]
            limit = v.store.max_connections  # type: ignore[attr-defined]
            answers = endpoint.signed_at_once(key, 3 * limit)
            assert [a.status_code for a in answers] == [200] * (3 * limit)
            assert peak[0] == limit
    finally:
        v.close()


def test_copy_moves_aws_keys_sessions_and_devices_both_ways(tmp_path: Path,
                                                            pg_url: str) -> None:
    seed_key = tmp_path / "seed.key"
    v = Validator.open(tmp_path / "a.db", seed_key)
    aws = open_aws_store(v.store, v.box)
    key = aws.create_key(T0, user="alice")
    bare = aws.create_key(T0 + 1)
    session = aws.create_session("alice", None, time.time() + 3600, T0, parent=key[0])
    serial = "arn:aws:iam::123456789012:mfa/alice"
    aws.add_virtual(VirtualDevice(serial, "alice", "/", T0), [("team", "ops")])
    v.rotate_key(now=T0 + 2)  # the AWS secrets are under the second data key now
    assert _signed(v, key).status_code == 200
    aws.close()
    v.close()

    copied = json.loads(foblab("validator", "copy", "--from", str(tmp_path / "a.db"),
                               "--to", pg_url, "--json").stdout)
    assert {k: copied[k] for k in copied if k.startswith("aws_")} == {
        "aws_access_keys": 2, "aws_sessions": 1, "aws_virtual_mfa": 1, "aws_mfa_tags": 1}
    pg = Validator.open(pg_url, seed_key, create_key=False)
    aws = open_aws_store(pg.store, pg.box)
    for akid, secret in (key, bare):
        found = aws.credentials(akid)
        assert found is not None and found.secret == secret
    assert aws.credentials(key[0]).user == "alice"  # type: ignore[union-attr]
    moved = aws.credentials(session.access_key_id)
    assert moved is not None and moved.secret == session.secret_access_key
    assert aws.get_virtual(serial) == VirtualDevice(serial, "alice", "/", T0)
    assert aws.tags(serial) == [("team", "ops")]
    assert _signed(pg, key).status_code == 200  # usable on PostgreSQL as it was
    pg.rotate_key(now=T0 + 3)  # and resealed by a rotation there
    made_there = aws.create_key(T0 + 4)
    aws.close()
    pg.close()
    refused = foblab("validator", "copy", "--from", str(tmp_path / "a.db"), "--to", pg_url,
                     check=False)
    assert refused.returncode == 1 and "empty" in refused.stderr + refused.stdout

    back = json.loads(foblab("validator", "copy", "--from", pg_url, "--to",
                             str(tmp_path / "b.db"), "--json").stdout)
    assert back["aws_access_keys"] == 3 and back["aws_sessions"] == 1
    v = Validator.open(tmp_path / "b.db", seed_key, create_key=False)
    try:
        for k in (key, bare, made_there):
            assert _signed(v, k).status_code == 200
        aws = open_aws_store(v.store, v.box)
        moved = aws.credentials(session.access_key_id)
        assert moved is not None and moved.token_sha256 is not None
        assert aws.tags(serial) == [("team", "ops")]
        aws.close()
        assert v.check_keys() is None
    finally:
        v.close()

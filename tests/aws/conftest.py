"""Fixtures for the AWS endpoint tests: a real daemon on an ephemeral loopback port, an
access key, and boto3 clients isolated from any AWS configuration on the machine."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import uvicorn
from botocore.config import Config
from starlette.applications import Starlette
from starlette.routing import Route

from validator.aws import AwsEndpoint
from validator.aws.store import AwsStore
from validator.service import Validator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for aws_helpers

from aws_helpers import settled_step  # noqa: E402

ISOLATION = {
    "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
}


@dataclass
class Daemon:
    url: str  # the endpoint: http://127.0.0.1:PORT/aws
    db: Path
    key_file: Path
    access_key_id: str
    secret_access_key: str

    def client(self, service: str, *, key: tuple[str, str] | None = None,
               token: str | None = None, validate: bool = True):  # -> botocore client
        akid, secret = key or (self.access_key_id, self.secret_access_key)
        session = boto3.session.Session(aws_access_key_id=akid, aws_secret_access_key=secret,
                                        aws_session_token=token, region_name="us-east-1")
        # One attempt: a 500 (or any retryable answer) must show at once, not be retried.
        return session.client(service, endpoint_url=self.url, config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=5, read_timeout=15, parameter_validation=validate))


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ISOLATION}
    os.environ.update(ISOLATION)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_ENDPOINT_URL"):
        saved.setdefault(k, os.environ.pop(k, None))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The endpoint under a minimal Starlette app on a real uvicorn server (thread)."""
    root = tmp_path_factory.mktemp("aws-daemon")
    db, key_file = root / "validator.db", root / "seed.key"
    validator = Validator.open(db, key_file, max_user_length=128)
    endpoint = AwsEndpoint(validator, db, {})
    app = Starlette(routes=[Route(path, endpoint.handle, methods=["GET", "POST"])
                            for path in ("/aws", "/aws/")])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    keys = AwsStore(db, validator.box)
    akid, secret = keys.create_key(time.time())
    keys.close()
    try:
        yield Daemon(f"http://127.0.0.1:{port}/aws", db, key_file, akid, secret)
    finally:
        server.should_exit = True
        thread.join(10)
        endpoint.close()
        validator.close()


@pytest.fixture
def iam(daemon: Daemon):
    return daemon.client("iam")


@pytest.fixture
def sts(daemon: Daemon):
    return daemon.client("sts")


@pytest.fixture
def step() -> int:
    """The current TOTP step, with at least a few seconds of it left."""
    return settled_step()

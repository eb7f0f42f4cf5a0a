"""Fixtures for the AWS endpoint tests: a real daemon on an ephemeral loopback port, an
access key, and boto3 clients isolated from any AWS configuration on the machine."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for aws_helpers

from aws_helpers import boto_client, foblab, serving, settled_step  # noqa: E402

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
    base: str  # the daemon's root URL
    admin_key: str  # its admin API key (Bearer), for the v1 API
    folder: Path  # the init'd folder

    def client(self, service: str, *, key: tuple[str, str] | None = None,
               token: str | None = None, validate: bool = True):  # -> botocore client
        return boto_client(self.url, service, key or (self.access_key_id,
                                                      self.secret_access_key),
                           token=token, validate=validate)


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


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real daemon: `foblab validator init`, an access key from `foblab validator
    aws-keys create`, then `foblab validator serve` on an ephemeral loopback port."""
    root = tmp_path_factory.mktemp("aws-daemon")
    folder = root / "validator"
    foblab("validator", "init", str(folder), "--port", "0")
    created = json.loads(foblab("validator", "aws-keys", "create", "--dir", str(folder),
                                "--json").stdout)
    with serving(folder, root / "daemon.log") as base:
        yield Daemon(f"{base}/aws", folder / "validator.db", folder / "seed.key",
                     created["access_key_id"], created["secret_access_key"], base=base,
                     admin_key=(folder / "admin.key").read_text().strip(), folder=folder)


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

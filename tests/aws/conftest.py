"""Fixtures for the AWS endpoint tests: a real daemon on an ephemeral loopback port, an
access key, and boto3 clients isolated from any AWS configuration on the machine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for aws_helpers

from aws_helpers import FOBLAB, ROOT, foblab, settled_step  # noqa: E402

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


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real daemon: `foblab validator init`, an access key from `foblab validator
    aws-keys create`, then `foblab validator serve` on an ephemeral loopback port."""
    root = tmp_path_factory.mktemp("aws-daemon")
    folder = root / "validator"
    foblab("validator", "init", str(folder), "--port", "0")
    created = json.loads(foblab("validator", "aws-keys", "create", "--dir", str(folder),
                                "--json").stdout)
    log_path = root / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*FOBLAB, "validator", "serve", "--dir", str(folder),
                                 "--port", "0"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            found = re.search(r"listening on (https?://[^\s\"]+)", log_path.read_text())
            if found:
                break
            assert proc.poll() is None, f"the daemon exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        base = found.group(1)
        yield Daemon(f"{base}/aws", folder / "validator.db", folder / "seed.key",
                     created["access_key_id"], created["secret_access_key"], base=base,
                     admin_key=(folder / "admin.key").read_text().strip(), folder=folder)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text and "internal error" not in text, text[-4000:]
    assert proc.returncode == 0, text[-2000:]


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

"""Helpers shared by the AWS endpoint tests (imported by name: conftest puts this folder
on sys.path)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

ROOT = Path(__file__).resolve().parents[2]
FOBLAB = [sys.executable, "-m", "tools.cli"]


def foblab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `foblab` command (this checkout's) and answer its completed process."""
    return subprocess.run([*FOBLAB, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=check)


def boto_client(url: str, service: str, key: tuple[str, str], *, token: str | None = None,
                validate: bool = True):  # -> botocore client
    """A boto3 client of `service` ("iam", "sts") on the endpoint at `url`, signing with
    `key` (and the session `token`)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1],
                                    aws_session_token=token, region_name="us-east-1")
    # One attempt: a 500 (or any retryable answer) must show at once, not be retried.
    return session.client(service, endpoint_url=url, config=Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5, read_timeout=15, parameter_validation=validate))


@contextmanager
def serving(folder: Path, log_path: Path) -> Iterator[str]:
    """`foblab validator serve --dir FOLDER` on an ephemeral loopback port, its output in
    `log_path`; yields its root URL. Stopped with SIGTERM at the end, which it must survive
    cleanly (exit 0, no traceback or internal error in its log)."""
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
        yield found.group(1)
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


@dataclass(frozen=True)
class Otp:
    """Codes computed independently of foblab (pyotp) from a device's base32 seed."""

    seed: str

    def at(self, step: int) -> str:
        return pyotp.TOTP(self.seed).generate_otp(step)

    def wrong(self, near: int) -> str:
        """A well-formed code that no step near `near` shows."""
        taken = {self.at(s) for s in range(near - 50, near + 50)}
        return next(f"{n:06d}" for n in range(123456, 10**6) if f"{n:06d}" not in taken)


def settled_step(period: int = 30, margin: float = 4.0) -> int:
    """The current TOTP step, first waiting out the last `margin` seconds of a step so that
    a short test sequence stays inside it."""
    t = time.time()
    if t % period > period - margin:
        time.sleep(period - t % period + 0.05)
    return int(time.time() // period)


@pytest.fixture
def step() -> int:
    return settled_step()


def error_of(excinfo: pytest.ExceptionInfo) -> tuple[str, int, str]:
    """(AWS code, HTTP status, message) of a botocore ClientError."""
    err = excinfo.value.response
    return (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"],
            err["Error"].get("Message", ""))


def signed_post(url: str, body: bytes | str, key: tuple[str, str], *, service: str = "iam",
                headers: dict[str, str] | None = None, tamper: bytes | None = None):
    """POST `body` to `url`, signed by botocore's own SigV4 signer (the body replaced by
    `tamper` after signing, if given). Answers the httpx response."""
    import httpx
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = body.encode() if isinstance(body, str) else body
    request = AWSRequest(method="POST", url=url, data=data, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", **(headers or {})})
    SigV4Auth(Credentials(*key), service, "us-east-1").add_auth(request)
    with httpx.Client(trust_env=False, timeout=15) as client:
        return client.post(url, content=tamper if tamper is not None else data,
                           headers=dict(request.headers.items()))


def aws_error(response) -> tuple[str, int]:
    """(Code, status) of an AWS ErrorResponse, checking its XML shape on the way."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(response.content)
    ns = root.tag.partition("}")[0] + "}"
    assert root.tag.endswith("ErrorResponse"), response.text
    error = root.find(f"{ns}Error")
    assert error is not None and error.findtext(f"{ns}Type") in ("Sender", "Receiver")
    assert error.findtext(f"{ns}Message")
    assert root.findtext(f"{ns}RequestId")
    return error.findtext(f"{ns}Code") or "", response.status_code


def decode_qr(png: bytes) -> list[str]:
    """The texts of every QR code zxing-cpp finds in the PNG (decoded by Pillow, which
    also refuses a malformed PNG)."""
    import io

    import zxingcpp
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        gray = image.convert("L")
    return [r.text for r in zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode)]

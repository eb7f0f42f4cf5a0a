"""The real aws CLI drives foblab unchanged: AWS_ENDPOINT_URL (and --endpoint-url), keys
from the environment, no AWS configuration read from the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aws_helpers import Otp, decode_qr

AWS = str(Path(sys.executable).parent / "aws")
DENIED = "MultiFactorAuthentication failed with invalid MFA one time pass code."


@pytest.fixture
def aws(daemon, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": daemon.access_key_id,
        "AWS_SECRET_ACCESS_KEY": daemon.secret_access_key,
        "AWS_ENDPOINT_URL": daemon.url, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard", "AWS_PAGER": "", "HOME": str(tmp_path),
    })

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([AWS, *args, "--output", "json"], env=env, capture_output=True,
                              text=True, timeout=60)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


def test_aws_cli_virtual_device_flow(aws, daemon, tmp_path: Path, step: int) -> None:
    seed_file, qr_file = tmp_path / "seed.txt", tmp_path / "qr.png"
    out = json.loads(aws("iam", "create-virtual-mfa-device", "--virtual-mfa-device-name",
                         "cli-bob", "--outfile", str(seed_file), "--bootstrap-method",
                         "Base32StringSeed").stdout)
    serial = out["VirtualMFADevice"]["SerialNumber"]
    assert serial == "arn:aws:iam::123456789012:mfa/cli-bob"
    otp = Otp(seed_file.read_text().strip())

    aws("iam", "enable-mfa-device", "--user-name", "bob", "--serial-number", serial,
        "--authentication-code1", otp.at(step - 1), "--authentication-code2", otp.at(step))
    listed = json.loads(aws("iam", "list-mfa-devices", "--user-name", "bob").stdout)
    assert [d["SerialNumber"] for d in listed["MFADevices"]] == [serial]

    # --endpoint-url works as well as AWS_ENDPOINT_URL.
    creds = json.loads(aws("sts", "get-session-token", "--endpoint-url", daemon.url,
                           "--serial-number", serial, "--token-code", otp.at(step + 1),
                           "--duration-seconds", "3600").stdout)["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    replay = aws("sts", "get-session-token", "--serial-number", serial, "--token-code",
                 otp.at(step + 1), ok=False)
    assert replay.returncode != 0
    assert "AccessDenied" in replay.stderr and DENIED in replay.stderr

    bad = aws("iam", "resync-mfa-device", "--user-name", "bob", "--serial-number", serial,
              "--authentication-code1", "1234567", "--authentication-code2", "123456", ok=False)
    assert bad.returncode != 0 and "ValidationError" in bad.stderr
    assert "1234567" not in bad.stderr
    aws("iam", "resync-mfa-device", "--user-name", "bob", "--serial-number", serial,
        "--authentication-code1", otp.at(step + 2), "--authentication-code2", otp.at(step + 3))

    aws("iam", "deactivate-mfa-device", "--user-name", "bob", "--serial-number", serial)
    aws("iam", "delete-virtual-mfa-device", "--serial-number", serial)
    gone = aws("iam", "get-mfa-device", "--serial-number", serial, ok=False)
    assert gone.returncode != 0 and "NoSuchEntity" in gone.stderr

    aws("iam", "create-virtual-mfa-device", "--virtual-mfa-device-name", "cli-qr",
        "--outfile", str(qr_file), "--bootstrap-method", "QRCodePNG")
    (uri,) = decode_qr(qr_file.read_bytes())
    assert uri.startswith("otpauth://totp/cli-qr@123456789012?secret=")


def test_aws_cli_refuses_an_unknown_key(aws, daemon) -> None:
    done = subprocess.run(
        [AWS, "iam", "list-virtual-mfa-devices"], capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
             "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNUNKNOWN12", "AWS_SECRET_ACCESS_KEY": "x" * 40,
             "AWS_ENDPOINT_URL": daemon.url, "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
             "AWS_MAX_ATTEMPTS": "1"})
    assert done.returncode != 0 and "InvalidClientTokenId" in done.stderr

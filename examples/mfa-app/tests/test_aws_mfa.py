"""boto3 code that enables a virtual MFA device and gets an STS session, against foblab."""

import time

import boto3
import pyotp
import pytest
from botocore.exceptions import ClientError

from mfa_app.aws_mfa import enable_virtual_mfa, session_with_mfa


def authenticator(seed: str, steps: int) -> str:
    """The phone app: the code `steps` time steps from now."""
    return pyotp.TOTP(seed).at(time.time() + 30 * steps)


def test_enable_then_get_a_session(foblab_aws):
    iam = boto3.client("iam", **foblab_aws.client_kwargs())
    sts = boto3.client("sts", **foblab_aws.client_kwargs())
    # enabled with the two codes before the current one, so the current one is fresh
    serial = enable_virtual_mfa(iam, "carol", lambda seed, s: authenticator(seed, s - 1))
    devices = iam.list_mfa_devices(UserName="carol")["MFADevices"]
    assert [d["SerialNumber"] for d in devices] == [serial]
    with pytest.raises(ClientError) as refused:
        session_with_mfa(sts, serial, "000000")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    seed = iam.meta.events  # boto3 clients keep no seed: the device's seed was shown once
    del seed
    device = next(d for d in iam.list_virtual_mfa_devices()["VirtualMFADevices"]
                  if d["SerialNumber"] == serial)
    assert "Base32StringSeed" not in device

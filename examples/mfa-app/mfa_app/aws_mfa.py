"""What an application does with AWS MFA: enable a virtual device for a user, then get an
STS session with a code. `codes` is the authenticator app (a callable giving the code for a
base32 seed at an offset of whole steps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def enable_virtual_mfa(iam: Any, user: str, codes: Callable[[str, int], str]) -> str:
    device = iam.create_virtual_mfa_device(VirtualMFADeviceName=f"{user}-phone")
    serial = device["VirtualMFADevice"]["SerialNumber"]
    seed = device["VirtualMFADevice"]["Base32StringSeed"].decode()
    iam.enable_mfa_device(UserName=user, SerialNumber=serial,
                          AuthenticationCode1=codes(seed, -1), AuthenticationCode2=codes(seed, 0))
    return serial


def session_with_mfa(sts: Any, serial: str, code: str) -> dict[str, Any]:
    answer: dict[str, Any] = sts.get_session_token(SerialNumber=serial, TokenCode=code,
                                                   DurationSeconds=900)
    return answer["Credentials"]

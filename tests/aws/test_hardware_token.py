"""A hardware token through the AWS calls: an emulated display token on a real PTY,
registered by its printed serial from its factory seed, its codes read over the serial
port (PEEK, QA mode) and typed into EnableMFADevice and GetSessionToken."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import serial
from aws_helpers import FOBLAB, ROOT, error_of
from botocore.exceptions import ClientError

from protocol.connection import TokenClient, pyserial_reader

DENIED = "MultiFactorAuthentication failed with invalid MFA one time pass code."
SERIAL = "GAHT20240007"


@pytest.fixture
def token(tmp_path: Path):
    """`foblab sim run --qa` on a PTY; answers its ready line (port, serial, seed file)."""
    link = tmp_path / "token"
    proc = subprocess.Popen([*FOBLAB, "sim", "run", "--qa", "--serial", SERIAL, "--pty-link",
                             str(link), "--state-dir", str(tmp_path / "state"), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no ready line"
        yield json.loads(line) | {"link": str(link)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_codes(port: str, count: int) -> list[str]:
    link = serial.serial_for_url(port, timeout=2, write_timeout=2)
    try:
        return list(TokenClient(pyserial_reader(link), link.write).peek(count).codes)
    finally:
        link.close()


def test_hardware_token_through_iam_and_sts(daemon, iam, sts, token) -> None:
    assert token["serial"] == SERIAL
    # The emulator hands over the factory seed as a vendor does: a PSKC file to import.
    answer = httpx.post(f"{daemon.base}/v1/tokens/import", trust_env=False, timeout=10,
                        headers={"Authorization": f"Bearer {daemon.admin_key}"},
                        json={"format": "pskc",
                              "content": Path(token["seed_file"]).read_text()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["serials"] == [SERIAL]

    codes = read_codes(token["link"], 8)  # this step's code and the next seven
    with pytest.raises(ClientError) as exc:
        iam.enable_mfa_device(UserName="carol", SerialNumber=SERIAL,
                              AuthenticationCode1=codes[1], AuthenticationCode2=codes[0])
    assert error_of(exc)[:2] == ("InvalidAuthenticationCode", 403)
    iam.enable_mfa_device(UserName="carol", SerialNumber=SERIAL,
                          AuthenticationCode1=codes[0], AuthenticationCode2=codes[1])
    assert [d["SerialNumber"] for d in iam.list_mfa_devices(UserName="carol")["MFADevices"]] \
        == [SERIAL]
    assert iam.get_mfa_device(SerialNumber=SERIAL)["UserName"] == "carol"
    assert SERIAL not in [d["SerialNumber"] for d in
                          iam.list_virtual_mfa_devices()["VirtualMFADevices"]]

    sts.get_session_token(SerialNumber=SERIAL, TokenCode=codes[2], DurationSeconds=900)
    for code in (codes[2], codes[1]):  # replayed, and older than the last accepted
        with pytest.raises(ClientError) as exc:
            sts.get_session_token(SerialNumber=SERIAL, TokenCode=code)
        assert error_of(exc) == ("AccessDenied", 403, DENIED)

    iam.resync_mfa_device(UserName="carol", SerialNumber=SERIAL,
                          AuthenticationCode1=codes[5], AuthenticationCode2=codes[6])
    sts.get_session_token(SerialNumber=SERIAL, TokenCode=codes[7])

    # Hardware devices are not virtual ones: no tags, no DeleteVirtualMFADevice.
    for call in (lambda: iam.delete_virtual_mfa_device(SerialNumber=SERIAL),
                 lambda: iam.tag_mfa_device(SerialNumber=SERIAL,
                                            Tags=[{"Key": "k", "Value": "v"}])):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc)[:2] == ("NoSuchEntity", 404)
    iam.deactivate_mfa_device(UserName="carol", SerialNumber=SERIAL)
    assert iam.list_mfa_devices(UserName="carol")["MFADevices"] == []

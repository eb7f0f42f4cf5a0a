"""No AWS answer holds a seed, looked for by value (raw, hex, base32, base64; padded or
not; upper and lower case), except the one CreateVirtualMFADevice answer that hands the
seed out, as AWS's does. Every HTTP answer botocore receives in a full flow is recorded,
for a virtual device and for a hardware token registered through the API."""

from __future__ import annotations

import base64
import secrets

import httpx
import pyotp
from aws_helpers import Otp, settled_step


def encodings(seed: bytes) -> set[bytes]:
    out = {seed}
    b32 = base64.b32encode(seed)
    for text in (seed.hex(), b32.decode(), base64.b64encode(seed).decode(),
                 base64.urlsafe_b64encode(seed).decode(),
                 base64.b64encode(b32).decode(),  # AWS's blob of the base32 text
                 base64.b64encode(b32.rstrip(b"=")).decode()):
        for form in (text, text.rstrip("=")):
            out |= {form.encode(), form.lower().encode(), form.upper().encode()}
    return out


def test_no_aws_answer_but_the_creation_holds_a_seed(daemon) -> None:
    seen: list[tuple[str, bytes]] = []

    def record(http_response, model, **_: object) -> None:
        head = b"".join(f"{k}: {v}\n".encode() for k, v in http_response.headers.items())
        seen.append((model.name, head + http_response.content))

    iam, sts = daemon.client("iam"), daemon.client("sts")
    for client in (iam, sts):
        client.meta.events.register("after-call", record)
    step = settled_step(margin=6.0)
    made = iam.create_virtual_mfa_device(VirtualMFADeviceName="byval-dev")["VirtualMFADevice"]
    virtual_seed = base64.b32decode(made["Base32StringSeed"])
    creation = seen.pop()
    assert creation[0] == "CreateVirtualMFADevice"
    serial, otp = made["SerialNumber"], Otp(made["Base32StringSeed"].decode())

    hardware_seed = secrets.token_bytes(20)
    hw = f"BYVAL-HW-{secrets.token_hex(3)}"
    r = httpx.post(daemon.base + "/v1/tokens", json={"serial": hw, "secret_hex":
                                                      hardware_seed.hex()},
                   headers={"Authorization": f"Bearer {daemon.admin_key}"}, timeout=10)
    assert r.status_code == 201, r.text
    hw_otp = pyotp.TOTP(base64.b32encode(hardware_seed).decode())

    for user, dev, codes in (("byval-vic", serial, otp.at),
                             ("byval-hal", hw, lambda s: hw_otp.generate_otp(s))):
        iam.enable_mfa_device(UserName=user, SerialNumber=dev,
                              AuthenticationCode1=codes(step - 1),
                              AuthenticationCode2=codes(step))
        creds = sts.get_session_token(SerialNumber=dev, TokenCode=codes(step + 1),
                                      DurationSeconds=900)["Credentials"]
        temp = daemon.client("iam", key=(creds["AccessKeyId"], creds["SecretAccessKey"]),
                             token=creds["SessionToken"])
        temp.meta.events.register("after-call", record)
        temp.get_mfa_device(SerialNumber=dev)
        iam.list_mfa_devices(UserName=user)
        iam.resync_mfa_device(UserName=user, SerialNumber=dev,
                              AuthenticationCode1=codes(step + 2),
                              AuthenticationCode2=codes(step + 3))
    iam.tag_mfa_device(SerialNumber=serial, Tags=[{"Key": "k", "Value": "v"}])
    iam.list_mfa_device_tags(SerialNumber=serial)
    iam.list_virtual_mfa_devices()
    iam.list_mfa_devices()
    for user, dev in (("byval-vic", serial), ("byval-hal", hw)):
        iam.deactivate_mfa_device(UserName=user, SerialNumber=dev)
    iam.delete_virtual_mfa_device(SerialNumber=serial)
    assert len(seen) >= 17
    leaks = [f"{name} seed in {what}" for name, seed in (("virtual", virtual_seed),
                                                          ("hardware", hardware_seed))
             for what, raw in seen for form in encodings(seed) if form in raw]
    assert leaks == []
    # and the one answer that hands it out does hold it (the check can find one)
    assert any(form in creation[1] for form in encodings(virtual_seed))

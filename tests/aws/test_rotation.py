"""A seed-key rotation on the running daemon re-encrypts the AWS tables' secrets too: the
same access key still signs, and the same virtual device still verifies, under the new key."""

from __future__ import annotations

import json
import sqlite3

import httpx
from aws_helpers import Otp, foblab


def _sealed(db) -> dict[str, bytes]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT access_key_id, sealed FROM aws_access_keys").fetchall()
    return {akid: bytes(sealed) for akid, sealed in rows}


def test_rotation_keeps_access_keys_and_seeds_usable(daemon, iam, sts, step: int) -> None:
    created = iam.create_virtual_mfa_device(VirtualMFADeviceName="rotate-me")["VirtualMFADevice"]
    serial = created["SerialNumber"]
    otp = Otp(created["Base32StringSeed"].decode("ascii"))
    iam.enable_mfa_device(UserName="rotor", SerialNumber=serial,
                          AuthenticationCode1=otp.at(step - 1), AuthenticationCode2=otp.at(step))
    key_before = daemon.key_file.read_bytes()
    sealed_before = _sealed(daemon.db)
    admin = {"Authorization": f"Bearer {daemon.admin_key}"}

    # The data key: every sealed secret resealed under a new one; the key file stays.
    answer = httpx.post(f"{daemon.base}/v1/admin/rotate-key", headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text
    # at least this device's seed and the fixture's access key
    assert answer.json()["resealed"] >= 2 and answer.json()["healthy"] is True
    assert daemon.key_file.read_bytes() == key_before
    sealed_after = _sealed(daemon.db)
    assert sealed_after.keys() == sealed_before.keys()
    assert all(sealed_after[k] != sealed_before[k] for k in sealed_before)
    # The master key: a new key file; the data keys re-wrapped, the secrets untouched.
    answer = httpx.post(f"{daemon.base}/v1/admin/rotate-key", params={"master": "true"},
                        headers=admin, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "master" and answer.json()["rewrapped"] == 1
    assert daemon.key_file.read_bytes() != key_before
    assert _sealed(daemon.db) == sealed_after
    # The access key still signs (its secret was resealed and the endpoint follows the new
    # box), and the device's seed still verifies its next code.
    assert iam.get_mfa_device(SerialNumber=serial)["UserName"] == "rotor"
    creds = sts.get_session_token(SerialNumber=serial, TokenCode=otp.at(step + 1))
    assert creds["Credentials"]["AccessKeyId"].startswith("ASIA")

    # The CLI does the same through the API, and the verifier key may not.
    out = foblab("validator", "rotate-key", "--url", daemon.base, "--key", daemon.admin_key,
                 "--json")
    assert json.loads(out.stdout)["resealed"] >= 2
    out = foblab("validator", "rotate-key", "--master", "--url", daemon.base, "--key",
                 daemon.admin_key)
    assert out.stdout.startswith("re-wrapped 1 data keys under master key ")
    verifier = (daemon.folder / "verifier.key").read_text().strip()
    refused = httpx.post(f"{daemon.base}/v1/admin/rotate-key",
                         headers={"Authorization": f"Bearer {verifier}"}, timeout=30)
    assert refused.status_code == 403
    assert iam.get_mfa_device(SerialNumber=serial)["UserName"] == "rotor"


def test_an_access_key_created_during_a_rotation_is_not_left_under_the_old_key(
        tmp_path) -> None:
    """The access key's secret is sealed inside its insert transaction, so a rotation
    (whose reseal needs the same write lock) either reseals the row or comes first."""
    import threading

    from validator.aws.store import SQLiteAwsStore
    from validator.keys import open_box
    from validator.service import Validator
    from validator.store import SQLiteStore

    validator = Validator.open(tmp_path / "v.db")
    entered, proceed = threading.Event(), threading.Event()

    class SlowBox:  # the validator's current box, but the first seal waits
        def __getattr__(self, name: str):
            return getattr(validator.box, name)

        def seal(self, aad: str, data: bytes) -> bytes:
            sealed = validator.box.seal(aad, data)
            if not entered.is_set():
                entered.set()
                assert proceed.wait(10)
            return sealed

    store = SQLiteAwsStore(tmp_path / "v.db", SlowBox, busy_timeout_ms=20_000)  # type: ignore[arg-type]
    created: list[tuple[str, str]] = []
    maker = threading.Thread(target=lambda: created.append(store.create_key(0.0)))
    maker.start()
    assert entered.wait(10)
    rotator = threading.Thread(target=validator.rotate_key)
    rotator.start()
    rotator.join(0.3)
    proceed.set()
    maker.join(20)
    rotator.join(20)
    assert created and not rotator.is_alive()
    store.close()
    validator.close()
    # Only the new key file is left: the access key's secret must open under it.
    tokens = SQLiteStore(tmp_path / "v.db")
    fresh = SQLiteAwsStore(tmp_path / "v.db", open_box(tokens, tmp_path / "v.db.key", settle=False))
    tokens.close()
    try:
        akid, secret = created[0]
        found = fresh.credentials(akid)
        assert found is not None and found.secret == secret
    finally:
        fresh.close()

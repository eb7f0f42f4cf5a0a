"""Seed-file import: every PSKC dialect, key policy, per-key outcomes, exact refusals, CSV.

Every file here is written by the test (python-pskc writes RFC 6030 PSKC, plain, AES with a
MAC, or PBKDF2; the older draft dialects python-pskc only reads are hand-written XML) or is
an RFC 6030 figure typed in as a test vector under tests/data/rfc6030. Nothing outside the
repository is read: the vendors' own files are the interoperability test's
(test_interop_samples.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from pathlib import Path
from typing import Any

import pskc
import pyotp
import pytest
from pg import Database  # type: ignore[import-not-found]

from protocol import PSKC_ALGORITHMS
from validator.errors import DuplicateSerial, InvalidAuthenticationCode, SeedFileError
from validator.importers import SkipReason
from validator.otp import hotp, totp
from validator.service import Validator

T0 = 1_700_000_000.0  # 2023-11-14
DATA = Path(__file__).resolve().parents[1] / "data"
RFC = DATA / "rfc6030"
PSK = "12345678901234567890123456789012"
SECRET = b"12345678901234567890"  # RFC 4226's test secret: 20 bytes
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
HOTP_URI = PSKC_NS + ":hotp"
TOTP_URI = PSKC_NS + ":totp"
B64 = base64.b64encode(SECRET).decode()


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def write_pskc(*keys: dict[str, Any], encryption: str | None = None) -> bytes:
    """A PSKC file written by python-pskc: one key per dict (python-pskc's key attributes,
    plus `expiry`/`start`/`usage` for the key policy); `encryption` "aes" (pre-shared key
    PSK, with a MAC) or "pbkdf2" (passphrase "qwerty")."""
    container = pskc.PSKC()
    for spec in keys:
        spec = dict(spec)
        expiry, start, usage = spec.pop("expiry", None), spec.pop("start", None), \
            spec.pop("usage", None)
        key = container.add_key(**spec)
        if expiry is not None:
            key.policy.expiry_date = when(expiry)
        if start is not None:
            key.policy.start_date = when(start)
        if usage is not None:
            key.policy.key_usage = list(usage)
    if encryption == "aes":
        container.encryption.setup_preshared_key(key=bytes.fromhex(PSK))
        container.mac.setup()
    elif encryption == "pbkdf2":
        container.encryption.setup_pbkdf2("qwerty", iterations=1000)
        container.mac.setup()
    out = io.BytesIO()
    container.write(out)
    return out.getvalue()


def key(serial: str, *, kind: str = "totp", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"serial": serial, "secret": SECRET,
                            "algorithm": TOTP_URI if kind == "totp" else HOTP_URI}
    if kind == "totp":
        spec.setdefault("time_interval", 30)
    spec.update(extra)
    return spec


def reasons(result: Any) -> dict[str, str]:
    return {s.serial: s.reason.value for s in result.skipped}


def enable_and_verify(v: Validator, serial: str, secret: bytes, now: float) -> None:
    """The token works: enabled with two consecutive codes, then its next code accepted."""
    info = v.get_token(serial, now=now)
    if info.kind == "totp":
        period = info.period
        step = int((now + info.offset_seconds - info.t0) // period)
        codes = [totp(secret, info.t0 + (step + i) * period - info.offset_seconds + 1,
                      info.digits, info.hash, period) for i in (-1, 0, 1)]
        v.enable("alice", serial, codes[0], codes[1], now=now)
        assert v.verify("alice", codes[2], now=now + period).accepted
    else:
        n = 0 if info.watermark is None else info.watermark + 1
        c = [hotp(secret, n + i, info.digits, info.hash) for i in range(3)]
        v.enable("alice", serial, c[0], c[1], now=now)
        assert v.verify("alice", c[2], now=now).accepted
    v.deactivate("alice", serial, now=now + 60)


# -- RFC 6030's figures --------------------------------------------------------------------

@pytest.mark.parametrize("figure,args,serial,secret,digits", [
    ("figure3.xml", {}, "987654321", SECRET, 8),
    ("figure5.xml", {}, "987654321", SECRET, 8),
    ("figure6.xml", {"key_hex": PSK}, "987654321", SECRET, 8),
    ("figure7.xml", {"passphrase": "qwerty"}, "987654321", SECRET, 8),
])
def test_rfc6030_figures_import_and_verify(validator: Validator, figure: str,
                                           args: dict[str, str], serial: str, secret: bytes,
                                           digits: int) -> None:
    result = validator.import_seed_file((RFC / figure).read_bytes(), now=T0, **args)
    assert result.imported == [serial]
    info = validator.get_token(serial)
    assert (info.kind, info.digits, info.hash) == ("hotp", digits, "sha1")
    enable_and_verify(validator, serial, secret, T0)


def test_figure5_pin_key_is_skipped_and_named(validator: Validator) -> None:
    result = validator.import_seed_file((RFC / "figure5.xml").read_bytes(), now=T0)
    assert [s.to_json() for s in result.skipped] == [
        {"serial": "987654321", "reason": "pin_key", "detail": "a PIN key, not an OTP key"}]


def test_figure4_key_by_reference_is_skipped_as_no_secret(validator: Validator) -> None:
    result = validator.import_seed_file((RFC / "figure4.xml").read_bytes(), now=T0)
    assert result.imported == [] and reasons(result) == {"987654321": "no_secret"}
    assert validator.list_tokens() == []


def test_figure2_four_byte_secret_is_refused_naming_key_and_length(
        validator: Validator, database: Database) -> None:
    with pytest.raises(SeedFileError, match="12345678: the secret is 4 bytes; 16 to 128"):
        validator.import_seed_file((RFC / "figure2.xml").read_bytes(), now=T0)
    legacy = database.open(min_secret_bytes=10)
    with pytest.raises(SeedFileError, match="the secret is 4 bytes; 10 to 128"):
        legacy.import_seed_file((RFC / "figure2.xml").read_bytes(), now=T0)
    legacy.close()


# -- dialects: what python-pskc writes, and the drafts before RFC 6030 -----------------------

def test_pskc_written_by_python_pskc_every_encryption(validator: Validator) -> None:
    specs = [key("W-TOTP", response_length=8, algorithm_suite="HMAC-SHA256", time_interval=60),
             key("W-HOTP", kind="hotp", counter=41, response_length=6)]
    for n, (enc, args) in enumerate([(None, {}), ("aes", {"key_hex": PSK}),
                                     ("pbkdf2", {"passphrase": "qwerty"})]):
        data = write_pskc(*[{**s, "serial": f"{s['serial']}-{n}"} for s in specs],
                          encryption=enc)
        result = validator.import_seed_file(data, now=T0, **args)
        assert result.imported == [f"W-TOTP-{n}", f"W-HOTP-{n}"] and result.skipped == []
        t, h = validator.get_token(f"W-TOTP-{n}"), validator.get_token(f"W-HOTP-{n}")
        assert (t.kind, t.digits, t.hash, t.period) == ("totp", 8, "sha256", 60)
        assert (h.kind, h.digits, h.watermark) == ("hotp", 6, 40)
        enable_and_verify(validator, f"W-TOTP-{n}", SECRET, T0 + 1000 * n)
        enable_and_verify(validator, f"W-HOTP-{n}", SECRET, T0 + 1000 * n)


def _draft00(serial: str) -> str:
    """draft-hoyer-keyprov-portable-symmetric-key-container-00: <SecretContainer>, bare
    algorithm names, <Data Name=...> with base64 big-endian integers."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<SecretContainer xmlns="http://www.openauthentication.org/OATH/2006/08/PSKC" version="1.2">
  <EncryptionMethod algorithm="NONE"/>
  <Device>
    <DeviceId><Manufacturer>Acme</Manufacturer><SerialNo>{serial}</SerialNo></DeviceId>
    <Secret SecretAlgorithm="HOTP" SecretId="{serial}">
      <Usage><ResponseFormat format="DECIMAL" length="8"/></Usage>
      <Data Name="SECRET"><Value>{B64}</Value></Data>
      <Data Name="COUNTER"><Value>{base64.b64encode((7).to_bytes(8, "big")).decode()}</Value></Data>
    </Secret>
  </Device>
</SecretContainer>"""


def _draft01(serial: str) -> str:
    """draft-hoyer-keyprov-portable-symmetric-key-container-01: <KeyContainer> of the
    container namespace, KeyAlgorithm="TOTP", TIME_INTERVAL and TIME_DRIFT as <Data Name>."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:container" Version="1.0">
  <Device>
    <DeviceId><Manufacturer>Acme</Manufacturer><SerialNo>{serial}</SerialNo></DeviceId>
    <Key KeyAlgorithm="TOTP" KeyId="{serial}">
      <Usage OTP="true"><ResponseFormat format="DECIMAL" length="6"/></Usage>
      <Data Name="SECRET"><Value>{B64}</Value></Data>
      <Data Name="TIME_INTERVAL"><Value>60</Value></Data>
      <Data Name="TIME_DRIFT"><Value>2</Value></Data>
    </Key>
  </Device>
</KeyContainer>"""


def _ietf02(serial: str) -> str:
    """draft-ietf-keyprov-pskc-02: `urn:...:pskc#hotp`, <Usage>/<ResponseFormat>, a Local
    PIN policy and its PIN key."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc">
  <Device>
    <DeviceInfo><Manufacturer>Acme</Manufacturer><SerialNo>{serial}</SerialNo></DeviceInfo>
    <Key KeyId="{serial}" KeyAlgorithm="urn:ietf:params:xml:ns:keyprov:pskc#hotp">
      <Usage><ResponseFormat Length="8" Encoding="DECIMAL"/></Usage>
      <Data><Secret><PlainValue>{B64}</PlainValue></Secret>
            <Counter><PlainValue>3</PlainValue></Counter></Data>
      <Policy><PINPolicy PINKeyId="{serial}-PIN" PINUsageMode="Local"/>
              <KeyUsage>OTP</KeyUsage></Policy>
    </Key>
    <Key KeyId="{serial}-PIN" KeyAlgorithm="urn:ietf:params:xml:ns:keyprov:pskc#pin">
      <Data><Secret><PlainValue>MTIzNA==</PlainValue></Secret></Data>
    </Key>
  </Device>
</KeyContainer>"""


def _profiles01(serial: str) -> str:
    """draft-hoyer-keyprov-pskc-algorithm-profiles-01: `#totp` in the pskc:1.0 namespace,
    <Usage OTP="true">, <Time>, <TimeInterval>, <TimeDrift>."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc:1.0">
  <Device>
    <DeviceInfo><Manufacturer>Acme</Manufacturer><SerialNo>{serial}</SerialNo></DeviceInfo>
    <Key KeyAlgorithm="urn:ietf:params:xml:ns:keyprov:pskc#totp" KeyId="{serial}">
      <Usage OTP="true"><ResponseFormat Length="8" Format="DECIMAL"/></Usage>
      <Data><Secret><PlainValue>{B64}</PlainValue></Secret>
            <Time><PlainValue>0</PlainValue></Time>
            <TimeInterval><PlainValue>30</PlainValue></TimeInterval>
            <TimeDrift><PlainValue>4</PlainValue></TimeDrift></Data>
    </Key>
  </Device>
</KeyContainer>"""


def _vendor_http(serial: str) -> str:
    """A vendor file written to draft-ietf-keyprov-pskc-00/01: `http://www.ietf.org/keyprov/
    pskc#totp`, RFC 6030's layout otherwise."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc">
  <KeyPackage>
    <DeviceInfo><Manufacturer>Vendor</Manufacturer><SerialNo>{serial}</SerialNo></DeviceInfo>
    <Key Id="{serial}" Algorithm="http://www.ietf.org/keyprov/pskc#totp">
      <AlgorithmParameters><ResponseFormat Length="6" Encoding="DECIMAL"/></AlgorithmParameters>
      <Data><Secret><PlainValue>{B64}</PlainValue></Secret>
            <TimeInterval><PlainValue>60</PlainValue></TimeInterval></Data>
    </Key>
  </KeyPackage>
</KeyContainer>"""


@pytest.mark.parametrize("writer,serial,expect", [
    (_draft00, "D00-1", {"kind": "hotp", "digits": 8, "watermark": 6}),
    (_draft01, "D01-1", {"kind": "totp", "digits": 6, "period": 60, "offset": 120.0}),
    (_ietf02, "I02-1", {"kind": "hotp", "digits": 8, "watermark": 2}),
    (_profiles01, "P01-1", {"kind": "totp", "digits": 8, "period": 30, "offset": 120.0}),
    (_vendor_http, "V-1", {"kind": "totp", "digits": 6, "period": 60, "offset": 0.0}),
])
def test_draft_dialects_import_with_their_parameters(validator: Validator, writer: Any,
                                                     serial: str, expect: dict[str, Any]
                                                     ) -> None:
    result = validator.import_seed_file(writer(serial), now=T0)
    assert result.imported == [serial]
    info = validator.get_token(serial, now=T0)
    assert (info.kind, info.digits) == (expect["kind"], expect["digits"])
    if info.kind == "hotp":
        assert info.watermark == expect["watermark"]
    else:
        assert info.period == expect["period"]
        assert info.offset_seconds == expect["offset"]  # the drift, in intervals
    enable_and_verify(validator, serial, SECRET, T0)


def test_ietf02_pin_key_skipped(validator: Validator) -> None:
    result = validator.import_seed_file(_ietf02("I02-2"), now=T0)
    assert reasons(result) == {"I02-2": "pin_key"}  # the device serial the PIN key is on


def test_algorithm_table_covers_each_dialect() -> None:
    for uri in ("HOTP", "totp", "http://www.ietf.org/keyprov/pskc#hotp",
                "urn:ietf:params:xml:ns:keyprov:pskc#totp", HOTP_URI, TOTP_URI):
        assert PSKC_ALGORITHMS[uri.lower()] in ("hotp", "totp")


# -- key policy ----------------------------------------------------------------------------

def test_policy_decides_each_key(validator: Validator) -> None:
    data = write_pskc(
        key("P-OK"),
        key("P-EXPIRED", expiry="2022-09-01T00:00:00"),
        key("P-LATER", start="2030-01-01T00:00:00"),
        key("P-CR", usage=["CR"]),
        key("P-OTP", usage=["OTP", "CR"], expiry="2037-01-01T00:00:00"))
    result = validator.import_seed_file(data, now=T0)
    assert result.imported == ["P-OK", "P-OTP"]
    assert reasons(result) == {"P-EXPIRED": "expired", "P-LATER": "not_yet_valid",
                               "P-CR": "usage_not_otp"}
    details = {s.serial: s.detail for s in result.skipped}
    assert details["P-EXPIRED"] == "expired 2022-09-01T00:00:00Z"
    assert details["P-LATER"] == "valid from 2030-01-01T00:00:00Z"


def _policy_xml(serial: str, policy: str) -> str:
    return f"""<?xml version="1.0"?>
<KeyContainer Version="1.0" xmlns="{PSKC_NS}"><KeyPackage>
  <DeviceInfo><SerialNo>{serial}</SerialNo></DeviceInfo>
  <Key Id="{serial}" Algorithm="{TOTP_URI}">
    <Data><Secret><PlainValue>{B64}</PlainValue></Secret></Data>
    <Policy>{policy}</Policy>
  </Key></KeyPackage></KeyContainer>"""


@pytest.mark.parametrize("policy,reason", [
    ("<KeyUsage>OTP</KeyUsage><Geofence>52.1,4.3</Geofence>", "unknown_policy"),
    ('<PINPolicy PINUsageMode="Local" Colour="red"/>', "unknown_policy"),
    ("<NumberOfTransactions>10</NumberOfTransactions>", "unknown_policy"),
    ('<PINPolicy PINKeyId="x" PINUsageMode="Prepend"/>', "pin_policy"),
    ("<KeyUsage>Encrypt</KeyUsage>", "usage_not_otp"),
    ("<StartDate>2099-01-01T00:00:00Z</StartDate>", "not_yet_valid"),
    ("<ExpiryDate>2020-01-01T00:00:00Z</ExpiryDate>", "expired"),
])
def test_policy_elements_skip_the_key(validator: Validator, policy: str, reason: str) -> None:
    result = validator.import_seed_file(_policy_xml("POL-1", policy), now=T0)
    assert result.imported == [] and reasons(result) == {"POL-1": reason}


def test_expiry_is_kept_and_refused_at_verify(validator: Validator) -> None:
    expires = when("2023-11-15T00:00:00").timestamp()  # a day after T0
    data = write_pskc(key("EXP-1", expiry="2023-11-15T00:00:00"))
    validator.import_seed_file(data, now=T0)
    assert validator.get_token("EXP-1").expires == expires
    enable_and_verify(validator, "EXP-1", SECRET, T0)
    validator.enable("alice", "EXP-1", totp(SECRET, T0 + 90), totp(SECRET, T0 + 120),
                     now=T0 + 120)
    assert validator.verify("alice", totp(SECRET, T0 + 150), now=T0 + 150).accepted
    late = expires + 10
    result = validator.verify("alice", totp(SECRET, late), now=late)
    assert (result.accepted, result.reason.value) == (False, "expired")
    assert validator.get_token("EXP-1").failures == 0  # an expiry is no failed guess
    with pytest.raises(InvalidAuthenticationCode) as info:
        validator.resync("alice", "EXP-1", totp(SECRET, late - 30), totp(SECRET, late),
                         now=late)
    assert info.value.reason == "expired"


# -- per-key outcomes, all or nothing ------------------------------------------------------

def test_mixed_file_imports_the_otp_keys_and_lists_the_rest(validator: Validator) -> None:
    data = write_pskc(
        key("M-TOTP"), key("M-HOTP", kind="hotp"),
        {"serial": "M-OCRA", "secret": SECRET,
         "algorithm": PSKC_NS + ":OCRA-1:HOTP-SHA1-6:QN08"},
        {"serial": "M-PIN", "secret": b"1234", "algorithm": PSKC_NS + ":pin"},
        {"serial": "M-NOSECRET", "algorithm": TOTP_URI, "time_interval": 30},
        key("M-OLD", expiry="2020-01-01T00:00:00"),
        encryption="aes")
    result = validator.import_seed_file(data, key_hex=PSK, now=T0)
    assert result.imported == ["M-TOTP", "M-HOTP"]
    assert [s.to_json() for s in result.skipped] == [
        {"serial": "M-OCRA", "reason": "unsupported_algorithm",
         "detail": f"algorithm {PSKC_NS}:OCRA-1:HOTP-SHA1-6:QN08"},
        {"serial": "M-PIN", "reason": "pin_key", "detail": "a PIN key, not an OTP key"},
        {"serial": "M-NOSECRET", "reason": "no_secret",
         "detail": "no secret in the file (a key derived from a master key by reference, "
                   "or empty)"},
        {"serial": "M-OLD", "reason": "expired", "detail": "expired 2020-01-01T00:00:00Z"}]


def test_an_error_in_a_usable_key_imports_nothing(validator: Validator) -> None:
    good = write_pskc(key("A-1"), key("A-2"), encryption="aes")
    # Tamper with the second key's ciphertext: its MAC no longer matches.
    text = good.decode()
    i = text.rindex("<xenc:CipherValue>") + len("<xenc:CipherValue>")
    bad = text[:i] + ("B" if text[i] != "B" else "C") + text[i + 1:]
    with pytest.raises(SeedFileError, match=r"key 2 \(A-2\): wrong passphrase or key "
                       r"\(key_hex given\): the MAC check failed"):
        validator.import_seed_file(bad, key_hex=PSK, now=T0)
    assert validator.list_tokens() == []
    assert validator.audit(action="import")[-1].result == "refused"


def test_duplicates_in_file_and_registered(validator: Validator) -> None:
    data = write_pskc(key("DUP-1"), key("DUP-2"), key("DUP-1"))
    with pytest.raises(DuplicateSerial, match="repeated in the file: DUP-1"):
        validator.import_seed_file(data, now=T0)
    assert validator.list_tokens() == []
    validator.register_token("DUP-2", SECRET, now=T0)
    with pytest.raises(DuplicateSerial, match="already registered: DUP-2"):
        validator.import_seed_file(write_pskc(key("DUP-2")), now=T0)
    result = validator.import_seed_file(data, skip_duplicates=True, now=T0)
    assert result.imported == ["DUP-1"]
    assert [(s.serial, s.reason) for s in result.skipped] == [
        ("DUP-1", SkipReason.DUPLICATE_IN_FILE), ("DUP-2", SkipReason.ALREADY_REGISTERED)]


def test_dry_run_checks_everything_and_writes_nothing(validator: Validator) -> None:
    validator.register_token("DRY-0", SECRET, now=T0)
    audit_before = len(validator.audit(limit=1000))
    data = write_pskc(key("DRY-0"), key("DRY-1"), key("DRY-OLD", expiry="2020-01-01T00:00:00"),
                      encryption="pbkdf2")
    with pytest.raises(DuplicateSerial, match="DRY-0"):
        validator.import_seed_file(data, passphrase="qwerty", dry_run=True, now=T0)
    result = validator.import_seed_file(data, passphrase="qwerty", dry_run=True,
                                        skip_duplicates=True, now=T0)
    assert (result.dry_run, result.imported) == (True, ["DRY-1"])
    assert reasons(result) == {"DRY-OLD": "expired", "DRY-0": "already_registered"}
    with pytest.raises(SeedFileError, match="wrong passphrase"):
        validator.import_seed_file(data, passphrase="azerty", dry_run=True, now=T0)
    assert [t.serial for t in validator.list_tokens()] == ["DRY-0"]
    assert len(validator.audit(limit=1000)) == audit_before


# -- exact refusals ------------------------------------------------------------------------

def test_wrong_key_or_passphrase_says_so(validator: Validator) -> None:
    fig6, fig7 = (RFC / "figure6.xml").read_bytes(), (RFC / "figure7.xml").read_bytes()
    with pytest.raises(SeedFileError, match="encrypted with a pre-shared key; give key_hex"):
        validator.import_seed_file(fig6, now=T0)
    with pytest.raises(SeedFileError, match=r"key 1 \(987654321\): wrong passphrase or key "
                       r"\(key_hex given\): the (padding|MAC) check failed"):
        validator.import_seed_file(fig6, key_hex="00" * 16, now=T0)
    with pytest.raises(SeedFileError, match="with a passphrase \\(PBKDF2\\); give the "
                       "passphrase"):
        validator.import_seed_file(fig7, now=T0)
    with pytest.raises(SeedFileError, match=r"wrong passphrase or key \(the passphrase "
                       r"given\): the (padding|MAC) check failed"):
        validator.import_seed_file(fig7, passphrase="azerty", now=T0)
    assert validator.list_tokens() == []


def test_rsa_key_transport_is_not_supported(validator: Validator) -> None:
    xml = f"""<?xml version="1.0"?>
<KeyContainer Version="1.0" xmlns="{PSKC_NS}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#"
    xmlns:xenc="http://www.w3.org/2001/04/xmlenc#">
  <EncryptionKey><ds:X509Data><ds:X509Certificate>MIIB</ds:X509Certificate></ds:X509Data>
  </EncryptionKey>
  <KeyPackage><DeviceInfo><SerialNo>RSA-1</SerialNo></DeviceInfo>
    <Key Id="RSA-1" Algorithm="{HOTP_URI}"><Data><Secret><EncryptedValue>
      <xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#rsa_1_5"/>
      <xenc:CipherData><xenc:CipherValue>AAAA</xenc:CipherValue></xenc:CipherData>
    </EncryptedValue></Secret></Data></Key></KeyPackage></KeyContainer>"""
    for args in ({}, {"key_hex": PSK}):
        with pytest.raises(SeedFileError, match="RSA key \\(asymmetric key transport\\): "
                           "not supported") as info:
            validator.import_seed_file(xml, now=T0, **args)
        assert "give key_hex" not in info.value.message


@pytest.mark.parametrize("data,fragment", [
    ({"time_interval": 0}, r"key 1 \(TS-1\): time step 0 is not positive"),
    ({"time_interval": -30}, r"key 1 \(TS-1\): time step -30 is not positive"),
])
def test_zero_or_negative_time_step_is_refused(validator: Validator, data: dict[str, Any],
                                               fragment: str) -> None:
    with pytest.raises(SeedFileError, match=fragment):
        validator.import_seed_file(write_pskc(key("TS-1", **data)), now=T0)


def test_counter_out_of_range_is_refused(validator: Validator) -> None:
    with pytest.raises(SeedFileError, match=r"key 1 \(CTR-1\): counter 18446744073709551615 "
                       r"is out of range"):
        validator.import_seed_file(write_pskc(key("CTR-1", kind="hotp", counter=2**64 - 1)),
                                   now=T0)


def test_one_secret_rule_for_every_way_in(validator: Validator, database: Database) -> None:
    short = b"1234567890"  # 10 bytes: a legacy fleet's 80 bits
    from validator.errors import BadSecret

    with pytest.raises(BadSecret, match="API-1: the secret is 10 bytes; 16 to 128"):
        validator.register_token("API-1", short, now=T0)
    with pytest.raises(SeedFileError, match="PSKC-1: the secret is 10 bytes"):
        validator.import_seed_file(write_pskc(key("PSKC-1", secret=short)), now=T0)
    with pytest.raises(SeedFileError, match="CSV-1: the secret is 10 bytes"):
        validator.import_seed_file(CSV_HEAD + f"CSV-1,{short.hex()},totp,6,30,sha1\n", "csv",
                                   now=T0)
    with pytest.raises(BadSecret, match="the secret is 129 bytes"):
        validator.register_token("API-2", b"x" * 129, now=T0)
    legacy = database.open(min_secret_bytes=10)
    legacy.register_token("API-1", short, now=T0)
    legacy.import_seed_file(write_pskc(key("PSKC-1", secret=short)), now=T0)
    with pytest.raises(BadSecret, match="the secret is 9 bytes; 10 to 128"):
        legacy.register_token("API-3", short[:9], now=T0)
    legacy.close()
    with pytest.raises(ValueError, match="min_secret_bytes"):
        database.open(min_secret_bytes=9)


# -- scale ---------------------------------------------------------------------------------

def many_keys(count: int, prefix: str = "K") -> bytes:
    """A PSKC file of `count` TOTP keys: one KeyPackage written by python-pskc, repeated
    with new serials (python-pskc itself takes minutes to write 10,000)."""
    text = write_pskc(key("SERIALX")).decode()
    start = text.index("<pskc:KeyPackage>")
    end = text.index("</pskc:KeyPackage>") + len("</pskc:KeyPackage>")
    package = text[start:end]
    return (text[:start] + "".join(package.replace("SERIALX", f"{prefix}{i:05d}")
                                   for i in range(count)) + text[end:]).encode()


def test_an_import_of_10000_keys(validator: Validator) -> None:
    seen: list[tuple[int, int]] = []
    result = validator.import_seed_file(many_keys(10_000), now=T0,
                                        progress=lambda done, total: seen.append((done, total)))
    assert len(result.imported) == 10_000 and result.skipped == []
    assert seen[0] == (500, 10_000) and seen[-1] == (10_000, 10_000)
    assert validator.get_token("K09999").period == 30
    enable_and_verify(validator, "K04321", SECRET, T0)


# -- CSV -----------------------------------------------------------------------------------

CSV_HEAD = "serial,secret_hex,kind,digits,period_or_counter,hash\n"
CSV = CSV_HEAD + """# comment lines are ignored
C-1,3132333435363738393031323334353637383930,totp,6,30,sha1
C-2,3132333435363738393031323334353637383930,hotp,8,5,sha256
C-3,3132333435363738393031323334353637383930,totp,,60,
"""


def test_csv_import(validator: Validator) -> None:
    result = validator.import_seed_file(CSV, "csv", now=T0)
    assert result.imported == ["C-1", "C-2", "C-3"]
    c2 = validator.get_token("C-2")
    assert (c2.kind, c2.digits, c2.hash, c2.watermark) == ("hotp", 8, "sha256", 4)
    assert validator.get_token("C-3").period == 60
    validator.enable("bob", "C-2", hotp(SECRET, 5, 8, "sha256"), hotp(SECRET, 6, 8, "sha256"),
                     now=T0)
    ref = pyotp.TOTP(base64.b32encode(SECRET).decode())
    validator.enable("carol", "C-1", ref.at(T0 - 30), ref.at(T0), now=T0)


@pytest.mark.parametrize("bad,fragment", [
    ("C-9,zz,totp,6,30,sha1", "line 6 (C-9): the secret is not hexadecimal"),
    ("C-9,3132,totp,5,30,sha1", "line 6 (C-9): 5 digits"),
    ("C-9,3132,motp,6,30,sha1", "kind must be"),
    ("C-9,3132,totp,6,30,md5", "hash must be"),
    ("C-9,3132,totp,6", "4 fields"),
    ("C-9,3132333435363738393031323334353637383930,totp,6,0,sha1", "time step 0 is not"),
    ("C-9,3132,totp,6,30,sha1", "C-9: the secret is 2 bytes"),
    ("C-1,3132333435363738393031323334353637383930,totp,6,30,sha1", "repeated in the file"),
])
def test_csv_all_or_nothing(validator: Validator, bad: str, fragment: str) -> None:
    with pytest.raises((SeedFileError, DuplicateSerial)) as info:
        validator.import_seed_file(CSV + bad + "\n", "csv", now=T0)
    assert fragment in str(info.value)
    assert validator.list_tokens() == []
    assert validator.audit(action="import")[-1].result == "refused"


def test_a_large_import_with_a_duplicate(validator: Validator) -> None:
    """30,000 tokens (about 1.8 MB of CSV) with one already registered. Its speed (once
    quadratic: the set of imported serials was rebuilt per record) is measured by
    `make bench` (bench_import), which compares 3,000 and 30,000 keys in one run."""
    n = 30_000
    validator.register_token("L000000", SECRET, now=T0)
    text = CSV_HEAD + "".join(f"L{i:06d},{'31' * 20},totp,6,30,sha1\n" for i in range(n))
    result = validator.import_seed_file(text, "csv", skip_duplicates=True, now=T0)
    assert len(result.imported) == n - 1
    assert [s.to_json() for s in result.skipped] == [
        {"serial": "L000000", "reason": "already_registered",
         "detail": "a token with this serial is registered already"}]


@pytest.mark.parametrize("row, fragment", [
    ("H-1,3132333435363738393031323334353637383930,hotp,6,18446744073709551615,sha1",
     "H-1: the counter must be 0 to 2**63"),
    ("H-2,3132333435363738393031323334353637383930,hotp,6,9223372036854775809,sha1",
     "H-2: the counter must be 0 to 2**63"),
])
def test_a_counter_past_the_8_byte_range_is_refused_at_import(
        validator: Validator, row: str, fragment: str) -> None:
    """A counter that does not fit RFC 4226's 8 bytes (or leaves no room to count on; a
    real multiOTP sample holds 2**52, which imports) imported fine and then made every
    enable or verify of the token fail with an error (struct.error: an HTTP 500) instead
    of refusing a code."""
    with pytest.raises(SeedFileError, match=fragment.replace("*", r"\*")):
        validator.import_seed_file(CSV + row + "\n", "csv", now=T0)
    assert validator.list_tokens() == []


@pytest.mark.parametrize("args", [{"t0": 2**62}, {"t0": -(2**62)}, {"drift_steps": 10**20},
                                  {"drift_steps": 10**400}])
def test_a_time_past_any_step_is_refused_at_registration(validator: Validator,
                                                         args: dict[str, int]) -> None:
    """PSKC's Time (T0) and TimeDrift are unbounded integers: a huge one put the token's
    step past 8 bytes (an error at the first verify), or the drift past a float (an
    OverflowError at registration)."""
    from validator.errors import InvalidParameter

    with pytest.raises(InvalidParameter, match="within 2\\*\\*40 seconds"):
        validator.register_token("T-big", SECRET, now=T0, **args)
    assert validator.list_tokens() == []


def test_the_largest_counter_allowed_still_verifies_cleanly(validator: Validator) -> None:
    validator.register_token("H-max", SECRET, kind="hotp", counter=2**63, now=T0)
    with pytest.raises(InvalidAuthenticationCode):  # searched up to 1,000 ahead: no error
        validator.enable("max", "H-max", "000000", "000000", now=T0)
    validator.enable("max", "H-max", hotp(SECRET, 2**63), hotp(SECRET, 2**63 + 1), now=T0)
    assert validator.verify("max", hotp(SECRET, 2**63 + 2), now=T0).accepted
    assert validator.verify("max", "000000", now=T0).reason.value == "invalid_code"

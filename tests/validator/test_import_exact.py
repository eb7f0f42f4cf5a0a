"""Seed-file parsing to the letter: every limit at its boundary, every default, every
refusal's and skip's exact text, progress reports, and the tree the bounded parser builds.
Pure: the parsers are called directly with `now`; files are written here (python-pskc for
RFC 6030, hand-written XML for the drafts)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import xml.etree.ElementTree as ET
from typing import Any

import pskc
import pytest

from protocol import MAX_DIGITS, MIN_DIGITS, Kind
from validator.errors import SeedFileError, SeedFileLimit
from validator.importers import (
    ImportLimits,
    SeedRecord,
    Skipped,
    SkipReason,
    bounded_tree,
    parse_csv,
    parse_pskc,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SECRET = b"12345678901234567890"
HEX = SECRET.hex()
NS = "urn:ietf:params:xml:ns:keyprov:pskc"
TOTP_URI, HOTP_URI = NS + ":totp", NS + ":hotp"
HEADER = "serial,secret_hex,kind,digits,period_or_counter,hash\n"
PSK = bytes(range(16))


def write(*keys: dict[str, Any], encryption: str | None = None, mac: bool = True) -> bytes:
    """A PSKC file written by python-pskc; each dict is python-pskc key attributes, plus
    `policy` (a dict of policy attributes) and `device` (a dict of device attributes)."""
    container = pskc.PSKC()
    for spec in keys:
        spec = dict(spec)
        policy, device = spec.pop("policy", {}), spec.pop("device", {})
        key = container.add_key(**spec)
        for name, value in policy.items():
            setattr(key.policy, name, value)
        for name, value in device.items():
            setattr(key.device, name, value)
    if encryption == "aes":
        container.encryption.setup_preshared_key(key=PSK)
        if mac:
            container.mac.setup()
    out = io.BytesIO()
    container.write(out)
    return out.getvalue()


def totp_key(serial: str = "T-1", **extra: Any) -> dict[str, Any]:
    return {"serial": serial, "secret": SECRET, "algorithm": TOTP_URI, **extra}


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(SeedFileError) as exc:
        call(*args, **kwargs)
    return exc.value.message


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# -- limits --------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["max_bytes", "max_depth", "max_elements", "max_keys",
                                   "max_field_chars"])
def test_every_limit_must_be_positive(field: str) -> None:
    assert getattr(ImportLimits(**{field: 1}), field) == 1
    with pytest.raises(ValueError) as exc:
        ImportLimits(**{field: 0})
    assert str(exc.value) == "import limits must be positive"


def container(body: str) -> bytes:
    return f'<KeyContainer Version="1.0" xmlns="{NS}">{body}</KeyContainer>'.encode()


def test_size_limit_is_inclusive() -> None:
    data = container("")
    bounded_tree(data, ImportLimits(max_bytes=len(data)))
    assert refused(bounded_tree, data, ImportLimits(max_bytes=len(data) - 1)) == (
        f"the file is {len(data)} bytes; the limit is {len(data) - 1} (max_import_bytes)")


def test_a_text_file_is_measured_in_bytes() -> None:
    text = container("<a>" + "é" * 100 + "</a>").decode()
    limits = ImportLimits(max_bytes=len(text) + 50)  # enough characters, too few bytes
    assert "bytes; the limit is" in refused(parse_pskc, text, now=T0, limits=limits)


def test_depth_limit_is_inclusive() -> None:
    nested = container("<a>" * 31 + "</a>" * 31)  # 32 levels with the root
    bounded_tree(nested, ImportLimits(max_depth=32))
    with pytest.raises(SeedFileLimit) as exc:
        bounded_tree(nested, ImportLimits(max_depth=31))
    assert exc.value.message == "elements nest deeper than 31 levels (import_max_depth)"


def test_element_limit_is_inclusive() -> None:
    data = container("<a/>" * 9)  # 10 elements with the root
    bounded_tree(data, ImportLimits(max_elements=10))
    assert refused(bounded_tree, data, ImportLimits(max_elements=9)) == (
        "the file holds more than 9 elements (import_max_elements)")


def test_text_limit_is_inclusive_and_per_element() -> None:
    data = container("<a>" + "x" * 50 + "</a><b>" + "y" * 50 + "</b>")
    bounded_tree(data, ImportLimits(max_field_chars=50))
    assert refused(bounded_tree, data, ImportLimits(max_field_chars=49)) == (
        "an element holds more than 49 characters of text (import_max_field_chars)")
    # text after a child element counts again from zero
    tail = container("<a>" + "x" * 30 + "<b/>" + "x" * 30 + "</a>")
    bounded_tree(tail, ImportLimits(max_field_chars=30))


def _draft00(secrets: int) -> bytes:
    """draft-00's layout: each key a <Secret> directly in a <Device>."""
    b64 = base64.b64encode(SECRET).decode()
    keys = "".join(f'<Secret SecretAlgorithm="HOTP" SecretId="D-{i}">'
                   f'<Data Name="SECRET"><Value>{b64}</Value></Data></Secret>'
                   for i in range(secrets))
    return (f'<SecretContainer xmlns="http://www.openauthentication.org/OATH/2006/08/PSKC" '
            f'version="1.2"><EncryptionMethod algorithm="NONE"/><Device><DeviceId>'
            f'<SerialNo>D</SerialNo></DeviceId>{keys}</Device></SecretContainer>').encode()


def test_key_limit_counts_rfc_keys_and_draft00_secrets() -> None:
    data = container("".join(
        f'<KeyPackage><DeviceInfo><SerialNo>S{i}</SerialNo></DeviceInfo><Key Id="S{i}" '
        f'Algorithm="{TOTP_URI}"><Data><Secret><PlainValue>'
        f'{base64.b64encode(SECRET).decode()}</PlainValue></Secret></Data></Key></KeyPackage>'
        for i in range(3)))
    assert len(parse_pskc(data, now=T0, limits=ImportLimits(max_keys=3)).records) == 3
    assert refused(parse_pskc, data, now=T0, limits=ImportLimits(max_keys=2)) == (
        "the file holds more than 2 keys (import_max_keys)")
    parsed = parse_pskc(_draft00(2), now=T0, limits=ImportLimits(max_keys=2))
    assert [r.serial for r in parsed.records] == ["D", "D"]  # named by the device's serial
    assert refused(parse_pskc, _draft00(2), now=T0, limits=ImportLimits(max_keys=1)) == (
        "the file holds more than 1 keys (import_max_keys)")


def _shape(e: ET.Element) -> Any:
    return (e.tag, dict(e.attrib), (e.text or "").strip(), (e.tail or "").strip(),
            [_shape(c) for c in e])


def test_the_bounded_tree_is_elementtrees_tree() -> None:
    data = (f'<KeyContainer xmlns="{NS}" xmlns:x="urn:x" xmlns:ds="urn:ds" Version="1.0" '
            'x:Flag="on"><KeyPackage ds:Id="k1" Plain="p"><x:Ext x:a="1">text</x:Ext>tail'
            '<Key Id="K"/></KeyPackage></KeyContainer>').encode()
    assert _shape(bounded_tree(data)) == _shape(ET.fromstring(data))
    plain = b'<root a="1"><child b="2">t</child></root>'
    assert _shape(bounded_tree(plain)) == _shape(ET.fromstring(plain))


@pytest.mark.parametrize("doc,message", [
    ('<!DOCTYPE l [<!ENTITY a "aaaa">]><l>&a;</l>',
     "the file declares XML entities, which are not allowed"),
    ('<!DOCTYPE l [<!ENTITY n SYSTEM "x" NDATA gif>]><l/>',
     "the file declares XML entities, which are not allowed"),
    ("<l>\n<m></l>",
     "not a usable PSKC file: not well-formed XML (mismatched tag, line 2)"),
])
def test_xml_refusals(doc: str, message: str) -> None:
    assert refused(bounded_tree, doc.encode()) == message


# -- PSKC ----------------------------------------------------------------------------------

def test_defaults_and_parameters_of_a_pskc_key() -> None:
    parsed = parse_pskc(write(totp_key("T-1"), {"serial": "H-1", "secret": SECRET,
                                                "algorithm": HOTP_URI}), now=T0)
    assert parsed.records == [
        SeedRecord("T-1", SECRET), SeedRecord("H-1", SECRET, kind=Kind.HOTP)]
    full = parse_pskc(write(totp_key("T-2", time_interval=1, time_offset=100, time_drift=-3,
                                     response_length=MAX_DIGITS,
                                     algorithm_suite="HMAC-SHA512")), now=T0).records[0]
    assert (full.period, full.t0, full.drift_steps, full.digits, full.hash) == (
        1, 100, -3, MAX_DIGITS, "sha512")
    hotp = parse_pskc(write({"serial": "H-2", "secret": SECRET, "algorithm": HOTP_URI,
                             "counter": 2**63, "response_length": MIN_DIGITS}), now=T0)
    assert (hotp.records[0].counter, hotp.records[0].digits) == (2**63, MIN_DIGITS)


@pytest.mark.parametrize("extra,message", [
    ({"counter": 2**63 + 1, "algorithm": HOTP_URI},
     f"key 1 (K): counter {2**63 + 1} is out of range (0 to 2**63)"),
    ({"time_interval": 0}, "key 1 (K): time step 0 is not positive"),
    ({"response_length": MAX_DIGITS + 1},
     f"key 1 (K): {MAX_DIGITS + 1} digits is not supported ({MIN_DIGITS} to {MAX_DIGITS})"),
    ({"response_length": MIN_DIGITS - 1},
     f"key 1 (K): {MIN_DIGITS - 1} digits is not supported ({MIN_DIGITS} to {MAX_DIGITS})"),
    ({"response_encoding": "HEXADECIMAL"},
     "key 1 (K): response encoding 'HEXADECIMAL' is not DECIMAL"),
    ({"algorithm_suite": "HMAC-MD5"}, "key 1 (K): unsupported hash suite 'HMAC-MD5'"),
])
def test_pskc_key_refusals(extra: dict[str, Any], message: str) -> None:
    assert refused(parse_pskc, write(totp_key("K", **extra)), now=T0) == message


def test_a_key_without_serial_or_id_is_named_by_its_place() -> None:
    data = container(f'<KeyPackage><Key Algorithm="{TOTP_URI}"><Data><Secret><PlainValue>'
                     f'{base64.b64encode(SECRET).decode()}</PlainValue></Secret></Data>'
                     '</Key></KeyPackage>')
    assert refused(parse_pskc, data, now=T0) == (
        "key 1 (no serial): neither a serial number nor a key id")
    no_algorithm = container('<KeyPackage><Key Id="N"/></KeyPackage>')
    assert parse_pskc(no_algorithm, now=T0).skipped == [
        Skipped("N", SkipReason.UNSUPPORTED_ALGORITHM, "algorithm none")]


def test_the_file_must_hold_keys() -> None:
    assert refused(parse_pskc, container(""), now=T0) == "the file holds no keys"


def test_wrong_key_messages() -> None:
    data = write(totp_key("E-1"), encryption="aes")
    head, tag, tail = data.partition(b"<pskc:ValueMAC>")  # the secret's MAC, altered
    altered = head + tag + (b"B" if tail[:1] == b"A" else b"A") + tail[1:]
    assert altered != data
    assert refused(parse_pskc, altered, now=T0, key_hex=PSK.hex()) == (
        "key 1 (E-1): wrong passphrase or key (key_hex given): the MAC check failed "
        "(or the file was altered: the MAC value does not match)")
    no_mac = write(totp_key("E-2"), encryption="aes", mac=False)
    message = refused(parse_pskc, no_mac, now=T0, key_hex="00" * 16)
    assert message.startswith("key 1 (E-2): wrong passphrase or key (key_hex given): ")
    assert "MAC" not in message
    assert parse_pskc(no_mac, now=T0, key_hex=PSK.hex()).records[0].secret == SECRET
    assert refused(parse_pskc, data, now=T0, key_hex="xyz") == "key_hex is not hexadecimal"
    assert refused(parse_pskc, data, now=T0) == (
        "the file's keys are encrypted with a pre-shared key; give key_hex")


def test_rsa_key_transport_message() -> None:
    data = write(totp_key("R-1"), encryption="aes").replace(
        b"http://www.w3.org/2001/04/xmlenc#aes128-cbc",
        b"http://www.w3.org/2001/04/xmlenc#rsa-1_5")
    assert refused(parse_pskc, data, now=T0, key_hex=PSK.hex()) == (
        "the file's keys are encrypted to an RSA key (asymmetric key transport): not "
        "supported; ask the vendor for a file encrypted with a pre-shared key or a passphrase")


def _draft01(drifts: list[str | None], spelling: str = "Value") -> str:
    b64 = base64.b64encode(SECRET).decode()
    keys = "".join(
        f'<Device><DeviceId><SerialNo>D-{i}</SerialNo></DeviceId>'
        f'<Key KeyAlgorithm="TOTP" KeyId="D-{i}"><Usage OTP="true"><ResponseFormat '
        f'format="DECIMAL" length="6"/></Usage><Data Name="SECRET"><Value>{b64}</Value>'
        '</Data>' + ("" if d is None else
                     f'<Data Name="TIME_DRIFT"><{spelling}>{d}</{spelling}></Data>')
        + '<Data Name="VENDOR_THING"><Value>x</Value></Data></Key></Device>'
        for i, d in enumerate(drifts))
    return ('<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:container" Version="1.0">'
            f'{keys}</KeyContainer>')


def test_draft_time_drift_goes_to_its_own_key() -> None:
    parsed = parse_pskc(_draft01([None, "3", "-2"]), now=T0)
    assert [(r.serial, r.drift_steps) for r in parsed.records] == [
        ("D-0", 0), ("D-1", 3), ("D-2", -2)]
    plain = parse_pskc(_draft01(["5"], "PlainValue"), now=T0)
    assert plain.records[0].drift_steps == 5
    assert parse_pskc(_draft01([""]), now=T0).records[0].drift_steps == 0
    assert refused(parse_pskc, _draft01([None, "x y"]), now=T0) == (
        "key 2: TIME_DRIFT is not an integer")


def test_progress_is_reported_every_500_keys() -> None:
    calls: list[tuple[int, int]] = []
    data = write(*(totp_key(f"P-{i}") for i in range(1000)))
    parse_pskc(data, now=T0, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(500, 1000), (1000, 1000)]
    parse_pskc(write(totp_key()), now=T0, progress=None)  # no callback, no report


# -- key policy ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec,skip", [
    ({"policy": {"number_of_transactions": 5}},
     ("unknown_policy", "NumberOfTransactions: foblab cannot enforce a limit on uses")),
    ({"policy": {"key_usage": ["Encrypt", "Decrypt"]}},
     ("usage_not_otp", "key usage Encrypt, Decrypt")),
    ({"policy": {"pin_usage": "Prepend", "pin_key_id": "x"}},
     ("pin_policy", "PIN usage mode Prepend: the validator would have to check a PIN")),
    ({"policy": {"start_date": when("2099-01-01T00:00:00")}},  # no zone: UTC
     ("not_yet_valid", "valid from 2099-01-01T00:00:00Z")),
    ({"device": {"start_date": when("2099-02-01T00:00:00+00:00")}},
     ("not_yet_valid", "valid from 2099-02-01T00:00:00Z")),
    ({"policy": {"start_date": when("2090-01-01T00:00:00+00:00")},
      "device": {"start_date": when("2099-02-01T00:00:00+00:00")}},
     ("not_yet_valid", "valid from 2099-02-01T00:00:00Z")),  # the later start
    ({"device": {"expiry_date": when("2020-01-01T00:00:00+00:00")}},
     ("expired", "expired 2020-01-01T00:00:00Z")),
    ({"policy": {"expiry_date": when("2021-01-01T00:00:00+00:00")},
      "device": {"expiry_date": when("2020-01-01T00:00:00+00:00")}},
     ("expired", "expired 2020-01-01T00:00:00Z")),  # the earlier expiry
])
def test_policy_skips_say_why(spec: dict[str, Any], skip: tuple[str, str]) -> None:
    parsed = parse_pskc(write(totp_key("S-1", **spec)), now=T0)
    assert parsed.records == []
    assert [(s.serial, s.reason.value, s.detail) for s in parsed.skipped] == [("S-1", *skip)]


def test_unknown_policy_elements_say_so() -> None:
    data = write(totp_key("U-1", policy={"key_usage": ["OTP"]})).replace(
        b"</pskc:KeyUsage>", b"</pskc:KeyUsage><pskc:Geofence>1</pskc:Geofence>")
    assert [(s.reason.value, s.detail) for s in parse_pskc(data, now=T0).skipped] == [
        ("unknown_policy", "the key's policy has elements foblab does not know")]


def test_policy_dates_at_the_boundary() -> None:
    start = write(totp_key("B-1", policy={"start_date": dt.datetime.fromtimestamp(T0, dt.UTC)}))
    assert [r.serial for r in parse_pskc(start, now=T0).records] == ["B-1"]  # valid from now
    end = write(totp_key("B-2", policy={"expiry_date": dt.datetime.fromtimestamp(T0, dt.UTC)}))
    assert [s.reason for s in parse_pskc(end, now=T0).skipped] == [SkipReason.EXPIRED]
    later = write(totp_key("B-3", device={"expiry_date": dt.datetime.fromtimestamp(T0 + 1,
                                                                                  dt.UTC)}))
    assert parse_pskc(later, now=T0).records[0].expires == T0 + 1


def test_dates_are_utc_whatever_the_local_zone(new_york_clock: None) -> None:
    data = write(totp_key("Z-1", policy={"start_date": when("2099-01-01T00:00:00")}))
    assert parse_pskc(data, now=T0).skipped[0].detail == "valid from 2099-01-01T00:00:00Z"
    data = write(totp_key("Z-2", policy={"expiry_date": when("2099-01-01T00:00:00")}))
    assert parse_pskc(data, now=T0).records[0].expires == 4_070_908_800.0


# -- CSV -----------------------------------------------------------------------------------

def test_csv_defaults_and_values() -> None:
    parsed = parse_csv(HEADER + f"T,{HEX},totp,,,\nH,{HEX},hotp,,,\n"
                       f"T2,{HEX},totp,8,1,sha256\nH2,{HEX},hotp,{MAX_DIGITS},0,sha512\n"
                       f"H3,{HEX},hotp,{MIN_DIGITS},7,\n")
    assert [(r.serial, r.kind, r.digits, r.period, r.counter, r.hash) for r in parsed.records] \
        == [("T", "totp", 6, 30, 0, "sha1"), ("H", "hotp", 6, 30, 0, "sha1"),
            ("T2", "totp", 8, 1, 0, "sha256"), ("H2", "hotp", MAX_DIGITS, 30, 0, "sha512"),
            ("H3", "hotp", MIN_DIGITS, 30, 7, "sha1")]
    assert parsed.records[0].secret == SECRET and parsed.skipped == []


def test_csv_reading() -> None:
    bom = "\ufeff".encode() + (HEADER + f"T,{HEX},totp,6,30,sha1\n").encode()
    assert [r.serial for r in parse_csv(bom).records] == ["T"]
    commented = HEADER + f"  # a comment\n\nT,{HEX},totp,6,30,sha1\n"
    assert [r.serial for r in parse_csv(commented).records] == ["T"]
    assert refused(parse_csv, b"\xff\xfe" + HEADER.encode()) == "the CSV file is not UTF-8"
    assert refused(parse_csv, "# nothing\n\n") == "the CSV file is empty"
    assert refused(parse_csv, HEADER) == "the CSV file holds no tokens"
    assert refused(parse_csv, "serial,secret\n") == (
        "the CSV header must be serial,secret_hex,kind,digits,period_or_counter,hash")


@pytest.mark.parametrize("row,message", [
    (f"X,{HEX},totp,6,30", "line 2: 5 fields, expected 6"),
    (f",{HEX},totp,6,30,sha1", "line 2 (no serial): empty serial"),
    ("X,,totp,6,30,sha1", "line 2 (X): empty secret"),
    ("X,zz,totp,6,30,sha1", "line 2 (X): the secret is not hexadecimal"),
    (f"X,{HEX},totp,six,30,sha1",
     "line 2 (X): digits and period_or_counter must be integers"),
    (f"X,{HEX},totp,{MAX_DIGITS + 1},30,sha1",
     f"line 2 (X): {MAX_DIGITS + 1} digits is not supported ({MIN_DIGITS} to {MAX_DIGITS})"),
    (f"X,{HEX},totp,6,0,sha1", "line 2 (X): time step 0 is not positive"),
    (f"X,{HEX},hotp,6,-1,sha1", "line 2 (X): the HOTP counter must not be negative"),
])
def test_csv_row_refusals(row: str, message: str) -> None:
    assert refused(parse_csv, HEADER + row + "\n") == message


def test_csv_limits_are_inclusive() -> None:
    rows = "".join(f"T{i},{HEX},totp,6,30,sha1\n" for i in range(3))
    assert len(parse_csv(HEADER + rows, limits=ImportLimits(max_keys=3)).records) == 3
    with pytest.raises(SeedFileLimit) as exc:
        parse_csv(HEADER + rows, limits=ImportLimits(max_keys=2))
    assert exc.value.message == "the file holds 3 rows; the limit is 2 (import_max_keys)"
    wide = HEADER + f"{'S' * 60},{HEX},totp,6,30,sha1\n"
    assert parse_csv(wide, limits=ImportLimits(max_field_chars=60)).records[0].serial == "S" * 60
    with pytest.raises(SeedFileLimit) as exc:
        parse_csv(wide, limits=ImportLimits(max_field_chars=59))
    assert exc.value.message == (
        "line 2: a field of 60 characters; the limit is 59 (import_max_field_chars)")


def test_csv_progress_is_reported_every_500_rows() -> None:
    calls: list[tuple[int, int]] = []
    rows = "".join(f"T{i},{HEX},totp,6,30,sha1\n" for i in range(1001))
    parse_csv(HEADER + rows, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(500, 1001), (1000, 1001)]

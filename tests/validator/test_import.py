"""Seed-file import: the shared PSKC samples, CSV, all-or-nothing, duplicates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyotp
import pytest

from validator.errors import DuplicateSerial, SeedFileError
from validator.otp import hotp, totp
from validator.service import Validator

T0 = 1_700_000_000.0
SAMPLES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "pskc-samples").resolve()
PSK = "12345678901234567890123456789012"

# file -> (opening arguments, {serial: secret from the README or the plain file})
VALID = {
    "rfc6030/figure2.pskcxml": ({}, {"12345678": b"1234"}),
    "rfc6030/figure3.pskcxml": ({}, {"987654321": b"12345678901234567890"}),
    "rfc6030/figure5.pskcxml": ({}, {"987654321": b"12345678901234567890"}),
    "rfc6030/figure6.pskcxml": ({"key_hex": PSK}, {
        "987654321": bytes.fromhex("3132333435363738393031323334353637383930")}),
    "rfc6030/figure7.pskcxml": ({"passphrase": "qwerty"}, {
        "987654321": b"12345678901234567890"}),
    "feitian/20120919-test001-4282.xml": ({}, {
        "2600215704919": bytes.fromhex("cd22b780fffd2d53696807ecd37f404dae393270"),
        "1000117803294": bytes.fromhex("4dfa5f4fef099fdb3a158348c928bebb35e4222d")}),
    "feitian/file1.pskcxml": ({}, {
        "1000133508267": bytes.fromhex("3ee3270a2be59ffd78222dc3361478ff5cc63790"),
        "2600135004013": bytes.fromhex("3522ee085fea7903eca98ed2a1de1a9c93232018")}),
    "multiotp/pskc-totp-pbe.txt": ({"passphrase": "qwerty"}, {
        "ZZ1000000002": bytes.fromhex("3031323334353637383930313233343536373839")}),
    "multiotp/tokens_totp_aes.pskc": ({"key_hex": PSK}, {
        "ZZ8000000001": bytes.fromhex(
            "38c2506a8e0708a5e929c2686b827e0ba7ae28c9de3c83e6d27308345981a3de")}),
    "multiotp/tokens_hotp_pbe.pskc": ({"passphrase": "qwerty"}, {
        "ZZ7000000000": bytes.fromhex("5d3a38bf5476d6f0b897f1e62887cb3ce833a5b9")}),
}
INVALID = {
    "invalid/notxml.pskcxml": ({}, "not a usable PSKC file"),
    "invalid/wrongversion.pskcxml": ({}, "Unsupported version"),
    "invalid/mac-value.pskcxml": ({"key_hex": PSK}, "MAC value does not match"),
}


def test_every_sample_is_covered() -> None:
    files = {str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.is_file()}
    files.discard("README.md")
    # figure4 carries no secret (derived from a master key by reference): refused below.
    assert files == set(VALID) | set(INVALID) | {"rfc6030/figure4.pskcxml"}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_samples_import_and_verify(validator: Validator, name: str) -> None:
    args, secrets_ = VALID[name]
    result = validator.import_seed_file((SAMPLES / name).read_bytes(), "pskc", now=T0, **args)
    assert set(secrets_) <= set(result.imported)
    for serial, secret in secrets_.items():
        info = validator.get_token(serial)
        t = T0 + 10_000
        if info.kind == "totp":
            # The README's secret, the file's step, digits and hash: pyotp-independent
            # computation, cross-checked with pyotp for SHA-1.
            first = totp(secret, t - info.period, info.digits, info.algorithm, info.period)
            second = totp(secret, t, info.digits, info.algorithm, info.period)
            if info.algorithm == "sha1":
                import base64
                ref = pyotp.TOTP(base64.b32encode(secret).decode(), digits=info.digits,
                                 interval=info.period)
                assert ref.at(t) == second
        else:
            n = 0 if info.watermark is None else info.watermark + 1
            first = hotp(secret, n, info.digits, info.algorithm)
            second = hotp(secret, n + 1, info.digits, info.algorithm)
        validator.enable("alice", serial, first, second, now=t)
        if info.kind == "totp":
            nxt = totp(secret, t + info.period, info.digits, info.algorithm, info.period)
        else:
            nxt = hotp(secret, n + 2, info.digits, info.algorithm)
        assert validator.verify("alice", nxt, now=t + info.period).accepted
        validator.deactivate("alice", serial, now=t + info.period)


def test_sample_parameters_honoured(validator: Validator) -> None:
    validator.import_seed_file((SAMPLES / "multiotp/tokens_totp_aes.pskc").read_bytes(),
                               key_hex=PSK, now=T0)
    a, b = validator.get_token("ZZ8000000001"), validator.get_token("ZZ8000000002")
    assert (a.algorithm, a.digits, a.period, a.kind) == ("sha256", 8, 30, "totp")
    assert b.algorithm == "sha512"
    validator.import_seed_file((SAMPLES / "feitian/file1.pskcxml").read_bytes(), now=T0)
    assert validator.get_token("2600124809778").period == 60
    validator.import_seed_file((SAMPLES / "multiotp/tokens_hotp_pbe.pskc").read_bytes(),
                               passphrase="qwerty", now=T0)
    hotp_tok = validator.get_token("ZZ7000000000")
    assert hotp_tok.digits == 8 and hotp_tok.watermark == 3175185617134465 - 1


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_samples_refused_cleanly(validator: Validator, name: str) -> None:
    args, fragment = INVALID[name]
    with pytest.raises(SeedFileError) as info:
        validator.import_seed_file((SAMPLES / name).read_bytes(), now=T0, **args)
    assert fragment in info.value.message and "Traceback" not in info.value.message
    assert info.value.code == "invalid_seed_file"
    assert validator.list_tokens() == []


def test_figure4_without_secret_refused(validator: Validator) -> None:
    with pytest.raises(SeedFileError, match="12345678|987654321"):
        validator.import_seed_file((SAMPLES / "rfc6030/figure4.pskcxml").read_bytes(), now=T0)


def test_encrypted_files_need_their_key(validator: Validator) -> None:
    data = (SAMPLES / "rfc6030/figure6.pskcxml").read_bytes()
    with pytest.raises(SeedFileError, match="key_hex"):
        validator.import_seed_file(data, now=T0)
    with pytest.raises(SeedFileError, match="cannot decrypt"):
        validator.import_seed_file(data, key_hex="00" * 16, now=T0)
    with pytest.raises(SeedFileError, match="passphrase"):
        validator.import_seed_file((SAMPLES / "rfc6030/figure7.pskcxml").read_bytes(), now=T0)


def test_time_drift_is_in_intervals(validator: Validator, tmp_path: Path) -> None:
    src = tmp_path / "drift.pskcxml"
    shutil.copy(SAMPLES / "feitian/20120919-test001-4282.xml", src)
    text = src.read_text().replace(
        "<TimeInterval>", "<TimeDrift><PlainValue>3</PlainValue></TimeDrift>\n<TimeInterval>")
    validator.import_seed_file(text, now=T0)
    info = validator.get_token("2600215704919", now=T0)
    assert info.offset_seconds == 180.0  # 3 intervals of 60 s, not 3 seconds


def test_duplicates_refused_by_name_or_skipped(validator: Validator) -> None:
    data = (SAMPLES / "feitian/file1.pskcxml").read_bytes()
    validator.import_seed_file(data, now=T0)
    with pytest.raises(DuplicateSerial) as info:
        validator.import_seed_file(data, now=T0)
    assert "1000133508267" in info.value.message and info.value.code == "duplicate_serial"
    result = validator.import_seed_file(data, skip_duplicates=True, now=T0)
    assert result.imported == [] and len(result.skipped) == 6


CSV = """serial,secret_hex,kind,digits,period_or_counter,hash
# comment lines are ignored
C-1,3132333435363738393031323334353637383930,totp,6,30,sha1
C-2,3132333435363738393031323334353637383930,hotp,8,5,sha256
C-3,3132333435363738393031323334353637383930,totp,,60,
"""


def test_csv_import(validator: Validator) -> None:
    result = validator.import_seed_file(CSV, "csv", now=T0)
    assert result.imported == ["C-1", "C-2", "C-3"]
    c2 = validator.get_token("C-2")
    assert (c2.kind, c2.digits, c2.algorithm, c2.watermark) == ("hotp", 8, "sha256", 4)
    assert validator.get_token("C-3").period == 60
    key = b"12345678901234567890"
    validator.enable("bob", "C-2", hotp(key, 5, 8, "sha256"), hotp(key, 6, 8, "sha256"),
                     now=T0)


@pytest.mark.parametrize("bad,fragment", [
    ("C-9,zz,totp,6,30,sha1", "line 6 (C-9): the secret is not hexadecimal"),
    ("C-9,3132,totp,5,30,sha1", "line 6 (C-9): 5 digits"),
    ("C-9,3132,motp,6,30,sha1", "kind must be"),
    ("C-9,3132,totp,6,30,md5", "hash must be"),
    ("C-9,3132,totp,6", "4 fields"),
    ("C-1,3132,totp,6,30,sha1", "C-1"),
])
def test_csv_all_or_nothing(validator: Validator, bad: str, fragment: str) -> None:
    with pytest.raises((SeedFileError, DuplicateSerial)) as info:
        validator.import_seed_file(CSV + bad + "\n", "csv", now=T0)
    assert fragment in str(info.value)
    assert validator.list_tokens() == []
    assert validator.audit(action="import")[-1].result == "refused"


def test_pskc_all_or_nothing_when_one_key_is_bad(validator: Validator, tmp_path: Path) -> None:
    text = (SAMPLES / "feitian/file1.pskcxml").read_text()
    # Break the last key only: an unsupported algorithm.
    i = text.rindex("pskc:totp")
    broken = text[:i] + "pskc:ocra" + text[i + len("pskc:totp"):]
    with pytest.raises(SeedFileError, match="key 6 \\(2600135004013\\): unsupported algorithm"):
        validator.import_seed_file(broken, now=T0)
    assert validator.list_tokens() == []


def test_a_large_import_with_a_duplicate(validator: Validator) -> None:
    """30,000 tokens (about 1.8 MB of CSV) with one already registered. Its speed (once
    quadratic: the set of imported serials was rebuilt per record) is measured by
    `make bench` (bench_import), which compares 3,000 and 30,000 keys in one run."""
    n = 30_000
    validator.register_token("L000000", b"12345678901234567890", now=T0)
    text = "serial,secret_hex,kind,digits,period_or_counter,hash\n" + "".join(
        f"L{i:06d},{'31' * 20},totp,6,30,sha1\n" for i in range(n))
    result = validator.import_seed_file(text, "csv", skip_duplicates=True, now=T0)
    assert len(result.imported) == n - 1
    assert result.skipped == ["L000000: already registered"]


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
        validator.register_token("T-big", b"12345678901234567890", now=T0, **args)
    assert validator.list_tokens() == []


def test_the_largest_counter_allowed_still_verifies_cleanly(validator: Validator) -> None:
    from validator.errors import InvalidAuthenticationCode

    secret = b"12345678901234567890"
    validator.register_token("H-max", secret, kind="hotp", counter=2**63, now=T0)
    with pytest.raises(InvalidAuthenticationCode):  # searched up to 1,000 ahead: no error
        validator.enable("max", "H-max", "000000", "000000", now=T0)
    validator.enable("max", "H-max", hotp(secret, 2**63), hotp(secret, 2**63 + 1), now=T0)
    assert validator.verify("max", hotp(secret, 2**63 + 2), now=T0).accepted
    assert validator.verify("max", "000000", now=T0).reason.value == "invalid_code"

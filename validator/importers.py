"""Seed-file import: PSKC (RFC 6030, through python-pskc) and a simple CSV.

Parsing is all-or-nothing: every key is read and checked before anything is returned, and
the first bad one raises `SeedFileError` naming the key and the reason. The service then
stores the whole file in one transaction.

CSV format (header required, `#` lines ignored)::

    serial,secret_hex,kind,digits,period_or_counter,hash
    TOK-0001,3132333435363738393031323334353637383930,totp,6,30,sha1
    TOK-0002,3132333435363738393031323334353637383930,hotp,8,0,sha256

`kind` is totp or hotp; `period_or_counter` is the TOTP period in seconds or the HOTP
counter of the next code; empty `digits`, `period_or_counter` and `hash` mean 6, 30 (TOTP)
or 0 (HOTP), and sha1.
"""

from __future__ import annotations

import binascii
import csv
import io
from dataclasses import dataclass, field

import pskc
from pskc.exceptions import PSKCError

from protocol import MAX_DIGITS, MIN_DIGITS, PSKC_ALGORITHM_PREFIX, Hash, Kind
from validator.errors import SeedFileError

_PIN_URI = PSKC_ALGORITHM_PREFIX + "pin"
_KIND_URIS = {kind.pskc_algorithm: kind for kind in Kind}
CSV_HEADER = ("serial", "secret_hex", "kind", "digits", "period_or_counter", "hash")


@dataclass(frozen=True, slots=True)
class SeedRecord:
    """One token read from a seed file. `drift_steps`: the PSKC TimeDrift, in intervals."""

    serial: str
    secret: bytes = field(repr=False)
    kind: Kind = Kind.TOTP
    hash: Hash = Hash.SHA1
    digits: int = 6
    period: int = 30
    t0: int = 0
    counter: int = 0
    drift_steps: int = 0


@dataclass(frozen=True, slots=True)
class ParsedFile:
    records: list[SeedRecord]
    skipped: list[str]  # keys that are not OTP keys (a PSKC PIN key), with why


def _suite(name: str | None, where: str) -> Hash:
    if not name:
        return Hash.SHA1
    try:
        return Hash.from_label(name)  # "HMAC-SHA256" and "sha-256" alike
    except ValueError:
        raise SeedFileError(f"{where}: unsupported hash suite {name!r}") from None


def _check_digits(digits: int, where: str) -> None:
    if not MIN_DIGITS <= digits <= MAX_DIGITS:
        raise SeedFileError(f"{where}: {digits} digits is not supported "
                            f"({MIN_DIGITS} to {MAX_DIGITS})")


def parse_pskc(content: bytes | str, *, passphrase: str | None = None,
               key_hex: str | None = None) -> ParsedFile:
    """Read every OTP key of a PSKC container, decrypting with the pre-shared key
    (`key_hex`) or the PBKDF2 `passphrase`. A MAC mismatch refuses the file."""
    data = content.encode() if isinstance(content, str) else content
    try:
        container = pskc.PSKC(io.BytesIO(data))
    except PSKCError as exc:
        raise SeedFileError(f"not a usable PSKC file: {exc}") from None
    except Exception as exc:  # the XML layer raises its own types
        raise SeedFileError(f"not a usable PSKC file: {type(exc).__name__}") from None
    encryption = container.encryption
    if encryption.is_encrypted:
        if encryption.derivation.algorithm:
            if passphrase is None:
                raise SeedFileError("the file's keys are encrypted with a passphrase "
                                    "(PBKDF2); give the passphrase")
            try:
                encryption.derive_key(passphrase)
            except PSKCError as exc:
                raise SeedFileError(f"cannot derive the file's key: {exc}") from None
        else:
            if key_hex is None:
                raise SeedFileError("the file's keys are encrypted with a pre-shared key; "
                                    "give key_hex")
            try:
                encryption.key = bytes.fromhex(key_hex)
            except ValueError:
                raise SeedFileError("key_hex is not hexadecimal") from None
    if not container.keys:
        raise SeedFileError("the file holds no keys")
    records: list[SeedRecord] = []
    skipped: list[str] = []
    for index, key in enumerate(container.keys, 1):
        name = key.serial or key.id
        where = f"key {index} ({name or 'no id'})"
        uri = key.algorithm or ""
        if uri == _PIN_URI:
            skipped.append(f"{where}: a PIN key, not an OTP key")
            continue
        kind = _KIND_URIS.get(uri)
        if kind is None:
            raise SeedFileError(f"{where}: unsupported algorithm {uri or 'none'!r}")
        if not name:
            raise SeedFileError(f"{where}: neither a serial number nor a key id")
        try:
            secret = key.secret
            counter = key.counter
            t0 = key.time_offset
            interval = key.time_interval
            drift = key.time_drift
        except PSKCError as exc:
            reason = str(exc)
            if "MAC" in reason:
                reason = "MAC value does not match (the file was altered, or the key is wrong)"
            raise SeedFileError(f"{where}: cannot decrypt: {reason}") from None
        if not secret:
            raise SeedFileError(f"{where}: no secret in the file (a key derived from a master "
                                "key by reference is not supported)")
        if key.response_encoding not in (None, "DECIMAL"):
            raise SeedFileError(f"{where}: response encoding {key.response_encoding!r} is "
                                "not DECIMAL")
        digits = key.response_length or 6
        _check_digits(digits, where)
        period = int(interval) if interval else 30
        if period <= 0:
            raise SeedFileError(f"{where}: time interval {period} is not positive")
        records.append(SeedRecord(
            serial=str(name).strip(), secret=bytes(secret), kind=kind,
            hash=_suite(key.algorithm_suite, where), digits=int(digits), period=period,
            t0=int(t0 or 0), counter=int(counter or 0), drift_steps=int(drift or 0)))
    return ParsedFile(records, skipped)


def parse_csv(content: bytes | str) -> ParsedFile:
    """Read the CSV format above. Every line is checked; the first bad one is named."""
    text = content.decode("utf-8-sig") if isinstance(content, bytes) else content
    # Keep the file's own line numbers, so an error names the line an editor shows.
    rows = [(number, next(csv.reader([line])))
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise SeedFileError("the CSV file is empty")
    header = tuple(cell.strip().lower() for cell in rows[0][1])
    if header != CSV_HEADER:
        raise SeedFileError(f"the CSV header must be {','.join(CSV_HEADER)}")
    records: list[SeedRecord] = []
    for number, row in rows[1:]:
        cells = [cell.strip() for cell in row]
        where = f"line {number}"
        if len(cells) != len(CSV_HEADER):
            raise SeedFileError(f"{where}: {len(cells)} fields, expected {len(CSV_HEADER)}")
        serial, secret_hex, kind_text, digits_text, poc_text, hash_text = cells
        where = f"line {number} ({serial or 'no serial'})"
        if not serial:
            raise SeedFileError(f"{where}: empty serial")
        try:
            secret = binascii.unhexlify(secret_hex)
        except (binascii.Error, ValueError):
            raise SeedFileError(f"{where}: the secret is not hexadecimal") from None
        if not secret:
            raise SeedFileError(f"{where}: empty secret")
        try:
            kind = Kind.from_label(kind_text)
        except ValueError:
            raise SeedFileError(f"{where}: kind must be {Kind.choices()}") from None
        try:
            digits = int(digits_text) if digits_text else 6
            poc = int(poc_text) if poc_text else (30 if kind is Kind.TOTP else 0)
        except ValueError:
            raise SeedFileError(f"{where}: digits and period_or_counter must be "
                                "integers") from None
        _check_digits(digits, where)
        try:
            hash_ = Hash.from_label(hash_text or Hash.SHA1)
        except ValueError:
            raise SeedFileError(f"{where}: hash must be {Hash.choices()}") from None
        if kind is Kind.TOTP and poc <= 0:
            raise SeedFileError(f"{where}: the TOTP period must be positive")
        if kind is Kind.HOTP and poc < 0:
            raise SeedFileError(f"{where}: the HOTP counter must not be negative")
        records.append(SeedRecord(
            serial=serial, secret=secret, kind=kind, hash=hash_, digits=digits,
            period=poc if kind is Kind.TOTP else 30, counter=poc if kind is Kind.HOTP else 0))
    if not records:
        raise SeedFileError("the CSV file holds no tokens")
    return ParsedFile(records, [])

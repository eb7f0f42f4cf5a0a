"""Seed-file import: PSKC (RFC 6030 and the IETF drafts before it, through python-pskc) and
a simple CSV, read within bounds, with an outcome for every key.

Bounded parsing. Nothing of a file is trusted before it has been measured: its size first,
then, for PSKC, one streaming pass of expat that counts nesting depth, elements and keys and
refuses entity declarations (the defusedxml protections: no billion laughs, no external
entities) while it builds the element tree python-pskc then reads. The pass stops at the
first limit passed, so no file, whatever its shape, makes a deep tree (C recursion in
`copy.deepcopy` once killed the daemon with 200,000 nested elements) or a huge one. CSV is
read line by line with the same size, row and field limits. Every limit passed is a
`SeedFileLimit` naming the limit and its config key.

Per-key outcomes. A key is imported, skipped with a reason (`SkipReason`: a PIN key, an
algorithm that is not HOTP/TOTP, a key policy that forbids OTP use now, no secret in the
file), or is an error. An error in a key that would be imported (a bad secret, a failed MAC,
a zero time step, a counter out of range) refuses the whole file: nothing is imported. The
service adds the skips that need the database (`already_registered`) and the in-file
duplicates (`duplicate_in_file`).

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
import datetime as _dt
import enum
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.parsers import expat

import pskc
from pskc.exceptions import KeyDerivationError, PSKCError
from pskc.parser import PSKCParser, plain2int
from pskc.xml import findall, remove_namespaces

from validator.core import Kind
from validator.errors import SeedFileError, SeedFileLimit
from validator.otp import ALGORITHMS

CSV_HEADER = ("serial", "secret_hex", "kind", "digits", "period_or_counter", "hash")

# Every algorithm name a PSKC file may give a key, mapped to what foblab makes of it: an OTP
# kind, or "pin" (a PIN key: skipped and reported). Matched without regard to case. One table
# on purpose: it belongs with the token vocabulary and can move there as it is.
PSKC_ALGORITHMS: dict[str, str] = {
    # RFC 6030 §10 (and the algorithm profiles it registers)
    "urn:ietf:params:xml:ns:keyprov:pskc:hotp": "hotp",
    "urn:ietf:params:xml:ns:keyprov:pskc:totp": "totp",
    "urn:ietf:params:xml:ns:keyprov:pskc:pin": "pin",
    # draft-ietf-keyprov-pskc-02 .. -05, draft-hoyer-keyprov-pskc-algorithm-profiles-01
    "urn:ietf:params:xml:ns:keyprov:pskc#hotp": "hotp",
    "urn:ietf:params:xml:ns:keyprov:pskc#totp": "totp",
    "urn:ietf:params:xml:ns:keyprov:pskc#pin": "pin",
    # draft-ietf-keyprov-pskc-00/-01 and vendor files written to them
    "http://www.ietf.org/keyprov/pskc#hotp": "hotp",
    "http://www.ietf.org/keyprov/pskc#totp": "totp",
    "http://www.ietf.org/keyprov/pskc#pin": "pin",
    # draft-hoyer-keyprov-portable-symmetric-key-container-00/-01: bare names
    "hotp": "hotp",
    "totp": "totp",
    "pin": "pin",
}


class SkipReason(enum.StrEnum):
    """Why a key of a seed file was left out: stable strings, safe to show and to log."""

    PIN_KEY = "pin_key"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    USAGE_NOT_OTP = "usage_not_otp"
    UNKNOWN_POLICY = "unknown_policy"
    PIN_POLICY = "pin_policy"
    NO_SECRET = "no_secret"
    DUPLICATE_IN_FILE = "duplicate_in_file"
    ALREADY_REGISTERED = "already_registered"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A key left out of an import: its serial (or key id), why, and a detail for people."""

    serial: str
    reason: SkipReason
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"serial": self.serial, "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ImportLimits:
    """Bounds on a seed file, each with the config key ([validator] section) that sets it."""

    max_bytes: int = 16 * 1024 * 1024  # max_import_bytes
    max_depth: int = 32  # import_max_depth
    max_elements: int = 1_000_000  # import_max_elements
    max_keys: int = 100_000  # import_max_keys: PSKC keys or CSV rows
    max_field_chars: int = 4096  # import_max_field_chars: one CSV field or XML text

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_depth, self.max_elements, self.max_keys,
               self.max_field_chars) < 1:
            raise ValueError("import limits must be positive")


DEFAULT_LIMITS = ImportLimits()


@dataclass(frozen=True, slots=True)
class SeedRecord:
    """One token read from a seed file. `drift_steps`: the PSKC TimeDrift, in intervals.
    `expires`: the key policy's expiry (Unix seconds), or None."""

    serial: str
    secret: bytes = field(repr=False)
    kind: Kind = Kind.TOTP
    algorithm: str = "sha1"
    digits: int = 6
    period: int = 30
    t0: int = 0
    counter: int = 0
    drift_steps: int = 0
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class ParsedFile:
    records: list[SeedRecord]
    skipped: list[Skipped]


Progress = Callable[[int, int], None]  # (keys done, keys in the file)


def _size(data: bytes | str, limits: ImportLimits) -> None:
    if len(data) > limits.max_bytes:
        raise SeedFileLimit(f"the file is {len(data)} bytes; the limit is {limits.max_bytes} "
                            "(max_import_bytes)")


# -- PSKC: the bounded tree ---------------------------------------------------------------

_KEY_TAGS = frozenset({"Key"})  # RFC 6030 and drafts; draft-00's <Secret> counted below


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def bounded_tree(data: bytes, limits: ImportLimits = DEFAULT_LIMITS) -> ET.Element:
    """The element tree of `data`, built in one streaming expat pass that refuses the file
    at the first limit passed (depth, elements, keys, text length) and any entity
    declaration or external reference (as defusedxml does)."""
    _size(data, limits)
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    stack: list[str] = []
    count = 0
    keys = 0
    text = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count, keys, text
        count += 1
        text = 0
        if len(stack) >= limits.max_depth:
            raise SeedFileLimit(f"elements nest deeper than {limits.max_depth} levels "
                                "(import_max_depth)")
        if count > limits.max_elements:
            raise SeedFileLimit(f"the file holds more than {limits.max_elements} elements "
                                "(import_max_elements)")
        name = _local(tag)
        if name in _KEY_TAGS or (name == "Secret" and stack and stack[-1] == "Device"):
            keys += 1
            if keys > limits.max_keys:
                raise SeedFileLimit(f"the file holds more than {limits.max_keys} keys "
                                    "(import_max_keys)")
        stack.append(name)
        builder.start("{" + tag if "}" in tag else tag,
                      {("{" + k if "}" in k else k): v for k, v in attrs.items()})

    def end(tag: str) -> None:
        nonlocal text
        stack.pop()
        text = 0
        builder.end("{" + tag if "}" in tag else tag)

    def chars(data: str) -> None:
        nonlocal text
        text += len(data)
        if text > limits.max_field_chars:
            raise SeedFileLimit(f"an element holds more than {limits.max_field_chars} "
                                "characters of text (import_max_field_chars)")
        builder.data(data)

    def no_entities(*_: object) -> None:
        raise SeedFileError("the file declares XML entities, which are not allowed")

    def no_external(*_: object) -> int:
        raise SeedFileError("the file refers to external XML entities, which are not allowed")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.EntityDeclHandler = no_entities
    parser.UnparsedEntityDeclHandler = no_entities
    parser.ExternalEntityRefHandler = no_external
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise SeedFileError(f"not a usable PSKC file: not well-formed XML "
                            f"({expat.ErrorString(exc.code)}, line {exc.lineno})") from None
    try:
        return builder.close()
    except AssertionError:  # no root element
        raise SeedFileError("not a usable PSKC file: no XML element") from None


# -- PSKC: keys ---------------------------------------------------------------------------

def _suite(name: str | None, where: str) -> str:
    if not name:
        return "sha1"
    norm = name.upper().replace("HMAC-", "").replace("-", "")
    algorithm = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}.get(norm)
    if algorithm is None:
        raise SeedFileError(f"{where}: unsupported hash suite {name!r}")
    return algorithm


def _epoch(value: _dt.datetime | None) -> float | None:
    """A PSKC date as Unix seconds; a date without a zone is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


def _iso(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DRAFT_NAMES = frozenset({"SECRET", "COUNTER", "TIME", "TIME_INTERVAL"})


def _draft_drifts(root: ET.Element) -> list[int | None]:
    """Per key, in python-pskc's order: the draft spelling `<Data Name="TIME_DRIFT">`,
    which python-pskc does not read (it reads SECRET, COUNTER, TIME, TIME_INTERVAL and
    fails on any other name). Every other `<Data Name>` is taken out of the tree."""
    remove_namespaces(root)
    out: list[int | None] = []
    for package in findall(root, "KeyPackage", "Device"):
        for key in findall(package, "Key", "Secret"):
            value: int | None = None
            for data in list(findall(key, "Data")):
                name = (data.get("Name") or "").upper()
                if not name or name in _DRAFT_NAMES:
                    continue
                if name == "TIME_DRIFT":
                    text = (data.findtext("Value") or data.findtext("PlainValue") or "").strip()
                    try:
                        value = plain2int(text) if text else None
                    except (ValueError, binascii.Error):
                        raise SeedFileError(f"key {len(out) + 1}: TIME_DRIFT is not an "
                                            "integer") from None
                key.remove(data)
            out.append(value)
    return out


def _decryption(container: pskc.PSKC, passphrase: str | None, key_hex: str | None) -> str:
    """Set the container's key from what was given; returns which one, for messages."""
    encryption = container.encryption
    algorithm = (encryption.algorithm or "").lower()
    if "rsa" in algorithm:
        raise SeedFileError("the file's keys are encrypted to an RSA key (asymmetric key "
                            "transport): not supported; ask the vendor for a file encrypted "
                            "with a pre-shared key or a passphrase")
    if encryption.derivation.algorithm:
        if passphrase is None:
            raise SeedFileError("the file's keys are encrypted with a passphrase (PBKDF2); "
                                "give the passphrase")
        try:
            encryption.derive_key(passphrase)
        except KeyDerivationError as exc:
            raise SeedFileError(f"cannot derive the file's key from the passphrase: "
                                f"{exc}") from None
        return "the passphrase"
    if key_hex is None:
        raise SeedFileError("the file's keys are encrypted with a pre-shared key; give "
                            "key_hex")
    try:
        encryption.key = bytes.fromhex(key_hex)
    except ValueError:
        raise SeedFileError("key_hex is not hexadecimal") from None
    return "key_hex"


def _policy_skip(key: pskc.key.Key, now: float) -> tuple[SkipReason, str] | None:
    """Why RFC 6030 §5's key policy forbids importing this key for OTP use now, or None."""
    policy = key.policy
    if policy.unknown_policy_elements:
        return SkipReason.UNKNOWN_POLICY, "the key's policy has elements foblab does not know"
    if policy.number_of_transactions is not None:
        return (SkipReason.UNKNOWN_POLICY,
                "NumberOfTransactions: foblab cannot enforce a limit on uses")
    if policy.key_usage and "OTP" not in policy.key_usage:
        return SkipReason.USAGE_NOT_OTP, f"key usage {', '.join(policy.key_usage)}"
    if policy.pin_usage not in (None, "Local"):
        return (SkipReason.PIN_POLICY, f"PIN usage mode {policy.pin_usage}: the validator "
                "would have to check a PIN")
    start = max((t for t in (_epoch(policy.start_date), _epoch(key.device.start_date))
                 if t is not None), default=None)
    if start is not None and start > now:
        return SkipReason.NOT_YET_VALID, f"valid from {_iso(start)}"
    expires = _expiry(key)
    if expires is not None and expires <= now:
        return SkipReason.EXPIRED, f"expired {_iso(expires)}"
    return None


def _expiry(key: pskc.key.Key) -> float | None:
    return min((t for t in (_epoch(key.policy.expiry_date), _epoch(key.device.expiry_date))
                if t is not None), default=None)


def parse_pskc(content: bytes | str, *, passphrase: str | None = None,
               key_hex: str | None = None, now: float, limits: ImportLimits = DEFAULT_LIMITS,
               progress: Progress | None = None) -> ParsedFile:
    """Read every key of a PSKC container. Usable OTP keys become records; the others are
    skipped with a reason. `key_hex` (pre-shared AES key) or `passphrase` (PBKDF2) decrypt.
    A MAC mismatch, a bad value or an unusable parameter in a usable key refuses the file."""
    data = content.encode() if isinstance(content, str) else content
    root = bounded_tree(data, limits)
    drifts = _draft_drifts(root)
    container = pskc.PSKC()
    try:
        PSKCParser.parse_document(container, root)
    except PSKCError as exc:
        raise SeedFileError(f"not a usable PSKC file: {exc}") from None
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise SeedFileError(f"not a usable PSKC file: a value cannot be read "
                            f"({type(exc).__name__})") from None
    if not container.keys:
        raise SeedFileError("the file holds no keys")
    given = ""
    if container.encryption.is_encrypted:
        given = _decryption(container, passphrase, key_hex)
    records: list[SeedRecord] = []
    skipped: list[Skipped] = []
    total = len(container.keys)
    for index, key in enumerate(container.keys, 1):
        if progress is not None and index % 500 == 0:
            progress(index, total)
        name = str(key.serial or key.id or "").strip()
        where = f"key {index} ({name or 'no serial'})"
        label = name or f"key {index}"
        uri = (key.algorithm or "").strip()
        kind_name = PSKC_ALGORITHMS.get(uri.lower())
        if kind_name == "pin":
            skipped.append(Skipped(label, SkipReason.PIN_KEY, "a PIN key, not an OTP key"))
            continue
        if kind_name is None:
            skipped.append(Skipped(label, SkipReason.UNSUPPORTED_ALGORITHM,
                                   f"algorithm {uri or 'none'}"))
            continue
        why = _policy_skip(key, now)
        if why is not None:
            skipped.append(Skipped(label, *why))
            continue
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
            check = "the MAC check failed" if "MAC" in reason else \
                "the padding check failed" if "padding" in reason.lower() else reason
            raise SeedFileError(f"{where}: wrong passphrase or key ({given} given): {check}"
                                + (" (or the file was altered: the MAC value does not match)"
                                   if "MAC" in reason else "")) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise SeedFileError(f"{where}: a value cannot be read "
                                f"({type(exc).__name__})") from None
        if not secret:
            skipped.append(Skipped(label, SkipReason.NO_SECRET, "no secret in the file (a "
                                   "key derived from a master key by reference, or empty)"))
            continue
        if drift is None:
            drift = drifts[index - 1] if index - 1 < len(drifts) else None
        if key.response_encoding not in (None, "DECIMAL"):
            raise SeedFileError(f"{where}: response encoding {key.response_encoding!r} is "
                                "not DECIMAL")
        digits = key.response_length or 6
        if not 6 <= digits <= 10:
            raise SeedFileError(f"{where}: {digits} digits is not supported (6 to 10)")
        period = 30 if interval is None else int(interval)
        if period <= 0:
            raise SeedFileError(f"{where}: time step {period} is not positive")
        if counter is not None and not 0 <= int(counter) <= 2**63:
            raise SeedFileError(f"{where}: counter {counter} is out of range (0 to 2**63)")
        records.append(SeedRecord(
            serial=name, secret=bytes(secret), kind=Kind(kind_name),
            algorithm=_suite(key.algorithm_suite, where), digits=int(digits), period=period,
            t0=int(t0 or 0), counter=int(counter or 0), drift_steps=int(drift or 0),
            expires=_expiry(key)))
    return ParsedFile(records, skipped)


# -- CSV ----------------------------------------------------------------------------------

def parse_csv(content: bytes | str, *, limits: ImportLimits = DEFAULT_LIMITS,
              progress: Progress | None = None) -> ParsedFile:
    """Read the CSV format above. Every line is checked; the first bad one is named."""
    _size(content, limits)
    try:
        text = content.decode("utf-8-sig") if isinstance(content, bytes) else content
    except UnicodeDecodeError:
        raise SeedFileError("the CSV file is not UTF-8") from None
    # Keep the file's own line numbers, so an error names the line an editor shows.
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SeedFileError("the CSV file is empty")
    if len(lines) - 1 > limits.max_keys:
        raise SeedFileLimit(f"the file holds {len(lines) - 1} rows; the limit is "
                            f"{limits.max_keys} (import_max_keys)")
    records: list[SeedRecord] = []
    total = len(lines) - 1
    for index, (number, line) in enumerate(lines):
        if progress is not None and index and index % 500 == 0:
            progress(index, total)
        try:
            row = next(csv.reader([line]))
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise SeedFileLimit(f"line {number}: a field is longer than "
                                    f"{limits.max_field_chars} characters "
                                    "(import_max_field_chars)") from None
            raise SeedFileError(f"line {number}: not CSV ({exc})") from None
        longest = max((len(cell) for cell in row), default=0)
        if longest > limits.max_field_chars:
            raise SeedFileLimit(f"line {number}: a field of {longest} characters; the limit "
                                f"is {limits.max_field_chars} (import_max_field_chars)")
        cells = [cell.strip() for cell in row]
        if index == 0:
            if tuple(cell.lower() for cell in cells) != CSV_HEADER:
                raise SeedFileError(f"the CSV header must be {','.join(CSV_HEADER)}")
            continue
        records.append(_csv_record(number, cells))
    if not records:
        raise SeedFileError("the CSV file holds no tokens")
    return ParsedFile(records, [])


def _csv_record(number: int, cells: list[str]) -> SeedRecord:
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
        kind = Kind(kind_text.lower())
    except ValueError:
        raise SeedFileError(f"{where}: kind must be totp or hotp") from None
    try:
        digits = int(digits_text) if digits_text else 6
        poc = int(poc_text) if poc_text else (30 if kind is Kind.TOTP else 0)
    except ValueError:
        raise SeedFileError(f"{where}: digits and period_or_counter must be "
                            "integers") from None
    if not 6 <= digits <= 10:
        raise SeedFileError(f"{where}: {digits} digits is not supported (6 to 10)")
    algorithm = (hash_text or "sha1").lower().replace("-", "")
    if algorithm not in ALGORITHMS:
        raise SeedFileError(f"{where}: hash must be sha1, sha256 or sha512")
    if kind is Kind.TOTP and poc <= 0:
        raise SeedFileError(f"{where}: time step {poc} is not positive")
    if kind is Kind.HOTP and poc < 0:
        raise SeedFileError(f"{where}: the HOTP counter must not be negative")
    return SeedRecord(
        serial=serial, secret=secret, kind=kind, algorithm=algorithm, digits=digits,
        period=poc if kind is Kind.TOTP else 30, counter=poc if kind is Kind.HOTP else 0)

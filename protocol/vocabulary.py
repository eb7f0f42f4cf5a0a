"""The token vocabulary: what a token *is*, named once for the whole tree.

A token's kind (TOTP or HOTP), its hash and its crystal's temperature mode each have a
text label (what JSON, TOML, CSV, the command line and the database say: `totp`,
`sha256`, `daily`) and a wire value (the byte the protocol carries). The emulator, the
validator, the API schema, the click choices, the scenario files and the seed-file
importers all derive their choices from these enums, so adding a hash or a mode is an edit
here plus the code that genuinely behaves differently.

The members are `StrEnum`s whose value is the label: a label is what most of the tree
stores and compares (`Kind.TOTP == "totp"`, `json.dumps` writes `"totp"`), and the wire
byte is one encoding among several, asked for by the codec alone (`.wire`, `from_wire`).
`from_label` is the forgiving parser for text from outside (any case; for a hash, with or
without a dash or an `HMAC-` prefix), raising a ValueError that lists the choices.

The ranges every side agrees on are here too: digits, period, seed length.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, Self

_BY_WIRE: dict[type, dict[int, Any]] = {}
PSKC_ALGORITHM_PREFIX: Final = "urn:ietf:params:xml:ns:keyprov:pskc:"


class _Vocabulary(StrEnum):
    """A label with a wire value. Members are declared as `NAME = (label, wire, ...)`."""

    wire: int

    def __new__(cls, label: str, wire: int, *extra: Any) -> Self:
        member = str.__new__(cls, label)
        member._value_ = label
        member.wire = wire
        return member

    @property
    def label(self) -> str:
        """The text form: JSON, TOML, CSV, the command line, the database."""
        return self.value

    @classmethod
    def labels(cls) -> tuple[str, ...]:
        """Every label, in declaration order (click choices, JSON Schema enums)."""
        return tuple(m.value for m in cls)

    @classmethod
    def choices(cls) -> str:
        """The labels for a message: `totp or hotp`, `sha1, sha256 or sha512`."""
        labels = cls.labels()
        return labels[0] if len(labels) == 1 else \
            f"{', '.join(labels[:-1])} or {labels[-1]}"

    @classmethod
    def _normalise(cls, text: str) -> str:
        return text.strip().lower()

    @classmethod
    def from_label(cls, text: object) -> Self:
        """The member for `text`, case-insensitively. Raises ValueError naming the choices."""
        if isinstance(text, str):
            member = cls._value2member_map_.get(text)  # the common case: a label as is
            if member is None:
                member = cls._value2member_map_.get(cls._normalise(text))
            if member is not None:
                return member  # type: ignore[return-value]
        raise ValueError(f"{cls._what()} must be one of {', '.join(cls.labels())}, "
                         f"not {text!r}")

    @classmethod
    def from_wire(cls, value: int) -> Self:
        """The member whose wire value is `value`. Raises ValueError for an unknown one."""
        table = _BY_WIRE.get(cls)
        if table is None:
            table = _BY_WIRE[cls] = {m.wire: m for m in cls}
        try:
            return table[value]  # type: ignore[no-any-return]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {cls._what()} {value!r}") from None

    @classmethod
    def _what(cls) -> str:
        return cls.__name__.lower()


class Kind(_Vocabulary):
    """A token's OTP kind: time-based (RFC 6238) or event-based (RFC 4226)."""

    TOTP = ("totp", 1)
    HOTP = ("hotp", 2)

    @property
    def pskc_algorithm(self) -> str:
        """The kind as a PSKC seed file names it (RFC 6030 §6.1: the URI ends in the label)."""
        return PSKC_ALGORITHM_PREFIX + self.value


PSKC_PIN: Final = "pin"
"""What `PSKC_ALGORITHMS` makes of a PIN key's algorithm (skipped by an import)."""
_PSKC_ALGORITHM_SPELLINGS: Final = (
    PSKC_ALGORITHM_PREFIX,  # RFC 6030 §10 (and the algorithm profiles it registers)
    # draft-ietf-keyprov-pskc-02 .. -05, draft-hoyer-keyprov-pskc-algorithm-profiles-01
    "urn:ietf:params:xml:ns:keyprov:pskc#",
    "http://www.ietf.org/keyprov/pskc#",  # draft-ietf-keyprov-pskc-00/-01 and vendor files
    "",  # draft-hoyer-keyprov-portable-symmetric-key-container-00/-01: bare names
)
PSKC_ALGORITHMS: Final[dict[str, str]] = {
    prefix + name: name
    for prefix in _PSKC_ALGORITHM_SPELLINGS for name in (*(k.value for k in Kind), PSKC_PIN)}
"""Every algorithm name a PSKC file (RFC 6030 or the drafts before it) may give a key, in
lower case, mapped to what foblab makes of it: a `Kind` label, or `PSKC_PIN` for a PIN key.
Look names up lower-cased: vendors differ in case."""


class Hash(_Vocabulary):
    """The HMAC hash of a token's codes; its label is also its `hashlib` name."""

    seed_bytes: int

    SHA1 = ("sha1", 1, 20)
    SHA256 = ("sha256", 2, 32)
    SHA512 = ("sha512", 3, 64)

    def __new__(cls, label: str, wire: int, seed_bytes: int) -> Self:
        member = str.__new__(cls, label)
        member._value_ = label
        member.wire = wire
        # The seed a factory generates: as long as the hash's output, as RFC 6238's
        # test vectors have it.
        member.seed_bytes = seed_bytes
        return member

    @property
    def hashlib_name(self) -> str:
        return self.value

    @property
    def pskc_suite(self) -> str:
        """The hash as a PSKC seed file's AlgorithmParameters Suite names it: HMAC-SHA256."""
        return "HMAC-" + self.value.upper()

    @classmethod
    def _normalise(cls, text: str) -> str:
        # PSKC suites say "HMAC-SHA256", people say "SHA-256"; all mean sha256.
        text = text.strip().lower()
        text = text.removeprefix("hmac-")
        return text.replace("-", "")


class TemperatureMode(_Vocabulary):
    """How a token's crystal sees temperature (see docs/token.md)."""

    NONE = ("none", 0)  # no temperature term: the crystal sits at its turnover point, 25 °C
    CONSTANT = ("constant", 1)  # a fixed temperature, `temperature_c`
    DAILY = ("daily", 2)  # a daily sine: `temperature_c` ± `temperature_swing_c`, coldest 04:00 UTC

    @classmethod
    def _what(cls) -> str:
        return "temperature mode"


TOKEN_DIGITS: Final = (6, 8)
"""The display lengths of the tokens foblab builds and enrolls (model, API, CLI, station)."""
MIN_DIGITS: Final = 6
MAX_DIGITS: Final = 10
"""What a seed file may say and the validator verifies (RFC 4226 allows 6 to 10)."""
DEFAULT_PERIOD: Final = 30
MIN_PERIOD: Final = 1
MAX_PERIOD: Final = 3600
"""A TOTP step, seconds: what a token and the API accept."""
MAX_SEED_BYTES: Final = 64
"""The longest seed a token stores (SHA-512's natural length)."""


def check_digits(digits: object, allowed: tuple[int, ...] = TOKEN_DIGITS) -> int:
    """`digits` if it is one of `allowed`; ValueError otherwise."""
    if not isinstance(digits, int) or isinstance(digits, bool) or digits not in allowed:
        raise ValueError(f"digits must be {' or '.join(map(str, allowed))}, not {digits!r}")
    return digits


def check_period(period: object) -> int:
    """`period` if it is a TOTP step a token supports (1..3600 s); ValueError otherwise."""
    if not isinstance(period, int) or isinstance(period, bool) \
            or not MIN_PERIOD <= period <= MAX_PERIOD:
        raise ValueError(f"period must be {MIN_PERIOD}..{MAX_PERIOD} s, not {period!r}")
    return period

"""The validator's input rules, each written once.

User names, serials, station names and codes are checked by the HTTP API (its JSON Schema
and its path parameters), the service, the configuration, the AWS parameters, the seed-file
importers and the scenario parser; all of them take the rule from here. A rule is a
character class and a length; the JSON Schema form (`*_PATTERN`), a compiled regex and a
one-line description all come from the same two facts. Each door words its own refusal
(a 400 `invalid_user`, a `ConfigError`, AWS's `ValidationError`), but never restates the rule.

The token's own rules (digits, period, the seed length, a hash) are the vocabulary's, in
`protocol`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Final

from protocol import MAX_DIGITS


@dataclass(frozen=True)
class Rule:
    """Text of `chars` (a regex character class body), `min_length` to `max_length` long."""

    chars: str
    max_length: int
    min_length: int = 1
    words: str = ""
    """The characters in words, for messages: 'letters, digits and +=,.@_-'."""

    @property
    def pattern(self) -> str:
        """The JSON Schema `pattern` (anchored; `$` is end of string there)."""
        return f"^[{self.chars}]{{{self.min_length},{self.max_length}}}$"

    def regex(self, max_length: int | None = None,
              min_length: int | None = None) -> re.Pattern[str]:
        """The compiled rule for `fullmatch`, optionally with other length bounds (a door
        with a tighter or a looser one, e.g. AWS's 128-character user names)."""
        return _compiled(self.chars, min_length or self.min_length,
                         max_length or self.max_length)

    def matches(self, text: object, max_length: int | None = None) -> bool:
        return isinstance(text, str) and self.regex(max_length).fullmatch(text) is not None

    def requirement(self, max_length: int | None = None) -> str:
        """`1-64 letters, digits and +=,.@_-`."""
        return f"{self.min_length}-{max_length or self.max_length} {self.words}"

    def describe(self, what: str, max_length: int | None = None) -> str:
        """`user names are 1-64 letters, digits and +=,.@_-`."""
        return f"{what} are {self.requirement(max_length)}"


@cache
def _compiled(chars: str, low: int, high: int) -> re.Pattern[str]:
    return re.compile(f"[{chars}]{{{low},{high}}}")


USER: Final = Rule("A-Za-z0-9+=,.@_-", 64, words="letters, digits and +=,.@_-")
"""User names as AWS IAM allows them (its 128 is cut to our default 64; configurable)."""
SERIAL: Final = Rule(r"\x21-\x7e", 256,
                     words="printable ASCII characters without spaces")
"""Serials as the validator stores them: AWS MFA serials (ARNs) run to 256."""
STATION: Final = Rule("A-Za-z0-9_.-", 64, words="letters, digits, '_', '.', '-'")
"""Names of enrollment stations (config keys and API path segments)."""
CODE: Final = Rule("0-9", MAX_DIGITS, words="digits")
"""What a code may look like on the way in; the core then wants exactly the token's digits."""

USER_PATTERN: Final = USER.pattern
SERIAL_PATTERN: Final = SERIAL.pattern
STATION_PATTERN: Final = STATION.pattern
CODE_PATTERN: Final = CODE.pattern


def well_formed_code(code: str, digits: int) -> bool:
    """Exactly `digits` ASCII digits (no unicode digits, no spaces, no signs)."""
    return len(code) == digits and code.isascii() and code.isdigit()

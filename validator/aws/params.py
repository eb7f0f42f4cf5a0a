"""Query-protocol parameters: flat `Name=value` pairs (lists as `Name.member.N`), checked
against the constraints of IAM's and STS's service models.

botocore checks only minimum lengths on the client side, so every constraint is enforced
here, answering `ValidationError` (400) in AWS's wording.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Mapping

from validator import rules
from validator.aws.errors import AwsError, missing, validation_error

SERIAL = re.compile(r"[\w+=/:,.@-]{9,256}", re.ASCII)
USER = rules.USER.regex(128)  # our user rule, at IAM's own length ([\w+=,.@-] in ASCII)
CODE = rules.CODE.regex(6, min_length=6)  # AWS's MFA codes are exactly six digits
DEVICE_NAME = re.compile(r"[\w+=,.@-]{1,226}", re.ASCII)
PATH = re.compile(r"/|/[\x21-\x7e]+/")
_MEMBER = re.compile(r"(\w+)\.member\.([1-9][0-9]{0,3})(?:\.(\w+))?")
_INTEGER = re.compile(r"-?[0-9]{1,12}")
_TAG_PUNCT = frozenset("_.:/=+-@")


def _member_name(name: str) -> str:
    # AWS names the offending member in lowerCamelCase in its validation messages.
    return name[:1].lower() + name[1:]


def _tag_text(text: str) -> bool:
    return all(c in _TAG_PUNCT or unicodedata.category(c)[0] in "LZN" for c in text)


class Params:
    """The request's parameters with typed, validated accessors."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)

    def optional(self, name: str) -> str | None:
        return self.values.get(name)

    def required(self, name: str) -> str:
        value = self.values.get(name)
        if value is None:
            raise missing(_member_name(name))
        return value

    def _match(self, name: str, pattern: re.Pattern[str], constraint: str,
               required: bool) -> str | None:
        value = self.required(name) if required else self.optional(name)
        if value is not None and not pattern.fullmatch(value):
            raise validation_error(_member_name(name), constraint)
        return value

    def serial(self, name: str = "SerialNumber", required: bool = True) -> str | None:
        return self._match(name, SERIAL, "Member must be 9-256 characters of "
                           "[\\w+=/:,.@-]", required)

    def user(self, name: str = "UserName", required: bool = True) -> str | None:
        return self._match(name, USER, "Member must be 1-128 characters of [\\w+=,.@-]",
                           required)

    def code(self, name: str, required: bool = True) -> str | None:
        return self._match(name, CODE, "Member must be exactly 6 digits", required)

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.optional(name)
        if value is None:
            return None
        if not _INTEGER.fullmatch(value):  # int() would take " +９00" too
            raise validation_error(_member_name(name), "Member must be an integer")
        number = int(value)
        if not low <= number <= high:
            raise validation_error(_member_name(name), f"Member must have value greater "
                                   f"than or equal to {low} and less than or equal to {high}")
        return number

    def members(self, name: str) -> list[dict[str, str]]:
        """The list `name.member.N[.Field]` in N order; for scalar lists the value is under
        the key ''. Gaps are refused, as AWS refuses them."""
        found: dict[int, dict[str, str]] = {}
        for key, value in self.values.items():
            m = _MEMBER.fullmatch(key)
            if m and m.group(1) == name:
                found.setdefault(int(m.group(2)), {})[m.group(3) or ""] = value
        if sorted(found) != list(range(1, len(found) + 1)):
            raise validation_error(_member_name(name), "Member list indices must run from "
                                   "1 without gaps")
        return [found[i] for i in sorted(found)]

    def tags(self, name: str = "Tags", required: bool = False) -> list[tuple[str, str]]:
        entries = self.members(name)
        if required and not entries and name not in self.values:
            raise missing(_member_name(name))
        if len(entries) > 50:
            raise validation_error(_member_name(name), "Member must have length less than "
                                   "or equal to 50")
        tags: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries, start=1):
            key, value = entry.get("Key"), entry.get("Value")
            where = f"{_member_name(name)}.{i}"
            if key is None:
                raise missing(f"{where}.member.key")
            if value is None:
                raise missing(f"{where}.member.value")
            if not 1 <= len(key) <= 128 or not _tag_text(key):
                raise validation_error(f"{where}.member.key", "Member must be 1-128 letters, "
                                       "spaces, digits or _.:/=+-@")
            if len(value) > 256 or not _tag_text(value):
                raise validation_error(f"{where}.member.value", "Member must be 0-256 "
                                       "letters, spaces, digits or _.:/=+-@")
            if key.lower() in seen:
                raise AwsError("InvalidInput", "Duplicate tag keys found. Please note that "
                               "Tag keys are case insensitive.", 400)
            seen.add(key.lower())
            tags.append((key, value))
        return tags

    def tag_keys(self, name: str = "TagKeys") -> list[str]:
        keys = [entry.get("", "") for entry in self.members(name)]
        if not keys and name not in self.values:
            raise missing(_member_name(name))
        if len(keys) > 50:
            raise validation_error(_member_name(name), "Member must have length less than "
                                   "or equal to 50")
        for i, key in enumerate(keys, start=1):
            if not 1 <= len(key) <= 128 or not _tag_text(key):
                raise validation_error(f"{_member_name(name)}.{i}.member", "Member must be "
                                       "1-128 letters, spaces, digits or _.:/=+-@")
        return keys

    def paging(self) -> tuple[str | None, int]:
        """(decoded Marker or None, MaxItems, default 100)."""
        max_items = self.integer("MaxItems", 1, 1000) or 100
        marker = self.optional("Marker")
        if marker is None:
            return None, max_items
        try:
            return decode_marker(marker), max_items
        except ValueError:
            raise validation_error("marker", "Member must be a Marker returned by a "
                                   "previous call") from None


def encode_marker(position: str) -> str:
    return base64.urlsafe_b64encode(b"foblab:" + position.encode()).decode("ascii")


def decode_marker(marker: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(marker.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("bad marker") from None
    if not raw.startswith(b"foblab:"):
        raise ValueError("bad marker")
    try:
        return raw[len(b"foblab:"):].decode()
    except UnicodeDecodeError:
        raise ValueError("bad marker") from None

"""Token models: the presets a token is built from, each overridable.

A model fixes what the factory decides: the OTP kind and algorithm, the display, the serial
number format and the firmware. `build_model` applies command-line overrides to a preset.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from protocol import DEFAULT_PERIOD, Hash, Kind, check_digits, check_period

FIRMWARE = "1.0.0"


@dataclass(frozen=True)
class Model:
    """What a token model is: algorithm, display and serial format."""

    name: str
    description: str
    kind: Kind = Kind.TOTP
    hash: Hash = Hash.SHA1
    digits: int = 6
    period: int = DEFAULT_PERIOD
    serial_prefix: str = "GAHT"
    serial_digits: int = 8
    firmware: str = FIRMWARE
    display_timeout_s: int = 30
    """Seconds the display stays lit after a press, as on a real token."""

    def make_serial(self, rng: random.Random) -> str:
        """A serial number in this model's format, e.g. `GAHT12345678`."""
        number = rng.randrange(10**self.serial_digits)
        return f"{self.serial_prefix}{number:0{self.serial_digits}d}"


PRESETS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("keyfob", "TOTP key fob, SHA-1, 6 digits, 30 s (AWS-style hardware MFA)"),
        Model("card", "TOTP display card, SHA-1, 6 digits, 30 s", serial_prefix="GACD"),
        Model("keyfob-60", "TOTP key fob, 60 s step (Feitian c200 style)", period=60,
              serial_prefix="FTC2"),
        Model("card-8", "TOTP display card, SHA-256, 8 digits", hash=Hash.SHA256, digits=8,
              serial_prefix="GAC8"),
        Model("event", "HOTP event key fob, SHA-1, 6 digits, counter per press", kind=Kind.HOTP,
              serial_prefix="GAEV"),
    )
}
DEFAULT_MODEL = "keyfob"


def build_model(
    name: str = DEFAULT_MODEL,
    *,
    kind: Kind | str | None = None,
    hash: Hash | str | None = None,
    digits: int | None = None,
    period: int | None = None,
) -> Model:
    """The preset `name` with any of its algorithm parameters overridden."""
    try:
        model = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; have: {', '.join(PRESETS)}") from None
    changes: dict[str, object] = {}
    if kind is not None:
        changes["kind"] = kind
    if hash is not None:
        changes["hash"] = hash
    if digits is not None:
        changes["digits"] = digits
    if period is not None:
        changes["period"] = period
    model = replace(model, **changes)  # type: ignore[arg-type]
    kind_, hash_ = validate_params(model.kind, model.hash, model.digits, model.period)
    return replace(model, kind=kind_, hash=hash_)


def validate_params(kind: object, hash: object, digits: int, period: int) -> tuple[Kind, Hash]:
    """The kind and hash as enums; ValueError for parameters no token of ours supports."""
    kind_, hash_ = Kind.from_label(kind), Hash.from_label(hash)
    check_digits(digits)
    check_period(period)
    return kind_, hash_

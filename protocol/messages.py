"""Protocol v1 messages: the typed, frozen values the rest of foblab sees.

Each request and reply is a small frozen dataclass. Which bytes they become is the
business of `protocol.codec`; which reply answers which request is the table
`REPLY_TYPES` at the bottom of this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from protocol.vocabulary import DEFAULT_PERIOD, Hash, Kind, TemperatureMode

PROTOCOL_VERSION: Final = 1
REPLY_BIT: Final = 0x80


class Command(IntEnum):
    """Command byte of a request. A reply carries the same value with `REPLY_BIT` set."""

    INFO = 0x01
    PRESS = 0x02
    DISPLAY = 0x03
    CLOCK = 0x04
    PROVISION = 0x05
    # QA commands: refused with NOT_PERMITTED unless the token runs in QA mode.
    SET_DRIFT = 0x10
    ADJUST_OFFSET = 0x11
    AGE = 0x12
    SET_TIME = 0x13
    FREEZE = 0x14
    UNFREEZE = 0x15
    PEEK = 0x16
    BATTERY = 0x17
    FACTORY_RESET = 0x18
    # Only ever sent as a reply (0xFF on the wire).
    ERROR = 0x7F


QA_COMMANDS: Final = frozenset(
    {
        Command.SET_DRIFT,
        Command.ADJUST_OFFSET,
        Command.AGE,
        Command.SET_TIME,
        Command.FREEZE,
        Command.UNFREEZE,
        Command.PEEK,
        Command.BATTERY,
        Command.FACTORY_RESET,
    }
)


class ErrorCode(IntEnum):
    UNKNOWN_COMMAND = 1
    BAD_LENGTH = 2
    BAD_ARGUMENT = 3
    NOT_PERMITTED = 4
    ALREADY_PROVISIONED = 5
    NOT_PROVISIONED = 6
    BATTERY_DEAD = 7
    BUSY = 8


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class InfoRequest:
    pass


@dataclass(frozen=True, slots=True)
class PressRequest:
    pass


@dataclass(frozen=True, slots=True)
class DisplayRequest:
    pass


@dataclass(frozen=True, slots=True)
class ClockRequest:
    pass


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    """Load a seed into a blank token. The token locks itself afterwards."""

    seed: bytes = field(repr=False)
    kind: Kind = Kind.TOTP
    hash: Hash = Hash.SHA1
    digits: int = 6
    period: int = DEFAULT_PERIOD  # seconds, TOTP only (ignored for HOTP, sent anyway)
    counter: int = 0  # initial counter, HOTP only


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """The crystal model's parameters: the payload of SET_DRIFT, echoed by CLOCK."""

    ppm: float = 0.0  # constant frequency error, + runs fast; 0.001 ppm resolution
    aging_ppm_per_year: float = 0.0
    temperature_mode: TemperatureMode = TemperatureMode.NONE
    temperature_c: float = 25.0  # 0.01 °C resolution
    temperature_swing_c: float = 0.0  # amplitude of the daily profile


@dataclass(frozen=True, slots=True)
class SetDriftRequest:
    drift: DriftSettings


@dataclass(frozen=True, slots=True)
class AdjustOffsetRequest:
    delta_ms: int  # signed: added to the token's clock at once (a jump)


@dataclass(frozen=True, slots=True)
class AgeRequest:
    span_ms: int  # >= 0: simulated time to pass, drift applied, without waiting


@dataclass(frozen=True, slots=True)
class SetTimeRequest:
    time_ms: int  # the token's clock is set to this, ms since the Unix epoch


@dataclass(frozen=True, slots=True)
class FreezeRequest:
    pass


@dataclass(frozen=True, slots=True)
class UnfreezeRequest:
    pass


@dataclass(frozen=True, slots=True)
class PeekRequest:
    count: int = 1  # 1..255: codes for the current step and the next count-1


@dataclass(frozen=True, slots=True)
class BatteryRequest:
    dead: bool  # True: the battery dies; False: a fresh one is fitted


@dataclass(frozen=True, slots=True)
class FactoryResetRequest:
    pass


Request = (
    InfoRequest
    | PressRequest
    | DisplayRequest
    | ClockRequest
    | ProvisionRequest
    | SetDriftRequest
    | AdjustOffsetRequest
    | AgeRequest
    | SetTimeRequest
    | FreezeRequest
    | UnfreezeRequest
    | PeekRequest
    | BatteryRequest
    | FactoryResetRequest
)

# ------------------------------------------------------------------ replies


@dataclass(frozen=True, slots=True)
class InfoReply:
    serial: str  # ASCII, as printed on the back of the token
    model: str
    firmware: str
    protocol_version: int
    kind: Kind
    hash: Hash
    digits: int
    period: int  # seconds (TOTP); 0 for HOTP
    provisioned: bool
    locked: bool
    qa_mode: bool
    battery_ok: bool

    def to_json(self) -> dict[str, Any]:
        """The JSON form `foblab token info --json` prints and the station API answers:
        every field under its own name, kind and hash as their labels."""
        return {"serial": self.serial, "model": self.model, "firmware": self.firmware,
                "protocol_version": self.protocol_version, "kind": self.kind.label,
                "hash": self.hash.label, "digits": self.digits, "period": self.period,
                "provisioned": self.provisioned, "locked": self.locked,
                "qa_mode": self.qa_mode, "battery_ok": self.battery_ok}


@dataclass(frozen=True, slots=True)
class PressReply:
    code: str  # the digits now on the display
    seconds_left: int  # in the current TOTP step; 0 for HOTP


@dataclass(frozen=True, slots=True)
class DisplayReply:
    code: str  # "" while the display is blank
    seconds_left: int


@dataclass(frozen=True, slots=True)
class ClockReply:
    token_time_ms: int  # what the token believes the time is, ms since the epoch
    offset_ms: int  # token time minus true time
    drift: DriftSettings
    frozen: bool


@dataclass(frozen=True, slots=True)
class PeekReply:
    step: int  # TOTP step (or HOTP counter) of the first code
    seconds_left: int  # in that step; 0 for HOTP
    codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    code: ErrorCode
    detail: str = ""  # short human-readable reason, never secret material


Reply = InfoReply | PressReply | DisplayReply | ClockReply | PeekReply | ErrorReply

# Which request class each command carries, and which reply answers it (besides ErrorReply).
REQUEST_TYPES: Final[dict[Command, type[Request]]] = {
    Command.INFO: InfoRequest,
    Command.PRESS: PressRequest,
    Command.DISPLAY: DisplayRequest,
    Command.CLOCK: ClockRequest,
    Command.PROVISION: ProvisionRequest,
    Command.SET_DRIFT: SetDriftRequest,
    Command.ADJUST_OFFSET: AdjustOffsetRequest,
    Command.AGE: AgeRequest,
    Command.SET_TIME: SetTimeRequest,
    Command.FREEZE: FreezeRequest,
    Command.UNFREEZE: UnfreezeRequest,
    Command.PEEK: PeekRequest,
    Command.BATTERY: BatteryRequest,
    Command.FACTORY_RESET: FactoryResetRequest,
}
COMMAND_OF: Final[dict[type[Request], Command]] = {cls: cmd for cmd, cls in REQUEST_TYPES.items()}

REPLY_TYPES: Final[dict[Command, type[Reply]]] = {
    Command.INFO: InfoReply,
    Command.PRESS: PressReply,
    Command.DISPLAY: DisplayReply,
    Command.CLOCK: ClockReply,
    Command.PROVISION: InfoReply,
    Command.SET_DRIFT: ClockReply,
    Command.ADJUST_OFFSET: ClockReply,
    Command.AGE: ClockReply,
    Command.SET_TIME: ClockReply,
    Command.FREEZE: ClockReply,
    Command.UNFREEZE: ClockReply,
    Command.PEEK: PeekReply,
    Command.BATTERY: InfoReply,
    Command.FACTORY_RESET: InfoReply,
}


def command_of(request: Request) -> Command:
    """The command byte that carries `request`."""
    return COMMAND_OF[type(request)]

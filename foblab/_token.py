"""A lab's emulated token: the real firmware, driven through the real wire protocol."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any

from firmware_sim.runner import MemoryPort, Token, TokenRunner
from foblab._clock import LabClock, _seconds
from protocol import (
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    DriftSettings,
    FreezeRequest,
    Hash,
    SetDriftRequest,
    SetTimeRequest,
    TokenClient,
    UnfreezeRequest,
    pyserial_reader,
)

if TYPE_CHECKING:
    from firmware_sim.background import LoopThread

PORTS = ("memory", "pty", "tcp")


class LabToken:
    """An emulated display token (key fob or card) for a test.

    Everything goes through the token's serial protocol, as an application's own code
    would talk to a device: `code()` presses the button and reads the display, `next_codes`
    and the QA controls (`age`, `drift`, `set_time`, `freeze`) are the token's QA commands.
    With `port="pty"` or `"tcp"` the token also listens on `port_url` (a PTY symlink or
    `socket://127.0.0.1:PORT`) for code under test that opens a serial port itself.
    The seed stays inside: `repr()` and every attribute show the serial, never the secret.
    """

    def __init__(self, token: Token, *, seed: bytes, port: str,
                 runner: TokenRunner | None, loop: LoopThread | None,
                 clock: LabClock | None) -> None:
        self._token = token
        self._seed = seed
        self._runner = runner
        self._loop = loop
        self._clock = clock
        self._closed = False
        self.port = port
        memory = MemoryPort(token)
        self._client = TokenClient(pyserial_reader(memory), memory.write)
        info = self._client.info()
        self.serial: str = info.serial
        self.kind: str = info.kind.label
        self.hash: str = info.hash.label
        self.digits: int = info.digits
        self.period: int = info.period
        self.qa: bool = info.qa_mode

    # -- what a person does -------------------------------------------------------------

    def code(self) -> str:
        """Press the button and read the display: the current code (for an event token
        the next one in its sequence)."""
        return self._client.press().code

    press = code

    def display(self) -> str:
        """What the display shows now without pressing ("" while it is blank)."""
        return self._client.display().code

    def next_codes(self, n: int = 2) -> list[str]:
        """The codes of the current step and the `n - 1` after it (QA mode; an event
        token's next `n` codes, without using them up)."""
        return list(self._client.peek(n).codes)

    def next_code(self) -> str:
        """A code the validator has not seen yet: the code of the token's next step.

        A time-step token shows a new code only when its step changes. With the lab's time
        machine the lab clock moves to that step; otherwise a QA token's clock jumps there
        (as if the person waited). An event token just presses."""
        if self.kind == "hotp":
            return self.code()
        into = (self._client.clock().token_time_ms / 1000.0) % self.period
        wait = self.period - into + 0.01
        if self._clock is not None:
            self._clock.advance(wait)
        elif self.qa:
            self._client.clock_command(AdjustOffsetRequest(delta_ms=math.ceil(wait * 1000)))
        else:
            import time

            time.sleep(wait)
        return self.code()

    # -- QA controls ----------------------------------------------------------------------

    def age(self, span: str | float) -> None:
        """Let `span` (`"30d"`, `"1h"`, seconds) pass on the token's crystal at once, its
        drift applied (QA). The lab clock does not move."""
        self._client.clock_command(AgeRequest(span_ms=int(round(_seconds(span) * 1000))))

    def drift(self, ppm: float) -> None:
        """Make the token's crystal run `ppm` parts per million fast (negative: slow)."""
        self._client.clock_command(SetDriftRequest(DriftSettings(ppm=float(ppm))))

    def set_time(self, when: float) -> None:
        """Set the token's clock to Unix time `when` (QA)."""
        self._client.clock_command(SetTimeRequest(time_ms=int(round(float(when) * 1000))))

    def freeze(self) -> None:
        self._client.clock_command(FreezeRequest())

    def unfreeze(self) -> None:
        self._client.clock_command(UnfreezeRequest())

    def battery(self, dead: bool = True) -> None:
        """Kill the battery (`dead=True`: a blank display) or fit a fresh one."""
        self._client.info_command(BatteryRequest(dead=dead))

    def offset(self) -> float:
        """How far the token's clock is from true (lab) time, seconds."""
        return self._client.clock().offset_ms / 1000.0

    # -- for the lab ------------------------------------------------------------------------

    @property
    def port_url(self) -> str:
        """The URL to open with `serial.serial_for_url` (port "pty" or "tcp")."""
        if self._runner is None:
            raise RuntimeError(f"token {self.serial} is in memory only; ask for "
                               "lab.token(port='pty') or port='tcp' to get a port URL")
        return self._runner.url

    def _registration(self) -> dict[str, Any]:
        """What a vendor's seed file says of this token: the validator's registration."""
        body: dict[str, Any] = {"serial": self.serial, "secret_hex": self._seed.hex(),
                                "kind": self.kind, "hash": self.hash, "digits": self.digits}
        if self.kind == "totp":
            body["period"] = self.period
        return body

    def close(self) -> None:
        """Close its ports and release its state file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None and self._loop is not None:
            self._loop.run(self._runner.close())
        else:
            self._token.close()

    def __repr__(self) -> str:
        where = self.port if self._runner is None else self._runner.url
        return f"LabToken({self.serial}, {self.kind}/{self.hash}/{self.digits}, {where})"


def new_seed(hash: str) -> bytes:
    """A fresh seed of the hash's natural length (RFC 4226/6238: 20, 32 or 64 bytes)."""
    return secrets.token_bytes(Hash.from_label(hash).seed_bytes)

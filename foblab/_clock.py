"""The lab's clock: true time, or a time machine that tests move by hand."""

from __future__ import annotations

import threading
import time

from tools._args import parse_duration_ms


def _seconds(span: str | float) -> float:
    """`"1h"` -> 3600.0; a number is seconds. Negative spans are allowed (`"-30s"`)."""
    if isinstance(span, str):
        return parse_duration_ms(span, signed=True) / 1000
    return float(span)


class LabClock:
    """The time a lab's validator and its tokens read, in Unix seconds.

    It starts at true time and then runs with it; `advance` moves it forward (or back), `set`
    puts it at a given time, `freeze` stops it. Every token of the lab and its validator read
    this clock, so a test can let a year pass in a line and watch drift, resync and lockout
    expiry happen without sleeping:

    >>> clock = LabClock(start=1_700_000_000.0, frozen=True)
    >>> clock.advance("1h")
    >>> clock.now()
    1700003600.0
    >>> clock.now_ms()
    1700003600000
    """

    def __init__(self, *, start: float | None = None, frozen: bool = False) -> None:
        self._lock = threading.Lock()
        base = time.time()
        self._offset = 0.0 if start is None else float(start) - base
        self._frozen_at: float | None = None
        if frozen:
            self._frozen_at = base + self._offset if start is None else float(start)

    def now(self) -> float:
        frozen = self._frozen_at
        return frozen if frozen is not None else time.time() + self._offset

    def now_ms(self) -> int:
        return int(round(self.now() * 1000))

    def advance(self, span: str | float) -> None:
        """Move the clock by `span` (`"30s"`, `"1h"`, `"365d"`, or seconds)."""
        delta = _seconds(span)
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at += delta
            else:
                self._offset += delta

    def set(self, when: float) -> None:
        """Put the clock at Unix time `when` (it keeps running unless frozen)."""
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at = float(when)
            else:
                self._offset = float(when) - time.time()

    def freeze(self) -> None:
        with self._lock:
            if self._frozen_at is None:
                self._frozen_at = time.time() + self._offset

    def unfreeze(self) -> None:
        with self._lock:
            if self._frozen_at is not None:
                self._offset = self._frozen_at - time.time()
                self._frozen_at = None

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "running"
        return f"LabClock({self.now():.3f}, {state})"

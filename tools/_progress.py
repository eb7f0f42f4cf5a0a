"""Progress for long work, on a terminal only.

A bar (click's progress bar) on stderr when stderr is a TTY and the command prints for a
person; nothing at all on a pipe, a file, with --json or -q, so scripts and logs never see
it. Work with a count (tokens started, files run) advances a bar by the count; a wait with
nothing to count (one request the daemon answers when it is done) shows a bar over time.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

_TICK = 0.2  # seconds between redraws of a bar over time


def wanted(*, as_json: bool = False, quiet: bool = False) -> bool:
    """Whether to show progress: a person at a terminal, not --json, not -q."""
    return not as_json and not quiet and sys.stderr.isatty()


class Progress:
    """What `bar` yields: call it to advance; `above(...)` prints lines above the bar."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def above(self, lines: Callable[[], None]) -> None:
        """Run `lines` (which prints, on stdout or stderr) with the bar cleared from its
        line, then draw the bar again below what was printed."""
        if self._bar is None:
            lines()
            return
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        lines()
        sys.stdout.flush()
        sys.stderr.write("\r" + self._bar.format_progress_line())
        sys.stderr.flush()


@contextmanager
def bar(total: int, label: str, *, show: bool) -> Iterator[Progress]:
    """`with bar(n, "label", show=wanted(...)) as advance: ... advance(1)`."""
    if not show or total <= 0:
        yield Progress()
        return
    with click.progressbar(length=total, label=label, file=sys.stderr,
                           show_pos=True, show_eta=True) as progress:
        yield Progress(progress)


@contextmanager
def timed(label: str, *, show: bool, expected: float | None = None) -> Iterator[None]:
    """A bar over time while the body waits for something it cannot count: filling over
    `expected` seconds (the longest the wait should take; it stops short of full until the
    wait ends), or, without `expected`, a marker going to and fro. The seconds waited so far
    are shown after it."""
    if not show:
        yield
        return
    ticks = None if expected is None else max(1, round(expected / _TICK))
    source: Any = range(ticks) if ticks is not None else itertools.count()
    stop = threading.Event()
    started = time.monotonic()

    def seconds(_: Any) -> str:
        return f"{time.monotonic() - started:.0f} s"

    with click.progressbar(source, label=label, file=sys.stderr, show_pos=False,
                           show_eta=False, show_percent=False,
                           item_show_func=seconds) as progress:
        def run() -> None:
            done = 0
            while not stop.wait(_TICK):
                if ticks is None or done < ticks - 1:
                    progress.update(1, None)
                    done += 1
                else:
                    progress.render_progress()  # the seconds still count

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if ticks is not None:
                progress.update(ticks - progress.pos, None)


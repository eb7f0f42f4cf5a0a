"""Progress for long work, on a terminal only.

A bar (click's progress bar) on stderr when stderr is a TTY and the command prints for a
person; nothing at all on a pipe, a file, with --json or -q, so scripts and logs never see
it. Long waits without a count get one line saying what is awaited.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click


def wanted(*, as_json: bool = False, quiet: bool = False) -> bool:
    """Whether to show progress: a person at a terminal, not --json, not -q."""
    return not as_json and not quiet and sys.stderr.isatty()


@contextmanager
def bar(total: int, label: str, *, show: bool) -> Iterator[Callable[[int], None]]:
    """`with bar(n, "label", show=wanted(...)) as advance: ... advance(1)`."""
    if not show or total <= 0:
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr,
                           show_pos=True, show_eta=True) as progress:
        yield progress.update


def waiting(message: str, *, show: bool) -> None:
    """One line on stderr before a long wait with nothing to count."""
    if show:
        click.echo(f"{message} ...", err=True)

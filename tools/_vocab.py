"""One vocabulary of options across the CLI (docs/cli.md), and the old spellings that keep
working for one release with a deprecation warning.

- `--rng-seed N`: the seed of a random generator (fleets, scenarios, the study);
- `--seed-hex HEX` / `--seed-b32 B32`: a token's secret;
- `--token URL`: a token's serial port URL, where it is an option;
- `--key KEY`: an API key's value; `--key-file PATH`: a file holding one;
- `--pskc-passphrase`: the passphrase of a PSKC seed file.

RENAMED maps a command's path to {old spelling: new spelling}. `accept_old(cmd, path)`
rewrites an old spelling on the command line to the new one, with a warning on stderr, before
click parses it, so the command itself only knows the new name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

RENAMED: dict[str, dict[str, str]] = {
    "sim run": {"--seed": "--seed-hex"},
    "sim fleet": {"--seed": "--rng-seed"},
    "token provision": {"--seed": "--seed-hex"},
    "scenario run": {"--seed": "--rng-seed", "--port": "--token"},
    "scenario study": {"--seed": "--rng-seed"},
    "validator token add": {"--secret-b32": "--seed-b32", "--secret-hex": "--seed-hex"},
    "validator token import": {"--passphrase": "--pskc-passphrase"},
}


def warn_renamed(old: str, new: str) -> None:
    click.echo(f"foblab: warning: {old} is deprecated and goes away in the next release; "
               f"use {new}", err=True)


def rewrite(args: list[str], renamed: dict[str, str]) -> list[str]:
    """`args` with each old spelling (`--old V`, `--old=V`) replaced by the new one."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if name in renamed:
            warn_renamed(name, renamed[name])
            arg = renamed[name] + eq + value
        out.append(arg)
    return out


def accept_old(cmd: click.Command, path: str) -> None:
    """Let `cmd` take the old spellings of RENAMED[path] (a warning each)."""
    renamed = RENAMED.get(path)
    if not renamed:
        return
    parse = cmd.parse_args

    def parse_args(ctx: click.Context, args: list[str]) -> Any:
        return parse(ctx, rewrite(list(args), renamed))

    cmd.parse_args = parse_args  # type: ignore[method-assign]


# --- Timeouts: one default per kind of wait (docs/cli.md, "Timeouts") ---------------------

@dataclass(frozen=True)
class Wait:
    """A kind of wait: its default bound in seconds and what it bounds, in --help's words."""

    seconds: float
    bounds: str


TOKEN_REPLY = Wait(2.0, "a token's reply on its serial port")
"""One request to a token: it answers in milliseconds, so 2 s means it is not there."""
VALIDATOR_REPLY = Wait(60.0, "the validator's answer to one request")
"""One request to the daemon. Generous because station enrollment reads two consecutive
codes from a token, which takes up to a period (30 s) plus the token's replies."""
RADIUS_REPLY = Wait(2.0, "a RADIUS server's answer to one try (of --retries)")
"""One RADIUS Access-Request try; the command resends it --retries times."""
READY = Wait(30.0, "a started daemon or token printing its ready line")
"""A process this CLI starts itself (the demo's daemon) coming up."""

TIMEOUTS: dict[str, Wait] = {"token": TOKEN_REPLY, "validator": VALIDATOR_REPLY,
                             "radius": RADIUS_REPLY, "ready": READY}
"""Every default timeout of the CLI, by kind. A `--...timeout` option takes its default from
here (`timeout_option`) and says in its help which wait it bounds."""


def timeout_option(kind: str, name: str = "--timeout", *, type_: Any = float,
                   extra: str = "") -> Callable[[F], F]:
    """`--timeout S` (or `name`) bounding the `kind` of wait of TIMEOUTS, with its default."""
    wait = TIMEOUTS[kind]
    option = click.option(name, type=type_, default=wait.seconds, show_default=True,
                          metavar="S", help=f"Seconds to wait for {wait.bounds}.{extra}")

    def decorate(f: F) -> F:
        f = option(f)
        param = f.__click_params__[-1]  # type: ignore[attr-defined]
        param.timeout_kind = kind  # for tests/tools/test_timeouts.py
        return f

    return decorate

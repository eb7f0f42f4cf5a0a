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

from typing import Any

import click

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

"""Every command of the `foblab` CLI, walked once for the tests that check them all."""

from __future__ import annotations

import click

from tools.cli import main


def commands() -> dict[str, click.Command]:
    """Each command by its path ("" for `foblab` itself, "validator token add", ...)."""
    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, path: str, ctx: click.Context) -> None:
        out[path] = cmd
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, f"{path} {name}".strip(), click.Context(sub, parent=ctx, info_name=name))

    walk(main, "", click.Context(main, info_name="foblab"))
    return out

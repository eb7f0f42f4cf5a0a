"""The `foblab` click group.

Subcommand groups live in their own modules and are imported only when used, so
`foblab --help` stays fast and a command's dependencies load only for that command.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from tools._help import Group, decorate

# name -> "module:attribute" of a click command or group.
SUBCOMMANDS: dict[str, str] = {
    "sim": "tools.sim_cmd:sim",
    "token": "tools.token_cmd:token",
    "validator": "tools.validator_cmd:validator",
    "demo": "tools.demo_cmd:demo",
    "scenario": "tools.scenario_cmd:scenario",
}


class LazyGroup(Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n in self._lazy if self._load(n) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._load(cmd_name)

    def _load(self, name: str) -> click.Command | None:
        target = self._lazy.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not written yet: no such command
                return None
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        if not getattr(command, "foblab_decorated", False):
            decorate(command, f"{getattr(self, 'foblab_path', '')} {name}".strip())
            command.foblab_decorated = True  # type: ignore[attr-defined]
        return command


@click.group(
    cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="foblab")
def main() -> None:
    """foblab: emulated hardware OTP tokens and the validator that checks them."""


decorate(main, "")


if __name__ == "__main__":
    main()

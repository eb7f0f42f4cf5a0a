"""The `foblab` group: a registered subcommand whose module is missing fails loudly."""

from __future__ import annotations

import click
from click.testing import CliRunner

from tools.cli import SUBCOMMANDS, LazyGroup, main


def _group(lazy: dict[str, str]) -> click.Group:
    @click.group(cls=LazyGroup, lazy=lazy)
    def group() -> None:
        """A test group."""

    return group


def test_every_registered_subcommand_loads() -> None:
    ctx = click.Context(main)
    for name in SUBCOMMANDS:
        assert isinstance(main.get_command(ctx, name), click.Command), name


def test_a_missing_module_is_an_error_naming_it_not_a_missing_command() -> None:
    group = _group({"ghost": "tools.no_such_module:ghost", "sim": SUBCOMMANDS["sim"]})
    result = CliRunner().invoke(group, ["ghost", "--help"])
    assert result.exit_code == 1
    assert "'ghost' command cannot be loaded" in result.output
    assert "tools.no_such_module" in result.output
    # listing the commands (--help) is as loud: a broken install never hides a command
    listing = CliRunner().invoke(group, ["--help"])
    assert listing.exit_code == 1 and "tools.no_such_module" in listing.output


def test_a_target_that_is_not_a_command_is_an_error() -> None:
    result = CliRunner().invoke(_group({"odd": "tools.cli:SUBCOMMANDS"}), ["odd"])
    assert result.exit_code == 1 and "is not a click command" in result.output


def test_an_unknown_name_is_still_click_s_usage_error() -> None:
    result = CliRunner().invoke(_group({}), ["nope"])
    assert result.exit_code == 2 and "No such command" in result.output

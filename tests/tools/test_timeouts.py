"""One default timeout per kind of wait (docs/cli.md, "Timeouts"): every `--...timeout`
option of every command takes its default from `tools._vocab.TIMEOUTS`, says in its help
which wait it bounds, and `--timeout` bounds the same kind of wait wherever the command talks
to the same kind of thing."""

from __future__ import annotations

import re
from pathlib import Path

import click
from cli_tree import commands  # type: ignore[import-not-found]
from click.testing import CliRunner

from tools._vocab import TIMEOUTS, TOKEN_REPLY, VALIDATOR_REPLY
from tools.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _timeouts() -> dict[str, list[click.Option]]:
    """command path -> its options whose name says timeout."""
    found: dict[str, list[click.Option]] = {}
    for path, cmd in commands().items():
        for p in cmd.params:
            if isinstance(p, click.Option) and any("timeout" in o for o in p.opts):
                found.setdefault(path, []).append(p)
    return found


def test_every_timeout_default_is_a_named_one_and_its_help_names_the_wait() -> None:
    found = _timeouts()
    assert len(found) > 30  # token, validator clients, radius, scenario: really walked
    bad = []
    for path, options in found.items():
        for p in options:
            kind = getattr(p, "timeout_kind", None)
            if kind not in TIMEOUTS:
                bad.append(f"{path} {p.opts}: not made by timeout_option")
                continue
            wait = TIMEOUTS[kind]
            if p.default != wait.seconds or p.help is None or wait.bounds not in p.help:
                bad.append(f"{path} {p.opts}: default {p.default}, help {p.help!r}")
    assert not bad, bad


def test_timeout_bounds_one_kind_of_wait_per_kind_of_peer() -> None:
    """`--timeout` is the token's reply in token commands, the validator's answer in
    validator client commands and in `scenario run` (which names the token's own)."""
    found = _timeouts()
    for path, options in found.items():
        kinds = {o.opts[0]: getattr(o, "timeout_kind", None) for o in options}
        if path == "validator radius test":
            assert kinds == {"--timeout": "radius"}
        elif path.startswith("token "):
            assert kinds == {"--timeout": "token"}, path
        elif path.startswith("validator "):
            assert kinds == {"--timeout": "validator"}, path
        elif path == "scenario run":
            assert kinds == {"--timeout": "validator", "--token-timeout": "token"}
        else:
            raise AssertionError(f"{path}: a timeout this test does not know: {kinds}")


def test_the_help_shows_the_named_default() -> None:
    text = CliRunner().invoke(main, ["token", "info", "--help"]).output
    assert f"Seconds to wait for {TOKEN_REPLY.bounds}." in " ".join(text.split())
    assert f"[default: {TOKEN_REPLY.seconds}]" in text
    text = CliRunner().invoke(main, ["validator", "token", "list", "--help"]).output
    assert f"[default: {VALIDATOR_REPLY.seconds}]" in text


def test_docs_cli_lists_every_named_timeout() -> None:
    """docs/cli.md's table of timeouts says each default and what it bounds."""
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("## Timeouts"):]
    for wait in TIMEOUTS.values():
        assert re.search(rf"\| {re.escape(wait.bounds)} \| {wait.seconds:g} s \|", table), wait


def test_the_old_scenario_timeout_still_bounds_the_token_with_a_warning() -> None:
    replay = str(ROOT / "scenarios" / "replay-attempt.toml")
    old = CliRunner().invoke(main, ["scenario", "run", replay, "--timeout", "5", "-q"])
    assert old.exit_code == 0, old.output
    assert "--timeout bounds only the validator's answer in the next release" in old.stderr
    new = CliRunner().invoke(main, ["scenario", "run", replay, "--timeout", "5",
                                    "--token-timeout", "3", "-q"])
    assert new.exit_code == 0 and "warning" not in new.stderr

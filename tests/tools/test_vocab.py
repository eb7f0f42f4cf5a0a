"""Old option spellings keep working for one release, with a deprecation warning."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from tools._vocab import RENAMED, rewrite
from tools.cli import main
from tools.validator_cmd import in_cli_words

ROOT = Path(__file__).resolve().parents[2]
REPLAY = str(ROOT / "scenarios" / "replay-attempt.toml")


def test_an_old_spelling_works_with_a_warning() -> None:
    new = CliRunner().invoke(main, ["scenario", "run", REPLAY, "--rng-seed", "9", "--json"])
    old = CliRunner().invoke(main, ["scenario", "run", REPLAY, "--seed", "9", "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert "deprecated" not in new.stderr
    assert old.stderr.strip() == ("foblab: warning: --seed is deprecated and goes away in the "
                                  "next release; use --rng-seed")
    assert json.loads(old.stdout)["seed"] == json.loads(new.stdout)["seed"] == 9


def test_the_equals_form_and_arguments_after_a_double_dash() -> None:
    renamed = RENAMED["validator token add"]
    assert rewrite(["S", "--secret-hex=00ff", "--", "--secret-hex"], renamed) == \
        ["S", "--seed-hex=00ff", "--", "--secret-hex"]


def test_every_renamed_command_knows_its_new_spelling() -> None:
    for path, renamed in RENAMED.items():
        result = CliRunner().invoke(main, [*path.split(), "--help"])
        for old, new in renamed.items():
            assert new in result.output, (path, new)
            assert f"{old} " not in result.output.replace(new, ""), (path, old)


def test_key_as_a_path_is_read_with_a_warning(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    key.write_text("k" * 40 + "\n")
    result = CliRunner().invoke(main, ["scenario", "run", REPLAY, "--live", "--url",
                                       "http://127.0.0.1:9", "--key", str(key)])
    assert "--key PATH is deprecated" in result.stderr and "use --key-file PATH" in result.stderr
    assert "--live needs --token" in result.stderr  # the key was found in the file


def test_a_client_command_without_a_location_says_how_to_give_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FOBLAB_URL", "FOBLAB_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["validator", "token", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("foblab: error: no API key for http://127.0.0.1:8700: "
                                    "give --dir DIR")
    assert "--key-file FILE" in result.stderr and "FOBLAB_URL and FOBLAB_KEY" in result.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr("tools.validator_cmd.DEFAULT_PORT", port)
    result = CliRunner().invoke(main, ["validator", "token", "list", "--key", "k"])
    assert result.exit_code == 1
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr
    assert "that is only the default location: give --dir DIR" in result.stderr


def test_errors_speak_the_command_line() -> None:
    assert in_cli_words('token GAHT1 is blank; send "provision": true to seed it') == \
        "token GAHT1 is blank; give --provision to seed it"
    assert in_cli_words("give exactly one of secret_b32 and secret_hex") == \
        "give exactly one of --seed-b32 and --seed-hex"
    result = CliRunner().invoke(main, ["validator", "token", "add", "S", "--key", "k"])
    assert result.exit_code == 1
    assert "give the secret as --seed-hex HEX or --seed-b32 B32" in result.stderr

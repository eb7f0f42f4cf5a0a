"""Old option spellings keep working for one release, with a deprecation warning."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tools._vocab import RENAMED, rewrite
from tools.cli import main

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

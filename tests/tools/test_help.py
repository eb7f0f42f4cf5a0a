"""Every command's --help ends with examples, and command lists show whole first lines."""

from __future__ import annotations

from cli_tree import commands  # type: ignore[import-not-found]
from click.testing import CliRunner

from tools._help import EXAMPLES
from tools.cli import main


def test_every_command_help_ends_with_examples() -> None:
    paths = list(commands())
    assert len(paths) > 40  # really walked the tree
    missing = []
    for path in paths:
        result = CliRunner().invoke(main, [*path.split(), "--help"])
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.rstrip().splitlines()
        examples = lines.index("  Examples:") if "  Examples:" in lines else None
        if examples is None or not all(line.startswith("    foblab ") or
                                       line.startswith("    FOBLAB_")
                                       for line in lines[examples + 1:]):
            missing.append(path or "foblab")
    assert not missing, f"--help without examples at the end: {missing}"
    assert set(EXAMPLES) <= set(paths), set(EXAMPLES) - set(paths)  # no stale entries


def test_command_lists_do_not_cut_help_mid_sentence() -> None:
    result = CliRunner().invoke(main, ["token", "qa", "--help"])
    text = " ".join(result.output.split())
    assert "age Live through SPAN (e.g. 365d) of simulated time at once, drift applied." in text
    assert "drift Set the crystal's drift: PPM (decimal, e.g. -12.5), aging and temperature." \
        in text
    commands = result.output[result.output.index("Commands:"):]
    assert "..." not in commands


def test_qa_peek_help_says_the_real_limit() -> None:
    result = CliRunner().invoke(main, ["token", "qa", "peek", "--help"])
    assert "1 to 32" in result.output and "1<=x<=32" in result.output
    refused = CliRunner().invoke(main, ["token", "qa", "peek", "x", "--count", "33"])
    assert refused.exit_code == 2 and "33 is not in the range 1<=x<=32" in refused.output

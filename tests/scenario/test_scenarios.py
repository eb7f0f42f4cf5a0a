"""Scenario files in-process: the shipped ones pass, wrong expectations and malformed files
fail clearly, runs are deterministic, and the JUnit XML is what CI systems read."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from tools.scenario.engine import run_in_process
from tools.scenario.report import junit, to_json
from tools.scenario.spec import ScenarioError, load, parse
from tools.scenario_cmd import scenario

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))


def test_the_shipped_scenarios_are_there() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"aws-enable-resync", "weekly-40ppm-3-years", "unused-for-a-year", "cold-car",
            "dead-battery", "replay-attempt", "brute-force"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenario_passes_in_process(path: Path) -> None:
    run = run_in_process(load(path))
    assert run.passed, [f"{r.event.name}: {r.outcome.describe()}" for r in run.failures]


def test_three_years_of_weekly_logins() -> None:
    # Its speed is measured by `make bench` (bench_study), never by a timed unit test.
    sc = load(ROOT / "scenarios" / "weekly-40ppm-3-years.toml")
    run = run_in_process(sc)
    assert run.passed and len(run.results) == 157
    # the token really drifted: 40 ppm for three years is over an hour
    assert run.results[-1].token_offset_s is not None and run.results[-1].token_offset_s > 3700


def _strip(doc: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in doc.items() if k != "seconds"}


def test_runs_are_deterministic_for_a_seed() -> None:
    sc = load(ROOT / "scenarios" / "cold-car.toml")
    a, b = to_json(run_in_process(sc)), to_json(run_in_process(sc))
    assert _strip(a) == _strip(b)
    c = to_json(run_in_process(sc.with_seed(99)))
    assert [e["at_s"] for e in c["events"]] != [e["at_s"] for e in a["events"]]


def _wrong(tmp_path: Path) -> Path:
    text = (ROOT / "scenarios" / "aws-enable-resync.toml").read_text()
    text = text.replace('reason = "replayed"', 'reason = "invalid_code"', 1)
    path = tmp_path / "wrong.toml"
    path.write_text(text)
    return path


def test_a_wrong_expectation_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(scenario, ["run", str(_wrong(tmp_path))])
    assert result.exit_code == 1
    assert re.search(r'failed: event 5 "the same code a second time" at day 0 \S+ '
                     r'\(line \d+\): expected refused \(invalid_code\), got refused '
                     r'\(replayed\)', result.output), result.output
    assert "FAIL: 11/12" in result.output


def test_json_and_junit_outputs(tmp_path: Path) -> None:
    xml_path = tmp_path / "out.xml"
    good = ROOT / "scenarios" / "replay-attempt.toml"
    result = CliRunner().invoke(scenario, ["run", str(good), str(_wrong(tmp_path)), "--json",
                                           "--junit", str(xml_path)])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["passed"] is False
    assert [s["passed"] for s in doc["scenarios"]] == [True, False]
    failed = [e for e in doc["scenarios"][1]["events"] if not e["ok"]]
    assert failed[0]["expected"] == {"status": "refused", "reason": "invalid_code"}
    assert failed[0]["actual"]["reason"] == "replayed"
    root = ET.parse(xml_path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [int(s.get("tests", -1)) for s in suites] == [6, 12]
    assert [int(s.get("failures", -1)) for s in suites] == [0, 1]
    assert len(suites[1].findall("testcase")) == 12
    fail = suites[1].findall("testcase/failure")
    assert len(fail) == 1 and "expected refused (invalid_code)" in fail[0].get("message", "")
    assert root.get("tests") == "18" and root.get("failures") == "1"


def test_junit_of_a_passing_run_has_no_failures() -> None:
    run = run_in_process(load(ROOT / "scenarios" / "brute-force.toml"))
    root = ET.fromstring(junit([run]))
    assert root.get("failures") == "0" and len(root.findall(".//testcase")) == 12


GOOD_HEAD = """name = "t"
[token]
model = "keyfob"
"""

MALFORMED = [
    # (text, line, words in the message)
    ('name = "t"\n[token\nmodel = "keyfob"\n', 2, "not valid TOML"),
    (GOOD_HEAD + '\n[[event]]\naction = "login"\nday = 1\n', 5, "needs expect"),
    (GOOD_HEAD + '\n[[event]]\naction = "enable"\nday = 0\nexpect = "accepted"\n'
     '\n[[event]]\naction = "dance"\nday = 1\n', 11, "unknown action 'dance'"),
    (GOOD_HEAD + '[clock]\nppm = 4.0\nwobble = 1\n\n[[event]]\naction = "wait"\nday = 1\n',
     6, "unknown key 'wobble' in [clock]"),
    (GOOD_HEAD + '\n[[event]]\naction = "login"\nday = 5\nexpect = "accepted"\n'
     '\n[[event]]\naction = "login"\nday = 2\nexpect = "accepted"\n', 10, "back in time"),
    (GOOD_HEAD + '\n[[event]]\naction = "login"\nday = 1\nexpect = "refused"\n'
     'reason = "sunspots"\n', 9, "unknown reason"),
    (GOOD_HEAD + '\n[[event]]\naction = "age"\nday = 1\nspan = "a while"\n', 8,
     "not a duration"),
    (GOOD_HEAD.replace('"keyfob"', '"toaster"'), 3, "unknown model"),
    (GOOD_HEAD + '\n[[event]]\naction = "set-drift"\nday = 1\nppm = 1e9\n', 5,
     "bad clock settings"),
    (GOOD_HEAD, 0, "at least one [[event]]"),
    # values that used to get past the parser and crash or derail the run
    (GOOD_HEAD + '\n[[event]]\naction = ["wait"]\nday = 1\n', 6, "unknown action"),
    (GOOD_HEAD + '\n[[event]]\nname = 5\naction = "wait"\nday = 1\n', 6,
     "name must be a string"),
    (GOOD_HEAD + 'serial = "GAHT 123"\n\n[[event]]\naction = "wait"\nday = 1\n', 4,
     "serial must be 1..64 printable ASCII"),
    (GOOD_HEAD + f'serial = "{"G" * 65}"\n\n[[event]]\naction = "wait"\nday = 1\n', 4,
     "serial must be 1..64 printable ASCII"),
    (GOOD_HEAD + '[clock]\noffset_s = 1e300\n\n[[event]]\naction = "wait"\nday = 1\n', 5,
     "offset_s must be within"),
    (GOOD_HEAD + '[clock]\nsteps = [{ day = inf, offset_s = 1 }]\n\n[[event]]\n'
     'action = "wait"\nday = 1\n', 5, "a clock step is day 0-36500"),
    (GOOD_HEAD + '[validator]\nwindow = -1\n\n[[event]]\naction = "wait"\nday = 1\n', 4,
     "[validator]: window"),
    (GOOD_HEAD + '\n[[event]]\naction = "age"\nday = 1\nspan = -5\n', 8,
     "span must be from 0 to 36500 days"),
    ('start = "1960-01-01T00:00:00Z"\n' + GOOD_HEAD + '\n[[event]]\naction = "wait"\n'
     'day = 1\n', 1, "start must not be before 1970"),
]


@pytest.mark.parametrize(("text", "line", "words"), MALFORMED)
def test_malformed_files_are_refused_with_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse(text, "bad.toml")
    assert info.value.line == line, str(info.value)
    assert words in info.value.message
    assert str(info.value).startswith(f"bad.toml:{line}: " if line else "bad.toml: ")


def test_the_cli_names_file_and_line_for_a_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MALFORMED[2][0])
    result = CliRunner().invoke(scenario, ["run", str(path)])
    assert result.exit_code == 2
    assert f"{path}:11: unknown action 'dance'" in result.output


def test_the_cli_refuses_a_policy_the_core_refuses_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_HEAD + '[validator]\nmax_failures = 0\n\n[[event]]\naction = "wait"'
                    '\nday = 1\n')
    result = CliRunner().invoke(scenario, ["run", str(path)])
    assert result.exit_code == 2
    assert f"{path}:4: [validator]:" in result.output


def test_live_options_are_checked() -> None:
    good = str(ROOT / "scenarios" / "replay-attempt.toml")
    result = CliRunner().invoke(scenario, ["run", good, "--live", "--url", "http://x"])
    assert result.exit_code == 2 and "--live needs --key or --key-file, --token" in result.output


def test_junit_is_written_for_the_files_that_ran_with_the_invalid_one_as_an_error(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MALFORMED[2][0])
    good = ROOT / "scenarios" / "replay-attempt.toml"
    xml_path = tmp_path / "out.xml"
    result = CliRunner().invoke(scenario, ["run", str(good), str(bad), "-q",
                                           "--junit", str(xml_path)])
    assert result.exit_code == 2  # a file could not be run
    assert f"{bad}:11: unknown action 'dance'" in result.output
    assert "1/2 scenarios passed, 1 could not be run" in result.output
    root = ET.parse(xml_path).getroot()
    assert root.get("errors") == "1" and root.get("failures") == "0"
    suites = root.findall("testsuite")
    assert len(suites) == 2 and suites[0].get("tests") == "6"
    error = suites[1].find("testcase/error")
    assert error is not None and "unknown action 'dance'" in error.get("message", "")


def test_junit_into_a_missing_folder_fails_before_running(tmp_path: Path) -> None:
    good = str(ROOT / "scenarios" / "replay-attempt.toml")
    result = CliRunner().invoke(scenario, ["run", good, "--junit",
                                           str(tmp_path / "nope" / "out.xml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert "PASS" not in result.output  # nothing ran

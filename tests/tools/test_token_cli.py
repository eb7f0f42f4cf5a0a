"""`foblab token ...` through click's CliRunner against an in-process token on a real PTY."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from firmware_sim.background import serve_token
from firmware_sim.runner import TokenRunner
from tools._args import parse_duration_ms, parse_hex, parse_host_port, parse_time_ms
from tools.cli import main

SEED = "3132333435363738393031323334353637383930"


@pytest.fixture
def qa_token(tmp_path: Path) -> Iterator[TokenRunner]:
    with serve_token(seed=bytes.fromhex(SEED), digits=8, qa=True,
                     pty_link=tmp_path / "tok") as running:
        yield running


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict[str, Any]:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_info_and_press_json(qa_token: TokenRunner) -> None:
    info = run_json("token", "info", qa_token.url)
    assert info["kind"] == "totp" and info["hash"] == "sha1" and info["digits"] == 8
    assert info["period"] == 30 and str(info["serial"]).startswith("GAHT")
    press = run_json("token", "press", qa_token.url)
    assert len(str(press["code"])) == 8
    assert len(str(run_json("token", "display", qa_token.url)["code"])) == 8


def test_rfc_vector_via_cli(qa_token: TokenRunner) -> None:
    run_json("token", "qa", "freeze", qa_token.url)
    clock = run_json("token", "qa", "set-time", qa_token.url, "2033-05-18T03:33:20Z")
    assert clock["token_time"] == 2_000_000_000.0 and clock["frozen"] is True
    assert run_json("token", "press", qa_token.url)["code"] == "69279037"
    assert run_json("token", "qa", "peek", qa_token.url, "--count", "2")["codes"][0] == "69279037"
    assert run_json("token", "qa", "set-time", qa_token.url, "59")["token_time"] == 59.0
    assert run_json("token", "press", qa_token.url)["code"] == "94287082"


def test_drift_age_offset(qa_token: TokenRunner) -> None:
    assert run_json("token", "qa", "drift", qa_token.url, "-12.5")["drift_ppm"] == -12.5
    run_json("token", "qa", "drift", qa_token.url, "40")
    before = run_json("token", "clock", qa_token.url)["offset_s"]
    after = run_json("token", "qa", "age", qa_token.url, "365d")["offset_s"]
    assert 1261 <= float(after) - float(before) <= 1262.1
    stepped = run_json("token", "qa", "offset", qa_token.url, "-90s")["offset_s"]
    assert abs(float(stepped) - float(after) + 90) < 0.5
    daily = run_json("token", "qa", "drift", qa_token.url, "0", "--temp", "10", "--swing", "8")
    assert daily["temperature_mode"] == "daily" and daily["temperature_swing_c"] == 8


def test_battery_and_reset_and_provision(qa_token: TokenRunner) -> None:
    assert run_json("token", "qa", "battery", qa_token.url, "dead")["battery_ok"] is False
    code, _, err = run("token", "press", qa_token.url)
    assert code == 1 and "battery_dead" in err and len(err.strip().splitlines()) == 1
    run_json("token", "qa", "battery", qa_token.url, "replaced")
    code, _, err = run("token", "provision", qa_token.url, "--seed-hex", "00ff")
    assert code == 1 and "already_provisioned" in err
    assert run_json("token", "qa", "reset", qa_token.url)["provisioned"] is False
    info = run_json("token", "provision", qa_token.url, "--seed-hex", SEED, "--kind", "hotp")
    assert info["kind"] == "hotp" and info["locked"] is True
    assert run_json("token", "press", qa_token.url)["code"] == "755224"


def test_watch_shows_the_display(qa_token: TokenRunner) -> None:
    """Not a TTY: one line per change of the display, with the serial (and, QA, drift)."""
    code, out, err = run("token", "watch", qa_token.url, "--count", "1", "--interval", "0.05",
                         "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 1 and len(lines[0]["code"]) == 8
    assert lines[0]["serial"] == qa_token.token.state.serial and lines[0]["battery_ok"]
    assert lines[0]["drift_ppm"] == 0.0 and "offset_s" in lines[0]
    code, out, err = run("token", "watch", qa_token.url, "--count", "1")
    assert out.startswith(qa_token.token.state.serial) and "s left)" in out
    assert "\r" not in out and "\x1b" not in out  # no redrawing off a terminal


def test_watch_shows_a_dead_battery_as_a_blank_display(qa_token: TokenRunner) -> None:
    run("token", "qa", "battery", qa_token.url, "dead")
    code, out, err = run("token", "watch", qa_token.url, "--count", "1", "--json")
    assert code == 0, err
    state = json.loads(out)
    assert state["code"] == "" and state["battery_ok"] is False
    code, out, _ = run("token", "watch", qa_token.url, "--count", "1")
    assert "(blank)" in out and "BATTERY DEAD" in out


def test_watch_never_presses_an_event_token_unless_asked(tmp_path: Path) -> None:
    with serve_token(model="event", seed=bytes.fromhex(SEED), qa=True,
                     pty_link=tmp_path / "ev") as ev:
        code, out, err = run("token", "watch", ev.url, "--count", "1", "--json")
        assert code == 0, err and json.loads(out)["code"] == ""
        assert ev.token.state.counter == 0  # no code used up
        code, out, err = run("token", "watch", ev.url, "--count", "1", "--json",
                             "--press-every", "60s")
        assert json.loads(out)["code"] == "755224"  # RFC 4226 counter 0, pressed once
        assert ev.token.state.counter == 1


@pytest.mark.parametrize("option", [["--interval", "-1"], ["--count", "-1"]])
def test_watch_refuses_negative_interval_and_count(qa_token: TokenRunner,
                                                   option: list[str]) -> None:
    code, _, err = run("token", "watch", qa_token.url, *option)
    assert code == 2 and f"Invalid value for '{option[0]}'" in err


def test_failures_are_one_line_and_nonzero(tmp_path: Path) -> None:
    code, _, err = run("token", "info", str(tmp_path / "missing"))
    assert code == 1 and err.startswith("foblab: error: cannot open")
    assert len(err.strip().splitlines()) == 1


def test_qa_refused_without_qa_mode(tmp_path: Path) -> None:
    with serve_token(seed=bytes.fromhex(SEED), pty_link=tmp_path / "tok") as running:
        code, _, err = run("token", "qa", "age", running.url, "1d", "--timeout", "1")
        assert code == 1 and "not_permitted" in err


def test_timeout_when_nobody_answers(tmp_path: Path) -> None:
    import os
    import pty

    master, slave = pty.openpty()
    try:
        code, _, err = run("token", "info", os.ttyname(slave), "--timeout", "0.2")
        assert code == 1 and "no reply" in err
    finally:
        os.close(master)
        os.close(slave)


def test_argument_parsing() -> None:
    assert parse_duration_ms("90s") == 90_000
    assert parse_duration_ms("15m") == 900_000
    assert parse_duration_ms("12h") == 43_200_000
    assert parse_duration_ms("365d") == 31_536_000_000
    assert parse_duration_ms("-90s", signed=True) == -90_000
    with pytest.raises(ValueError):
        parse_duration_ms("-90s")
    with pytest.raises(ValueError):
        parse_duration_ms("soon")
    assert parse_time_ms("2033-05-18T03:33:20Z") == 2_000_000_000_000
    assert parse_time_ms("1111111109") == 1_111_111_109_000
    assert parse_time_ms("2009-03-18T01:58:29+00:00") == 1_237_341_509_000
    assert parse_hex("0x31 32") == b"12"
    assert parse_host_port("127.0.0.1:7001") == ("127.0.0.1", 7001)


def test_watch_redraws_in_place_on_a_terminal(qa_token: TokenRunner) -> None:
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    seen = b""
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "token", "watch",
                                 qa_token.url, "--count", "2", "--interval", "0.2"],
                                stdout=slave, stderr=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[2])
        os.close(slave)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    redraws = seen.count(b"\r\x1b[K")
    assert redraws == 2, seen
    assert qa_token.token.state.serial.encode() in seen and b"] " in seen  # the countdown bar

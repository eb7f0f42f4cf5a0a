"""Every shipped scenario, live: the real daemon (uvicorn, SQLite) in a child process and an
emulated QA token on a real PTY, time applied through the token's QA commands."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_sim.background import serve_token
from firmware_sim.runner import TokenRunner
from tools.scenario.live import LiveError, run_live
from tools.scenario.spec import load
from tools.scenario_cmd import scenario
from validator.daemon import init_dir

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A daemon with the brute-force scenario's short locks (see that file)."""
    home = tmp_path_factory.mktemp("daemon")
    made = init_dir(home / "v")
    config = home / "v" / "foblab.toml"
    text = config.read_text().replace("lock_base = 30.0", "lock_base = 2.0")
    config.write_text(text.replace("lock_cap = 3600.0", "lock_cap = 60.0"))
    log_path = home / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from tools.cli import main; main()", "validator", "serve",
             "--dir", str(home / "v"), "--port", "0", "--log-level", "warning"],
            stdout=log, stderr=log, start_new_session=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not (m := re.search(r"listening on (https?://[^\s\"]+)", log_path.read_text())):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the daemon did not start"
                time.sleep(0.05)
            yield m.group(1), str(made["admin_key"])
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(15) == 0


@pytest.fixture
def token(tmp_path: Path) -> Iterator[TokenRunner]:
    with serve_token(model="keyfob", qa=True, seed=None, state_dir=tmp_path / "state",
                     pty_link=tmp_path / "fob", durable=False) as runner:
        yield runner


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenario_passes_live(path: Path, daemon: tuple[str, str],
                                      token: TokenRunner) -> None:
    url, key = daemon
    run = run_live(load(path), url=url, key=key, port=token.url)
    assert run.mode == "live"
    assert run.passed, [f"{r.event.name}: expected {r.event.expect.describe()}, got "
                        f"{r.outcome.describe()}" for r in run.failures]
    assert run.serial == token.token.serial
    assert not token.token.state.provisioned  # left blank, as it was found


def test_live_cli_with_junit_and_a_key_file(daemon: tuple[str, str], token: TokenRunner,
                                            tmp_path: Path) -> None:
    url, key = daemon
    key_file = tmp_path / "admin.key"
    key_file.write_text(key + "\n")
    xml_path = tmp_path / "live.xml"
    result = CliRunner().invoke(scenario, [
        "run", str(ROOT / "scenarios" / "replay-attempt.toml"), "--live", "--url", url,
        "--key-file", str(key_file), "--token", token.url, "--junit", str(xml_path)])
    assert result.exit_code == 0, result.output
    assert "live, seed 5" in result.output and "PASS: 6/6" in result.output
    suite = ET.parse(xml_path).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "6" and suite.get("failures") == "0"


def test_live_refuses_a_token_outside_qa_mode(daemon: tuple[str, str], tmp_path: Path) -> None:
    url, key = daemon
    with serve_token(model="keyfob", qa=False, seed=b"\x02" * 20, pty_link=tmp_path / "plain",
                     state_dir=tmp_path / "s2", durable=False) as plain:
        with pytest.raises(LiveError, match="not in QA mode"):
            run_live(load(SHIPPED[0]), url=url, key=key, port=plain.url)


def test_live_with_a_missing_port(daemon: tuple[str, str], tmp_path: Path) -> None:
    url, key = daemon
    with pytest.raises(LiveError, match="cannot open"):
        run_live(load(SHIPPED[0]), url=url, key=key, port=str(tmp_path / "nothing"))


def test_live_refuses_a_seeded_token_unless_reset_token(daemon: tuple[str, str],
                                                        tmp_path: Path) -> None:
    """A token holding a seed may be enrolled anywhere: erasing it needs consent."""
    url, key = daemon
    with serve_token(model="keyfob", qa=True, seed=b"\x01" * 20, pty_link=tmp_path / "seeded",
                     state_dir=tmp_path / "s3", durable=False) as seeded:
        with pytest.raises(LiveError, match="holds a seed.*--reset-token"):
            run_live(load(SHIPPED[0]), url=url, key=key, port=seeded.url)
        assert seeded.token.state.seed == b"\x01" * 20  # untouched
        run = run_live(load(SHIPPED[0]), url=url, key=key, port=seeded.url, reset_token=True)
        assert run.passed


def test_live_refuses_a_token_enrolled_with_the_daemon(daemon: tuple[str, str],
                                                       token: TokenRunner) -> None:
    import httpx

    url, key = daemon
    auth = {"Authorization": f"Bearer {key}"}
    serial = token.token.state.serial
    r = httpx.post(f"{url}/v1/tokens", headers=auth,
                   json={"serial": serial, "secret_hex": "31" * 20})
    assert r.status_code == 201, r.text
    from tools.cli import main  # the old spellings are the foblab command's

    result = CliRunner().invoke(main, [
        "scenario", "run", str(SHIPPED[0]), "--live", "--url", url, "--key", key,
        "--port", token.url])
    assert result.exit_code == 2
    assert "--port is deprecated" in result.output  # the old spelling still works
    assert f"token {serial} is registered with the daemon" in result.output
    assert "--reset-token" in result.output
    assert httpx.get(f"{url}/v1/tokens/{serial}", headers=auth).status_code == 200  # kept

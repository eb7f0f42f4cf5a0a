"""The daemon's life: the replay race through HTTP, SIGKILL right after an accepted code,
SIGTERM with a request in flight, and start-up refusals of bad configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import (  # noqa: E402
    PYTHON,
    ROOT,
    FakePort,
    enable_pair,
    init_dir,
    set_config,
)

B32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def enable(http: httpx.Client, serial: str, user: str) -> pyotp.TOTP:
    return enable_pair(http, serial, user, B32)


def test_replay_race_exactly_one_wins(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path / "v")
    d = spawn(tmp_path / "v")
    with d.client() as http:
        totp = enable(http, "RACE-0001", "rachel")
    code = totp.at(time.time() + 30)

    async def storm() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=d.url, limits=limits, timeout=30, headers={
                "Authorization": f"Bearer {d.verifier}"}) as client:
            gate = asyncio.Event()

            async def one() -> dict[str, Any]:
                await gate.wait()
                r = await client.post("/v1/verify", json={"user": "rachel", "code": code})
                assert r.status_code == 200, r.text
                return dict(r.json())

            tasks = [asyncio.create_task(one()) for _ in range(50)]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.gather(*tasks)

    answers = asyncio.run(storm())
    assert sum(a["ok"] for a in answers) == 1
    assert {a["reason"] for a in answers if not a["ok"]} == {"replayed"}


def test_sigkill_after_an_accepted_code_then_restart(tmp_path: Path, spawn: Any) -> None:
    home = tmp_path / "v"
    init_dir(home)
    d = spawn(home)
    with d.client() as http:
        totp = enable(http, "CRASH-0001", "carl")
        code = totp.at(time.time() + 30)
        assert http.post("/v1/verify", json={"user": "carl", "code": code}).json()["ok"]
    d.proc.send_signal(signal.SIGKILL)  # right after the answer: nothing gets to clean up
    assert d.proc.wait(10) == -signal.SIGKILL
    again = spawn(home)
    with again.client() as http:
        r = http.post("/v1/verify", json={"user": "carl", "code": code}).json()
        assert r["ok"] is False and r["reason"] == "replayed"
        assert http.get("/healthz").status_code == 200
    assert again.stop() == 0
    with sqlite3.connect(home / "validator.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = db.execute("SELECT count(*) FROM audit WHERE action = 'verify' AND result = 'ok'"
                       ).fetchone()[0]
        assert n == 1


def test_sigterm_lets_an_in_flight_request_finish(tmp_path: Path, spawn: Any) -> None:
    silent = FakePort(tmp_path, "silent", garbage=False)
    try:
        home = tmp_path / "v"
        init_dir(home, station_timeout=1.5)
        d = spawn(home, "--station", f"slow={silent.link}")
        result: dict[str, Any] = {}

        def slow_request() -> None:
            with d.client() as http:
                r = http.get("/v1/stations/slow")
                result.update(status=r.status_code, body=r.json())

        thread = threading.Thread(target=slow_request)
        thread.start()
        with d.client(None) as http:  # wait until the slow request is being answered
            deadline = time.monotonic() + 10
            while "foblab_http_requests_in_flight 2" not in http.get("/metrics").text:
                assert time.monotonic() < deadline, "the slow request never started"
                time.sleep(0.02)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        thread.join(10)
        assert result["status"] == 504 and result["body"]["error"] == "token_timeout"
        log = "".join(d.lines)
        assert "database closed" in log and "Traceback" not in log
    finally:
        silent.close()


def test_sigint_exits_zero(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path / "v")
    d = spawn(tmp_path / "v")
    assert d.stop(signal.SIGINT) == 0


def serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", "serve", "--dir",
                           str(home), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def assert_one_line_refusal(out: subprocess.CompletedProcess[str], words: str) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("foblab: error:") and words in lines[0], lines[0]
    assert "Traceback" not in out.stderr


def test_bad_configuration_is_one_line_and_nonzero(tmp_path: Path) -> None:
    home = tmp_path / "v"
    init_dir(home)
    # a folder from before named keys (no api-keys.toml) gets it from both key files
    (home / "api-keys.toml").rename(home / "api-keys.moved")
    (home / "admin.key").rename(home / "admin.key.moved")
    assert_one_line_refusal(serve(home), "admin.key does not exist")
    (home / "admin.key.moved").rename(home / "admin.key")

    os.chmod(home / "verifier.key", 0o644)
    assert_one_line_refusal(serve(home), "readable by others")
    os.chmod(home / "verifier.key", 0o600)
    assert not (home / "api-keys.toml").exists()  # nothing made from a refused folder
    (home / "api-keys.moved").rename(home / "api-keys.toml")

    os.chmod(home / "api-keys.toml", 0o644)
    assert_one_line_refusal(serve(home), "api-keys.toml is readable by others")
    os.chmod(home / "api-keys.toml", 0o600)

    (home / "seed.key").rename(home / "seed.moved")
    assert_one_line_refusal(serve(home), "seed key file")
    (home / "seed.moved").rename(home / "seed.key")

    # Key files holding bytes that are not text: a refusal naming the file, no traceback.
    for name, words in (("api-keys.toml", "api-keys.toml is not valid TOML"),
                        ("seed.key", "seed.key does not hold a hex key")):
        (home / name).rename(home / f"{name}.moved")
        (home / name).write_bytes(b"\xff\xfe\x00" + b"\x80" * 40)
        os.chmod(home / name, 0o600)
        assert_one_line_refusal(serve(home), words)
        (home / f"{name}.moved").replace(home / name)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_one_line_refusal(serve(home, "--port", str(port)),
                                f"cannot listen on 127.0.0.1:{port}")

    set_config(home, database="elsewhere/none.db")
    assert_one_line_refusal(serve(home), "does not exist")
    broken = home / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    set_config(home, database="broken.db")
    assert_one_line_refusal(serve(home), "database")

    set_config(home, database="validator.db", colour="blue")
    assert_one_line_refusal(serve(home), "unknown key")
    (home / "foblab.toml").write_text("[validator\n")
    assert_one_line_refusal(serve(home), "not valid TOML")
    assert_one_line_refusal(serve(tmp_path / "nowhere"), "no config file")


def test_unwritable_database_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "v"
    init_dir(home)
    if os.geteuid() != 0:
        os.chmod(home / "validator.db", 0o400)
        assert_one_line_refusal(serve(home), "must be writable")
        return
    # root writes through any mode bits: show it the folder on a read-only bind mount
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(home), str(ro)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only mount: {mounted.stderr.strip()}")
    try:
        assert_one_line_refusal(serve(ro), "must be writable")
    finally:
        subprocess.run(["umount", str(ro)], check=False)

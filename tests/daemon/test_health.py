"""/healthz tells the truth: 503 with the reason when the database cannot be read or the
seeds it holds do not open; `foblab validator check` says the same offline."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from daemon_helpers import PYTHON, ROOT, init_dir

from validator.service import Validator

T0 = 1_700_000_000.0
SEED = bytes.fromhex("00112233445566778899aabbccddeeff00112233")


def _check(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", "check", "--dir",
                           str(home), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def _register(home: Path, *serials: str) -> None:
    v = Validator.open(home / "validator.db", home / "seed.key", create_key=False)
    for serial in serials:
        v.register_token(serial, SEED, now=T0)
    v.close()


def test_healthz_answers_503_while_the_database_cannot_be_read(tmp_path: Path, spawn) -> None:
    home = tmp_path / "home"
    init_dir(home)
    _register(home, "GAHT00000001")
    d = spawn(home)
    db = home / "validator.db"
    aside = tmp_path / "aside"
    aside.mkdir()
    with d.client(None) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        # The database file (with its WAL) replaced by garbage under the running daemon: a
        # disk gone bad, a restore gone wrong. Its open connections still read the old file
        # from their caches; the health check must not believe them.
        moved = [p for p in home.iterdir() if p.name.startswith("validator.db")]
        for p in moved:
            p.rename(aside / p.name)
        db.write_bytes(b"\xff" * 8192)
        answer = anon.get("/healthz")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unhealthy"
        assert "database cannot be read" in answer.json()["message"]
        db.unlink()
        for p in moved:
            (aside / p.name).rename(p)
        assert anon.get("/healthz").status_code == 200  # and it recovers by itself
    assert d.proc.poll() is None


def test_healthz_and_check_report_seeds_that_do_not_open(tmp_path: Path, spawn) -> None:
    home = tmp_path / "home"
    init_dir(home)
    _register(home, "GAHT00000001", "GAHT00000002")
    out = _check(home)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["ok"], report["opened"], report["total"]) == (True, 2, 2)
    # One token's sealed seed swapped for the other's (a restore gone wrong, or tampering):
    # the serial bound into the seal makes it fail to open under its new serial.
    with sqlite3.connect(home / "validator.db") as conn:
        (sealed,) = conn.execute(
            "SELECT sealed FROM tokens WHERE serial = 'GAHT00000001'").fetchone()
        conn.execute("UPDATE tokens SET sealed = ? WHERE serial = 'GAHT00000002'", (sealed,))
    conn.close()
    out = _check(home)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert (report["ok"], report["opened"], report["failed"]) == (False, 1, 1)
    assert "GAHT00000002" in report["errors"][0] and SEED.hex() not in out.stdout
    d = spawn(home)
    with d.client(None) as anon:
        answer = anon.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["message"] == ("1 of 2 sampled sealed secrets do not open under "
                                        "the key file's key")
    assert any("do not open" in line for line in d.lines)
    # The human form: one line with the count, exit 1.
    out = subprocess.run([PYTHON, "-m", "tools.cli", "validator", "check", "--dir",
                          str(home)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout.startswith("1 of 2 sealed secrets open")

"""Key rotations survive a crash at every step boundary, any number of times in a row.

A process is SIGKILLed (`FOBLAB_TEST_CRASH_AT`, a hook only tests set) at each step of a
rotation; the next process opens the validator (settling what the crash left), checks
that every sealed secret opens to the very bytes it was given, and is itself killed at a
step of the next rotation. The order of steps visits every ordered pair (crash at A, then
at B), so every step is also hit right after every other one, itself included.

The processes are real: forked one after another from a small single-threaded server
process (forking is what makes some 150 kills take seconds instead of minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from validator import keys
from validator.aws.store import open_aws_store
from validator.otp import hotp
from validator.secrets_box import key_id, read_key
from validator.service import Validator
from validator.store import SQLiteStore, open_store

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
STEPS = (*keys.DATA_STEPS, *keys.MASTER_STEPS, *keys.RECOVERY_STEPS)
N_TOKENS = 40

# Runs in the server process: reads one JSON command per line, forks a child per command,
# reports how the child ended. The child opens the validator (settling any crash), reports
# what opens, then runs the rotation with the crash hook set.
SERVER = textwrap.dedent("""
    import hashlib, json, os, sys
    from validator import keys
    from validator.aws.store import open_aws_store
    from validator.service import Validator

    def report(data):
        os.write(1, (json.dumps(data) + "\\n").encode())

    def child(cmd):
        if cmd["crash"]:
            os.environ["FOBLAB_TEST_CRASH_AT"] = cmd["crash"]
        v = Validator.open(cmd["db"], cmd["key"], create_key=False)
        opened = {}
        digest = hashlib.sha256()
        rows = sorted(v.store.sealed_rows())
        for table, aad, sealed in rows:
            digest.update(aad.encode() + b"\\0" + v.box.open(aad, sealed) + b"\\0")
        result = keys.check(v.store, v.box)
        report({"opened": result.total_opened, "failed": result.total_failed,
                "digest": digest.hexdigest(), "files": sorted(
                    p for p in os.listdir(os.path.dirname(cmd["key"])) if "key" in p)})
        if cmd["aws"]:  # a secret sealed between rotations, as the daemon's AWS door does
            open_aws_store(v.store, v.box).create_key(0.0)
        v.rotate_key(master=cmd["master"])
        report({"done": True})

    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                child(cmd)
                code = 0
            except BaseException as exc:
                report({"error": f"{type(exc).__name__}: {exc}"})
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        report({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
""")


def _pairs_sequence(symbols: tuple[str, ...]) -> list[str]:
    """A sequence in which every ordered pair (a, b) of symbols, a == b included, is
    adjacent once: an Eulerian circuit of the complete digraph with loops (Hierholzer)."""
    unused = {a: list(symbols) for a in symbols}
    stack, circuit = [symbols[0]], []
    while stack:
        here = stack[-1]
        if unused[here]:
            stack.append(unused[here].pop())
        else:
            circuit.append(stack.pop())
    return circuit[::-1]


class Server:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FOBLAB_TEST_CRASH_AT"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def run(self, **cmd: object) -> list[dict[str, object]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out: list[dict[str, object]] = []
        while True:
            line = self.proc.stdout.readline()
            assert line, self.proc.stderr.read() if self.proc.stderr else "server died"
            out.append(json.loads(line))
            if "signal" in out[-1]:
                return out

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _seed(i: int) -> bytes:
    return hashlib.sha256(b"seed%d" % i).digest()[:20]


def _make(folder: Path, url: str | None = None) -> tuple[Any, Path]:
    """A validator with N_TOKENS seeds and an AWS secret, in a SQLite file or the
    PostgreSQL database `url`."""
    folder.mkdir()
    db, key = url or folder / "validator.db", folder / "seed.key"
    v = Validator.open(db, key)
    for i in range(N_TOKENS):
        v.register_token(f"GAHT{i:08d}", _seed(i), now=T0)
    aws = open_aws_store(v.store, v.box)
    aws.create_key(T0)
    aws.close()
    v.close()
    return db, key


def _expected_digest(db: Any, key: Path) -> tuple[str, int]:
    store = open_store(db, readonly=True)
    box = keys.open_box(store, key, settle=False)
    digest = hashlib.sha256()
    rows = sorted(store.sealed_rows())
    for _, aad, sealed in rows:
        digest.update(aad.encode() + b"\0" + box.open(aad, sealed) + b"\0")
    store.close()
    return digest.hexdigest(), len(rows)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_rotation_step_crashed_after_every_other(tmp_path: Path, backend: str,
                                                       request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    db, key = _make(tmp_path / "v", url)
    sequence = _pairs_sequence(STEPS)
    assert len(sequence) == len(STEPS) ** 2 + 1
    if url is not None:  # every step once, not every pair: a process costs more there,
        sequence = [*STEPS, "master:committed", "recover:renamed",
                    "master:swapped", "recover:committed"]  # (the file steps as on SQLite)
    server = Server()
    killed: dict[str, int] = {}
    try:
        for i, step in enumerate([*sequence, ""]):
            master = step.startswith(("master:", "recover:"))
            # Before the rotation, the child adds an AWS secret every few rounds: sealed
            # under whatever data key the settled box holds, it must survive too.
            aws = i % 5 == 0
            expected, count = _expected_digest(db, key)  # read-only, whatever state it is in
            out = server.run(db=str(db), key=str(key), crash=step, master=master, aws=aws)
            errors = [o["error"] for o in out if "error" in o]
            assert not errors, (i, step, errors)
            if out[-1]["signal"] == signal.SIGKILL:
                killed[step] = killed.get(step, 0) + 1
            else:
                assert out[-1]["exit"] == 0 and {"done": True} in out, (i, step, out)
            report = out[0]
            if "opened" not in report:  # killed while settling at start-up (recover:...)
                assert step.startswith("recover:"), (i, step, out)
                continue
            # After every crash so far, everything opens, to the same bytes...
            assert report["failed"] == 0 and report["opened"] == count, (i, step, report)
            assert report["digest"] == expected, (i, step)
            # ...and once settled only the key file is left (no .next, no .tmp).
            assert report["files"] == ["seed.key"], (i, step, report)
    finally:
        server.close()
    # Every rotation step was really crashed at, right after each step (itself included).
    for step in (*keys.DATA_STEPS, *keys.MASTER_STEPS):
        assert killed.get(step, 0) == sequence.count(step) >= (
            len(STEPS) if url is None else 1), (step, killed)
    print(f"\n{len(sequence)} rotations, {sum(killed.values())} killed: {killed}")
    # Recovery steps happen only when a crash left something to finish: after the crashes
    # between the master rotation's commit and its swap, at least.
    assert killed.get("recover:committed", 0) >= 1 and killed.get("recover:renamed", 0) >= 1
    # And the validator still verifies with the seeds it was given.
    v = Validator.open(db, key, create_key=False)
    try:
        s = int(T0 // 30)
        v.enable("alice", "GAHT00000007", hotp(_seed(7), s - 1), hotp(_seed(7), s), now=T0)
        assert v.verify("alice", hotp(_seed(7), s + 1), now=T0 + 30).accepted
        assert v.health() is None
    finally:
        v.close()


def _legacy(folder: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A database as the validator before envelope keys made it: every seed (and an AWS
    secret) sealed directly under the key file's key, format 1, schema version 3."""
    db, key = _make(folder)
    master = read_key(key)

    def legacy_seal(aad: str, secret: bytes) -> bytes:
        nonce = _secrets.token_bytes(12)
        return b"\x01" + key_id(master) + nonce + AESGCM(master).encrypt(
            nonce, secret, b"foblab-seed-v1\x00" + aad.encode())

    store = SQLiteStore(db)
    v = Validator(store, keys.open_box(store, key, settle=False))
    plain = {aad: v.box.open(aad, sealed) for _, aad, sealed in store.sealed_rows()}
    conn = store._conn()
    conn.execute("BEGIN IMMEDIATE")
    for table, column, prefix in conn.execute(
            "SELECT tbl, key_column, aad_prefix FROM sealed_columns").fetchall():
        for name, _ in conn.execute(f"SELECT {column}, sealed FROM {table}").fetchall():
            conn.execute(f"UPDATE {table} SET sealed = ? WHERE {column} = ?",
                         (legacy_seal(prefix + name, plain[prefix + name]), name))
    conn.execute("DROP TABLE data_keys")
    conn.execute("ALTER TABLE audit DROP COLUMN request_id")  # schema 6's
    conn.execute("UPDATE schema_version SET version = 4")
    conn.execute("COMMIT")
    store.close()
    return db, key, plain


@pytest.mark.parametrize("crash", ["data:resealed", "data:committed", "recover:committed"])
def test_a_legacy_database_migrates_on_first_open_even_if_that_crashes(
        tmp_path: Path, crash: str) -> None:
    db, key, plain = _legacy(tmp_path / "v")
    conn = SQLiteStore(db, readonly=True)
    assert {s[0] for _, _, s in conn.sealed_rows()} == {1}
    conn.close()
    server = Server()
    try:
        out = server.run(db=str(db), key=str(key), crash=crash, master=False, aws=False)
        assert out[-1]["signal"] == signal.SIGKILL, out  # the migration itself was killed
        out = server.run(db=str(db), key=str(key), crash="", master=True, aws=False)
        assert out[0]["failed"] == 0 and out[0]["opened"] == len(plain), out
    finally:
        server.close()
    store = SQLiteStore(db, readonly=True)
    box = keys.open_box(store, key, settle=False)
    rows = list(store.sealed_rows())
    assert {sealed[0] for _, _, sealed in rows} == {2}  # every secret under a data key now
    assert {aad: box.open(aad, sealed) for _, aad, sealed in rows} == plain
    store.close()


def test_the_old_rotations_crash_state_is_settled_by_what_opens(tmp_path: Path) -> None:
    """What the validator before envelope keys left when it died between its commit and
    its rename: rows sealed under `seed.key.next`, `seed.key` holding the old key. The
    file names say `seed.key`; the rows say `.next`; the rows win."""
    db, key, plain = _legacy(tmp_path / "v")
    old = key.read_bytes()
    key.rename(key.with_name("seed.key.next"))
    os.chmod(key.with_name("seed.key.next"), 0o600)
    key.write_bytes(b"11" * 32 + b"\n")  # an unrelated key in the key file's place
    os.chmod(key, 0o600)
    v = Validator.open(db, key, create_key=False)
    try:
        assert v.health() is None
        assert {aad: v.box.open(aad, s) for _, aad, s in v.store.sealed_rows()} == plain
    finally:
        v.close()
    assert key.read_bytes() == old and not key.with_name("seed.key.next").exists()


def test_no_key_file_opens_the_rows_then_nothing_is_touched(tmp_path: Path) -> None:
    db, key = _make(tmp_path / "v")
    good = key.read_bytes()
    key.write_bytes(b"22" * 32 + b"\n")
    pending = key.with_name("seed.key.next")
    pending.write_bytes(b"33" * 32 + b"\n")
    os.chmod(pending, 0o600)
    before = db.read_bytes()
    with pytest.raises(keys.KeyRecoveryError, match="nothing was changed"):
        Validator.open(db, key, create_key=False)
    assert pending.exists() and db.read_bytes() == before
    key.write_bytes(good)
    Validator.open(db, key, create_key=False).close()  # the right key: it opens, settles
    assert not pending.exists()


def test_daemon_killed_mid_rotation_restarts_healthy(tmp_path: Path) -> None:
    """The real daemon, killed by the hook between a master rotation's commit and its key
    file swap; restarted, it finishes the rotation, answers healthy and verifies."""
    sys.path.insert(0, str(ROOT / "tests" / "daemon"))
    import httpx
    from daemon_helpers import init_dir, start

    home = tmp_path / "home"
    admin, _ = init_dir(home)
    v = Validator.open(home / "validator.db", home / "seed.key", create_key=False)
    v.register_token("GAHT00000001", _seed(1), now=T0)
    v.close()
    old_key = (home / "seed.key").read_bytes()
    os.environ["FOBLAB_TEST_CRASH_AT"] = "master:committed"
    try:
        d = start(home)
    finally:
        del os.environ["FOBLAB_TEST_CRASH_AT"]
    try:
        with pytest.raises(httpx.HTTPError):
            d.client().post("/v1/admin/rotate-key", params={"master": "true"})
        assert d.proc.wait(20) == -signal.SIGKILL
    finally:
        d.stop(9)
    assert (home / "seed.key").read_bytes() == old_key  # the crash left the old file...
    assert (home / "seed.key.next").exists()  # ...and the new key the rows now need
    d = start(home)
    try:
        with d.client() as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/v1/tokens/GAHT00000001").status_code == 200
        assert (home / "seed.key").read_bytes() != old_key
        assert not (home / "seed.key.next").exists()
    finally:
        d.stop()
    out = subprocess.run([sys.executable, "-m", "tools.cli", "validator", "check", "--dir",
                          str(home)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1 of 1 sealed secrets open")

"""Backup and restore: `foblab validator backup` while a real daemon verifies codes as fast
as it can, `restore` into a new folder, a daemon on the restored folder: every token takes
a fresh code, and no code the original accepted before the backup began is accepted again
(the replay watermarks are in the copy). Plus the refusals: a non-empty folder, a wrong
passphrase, an altered file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyotp
from click.testing import CliRunner

from tools.cli import main
from validator.daemon import init_dir as make_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import PYTHON, ROOT, init_dir, set_config  # noqa: E402

SEEDS = [pyotp.random_base32(32) for _ in range(6)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`foblab validator ARGS` in a process of its own (the real command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOBLAB_")}
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    """The same in this process (click's runner): no interpreter start-up per call."""
    result = CliRunner().invoke(main, ["validator", *args], env={
        k: None for k in os.environ if k.startswith("FOBLAB_")})
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_backup_under_load_then_restore_refuses_every_replay(tmp_path: Path,
                                                              spawn: Any) -> None:
    folder = tmp_path / "v"
    init_dir(folder)
    # codes accepted after the backup are not in it: the restored validator must reach
    # past them to the fresh code, so HOTP may look further ahead than its default; with
    # 8 digits a wrong code matching one of those counters by chance stays negligible
    set_config(folder, "policy", hotp_lookahead=400)
    d = spawn(folder)
    serials = [f"HB{i:04d}" for i in range(len(SEEDS))]
    with d.client("admin") as http:
        for i, (serial, seed) in enumerate(zip(serials, SEEDS, strict=True)):
            assert http.post("/v1/tokens", json={"serial": serial, "secret_b32": seed,
                                                 "kind": "hotp", "digits": 8}
                             ).status_code == 201
            hotp = pyotp.HOTP(seed, digits=8)
            r = http.post(f"/v1/users/u{i}/devices", json={
                "serial": serial, "code1": hotp.at(0), "code2": hotp.at(1)})
            assert r.status_code == 201, r.text

    accepted: list[tuple[int, int, float]] = []  # (token, counter, when the answer came)
    stop = threading.Event()
    errors: list[str] = []

    def verify_loop(mine: list[int]) -> None:
        counters = {i: 2 for i in mine}
        try:
            with d.client("verifier") as http:
                while not stop.is_set():
                    for i in mine:
                        code = pyotp.HOTP(SEEDS[i], digits=8).at(counters[i])
                        r = http.post("/v1/verify", json={"user": f"u{i}", "code": code})
                        if r.status_code != 200 or not r.json()["ok"]:
                            errors.append(r.text)
                            return
                        accepted.append((i, counters[i], time.monotonic()))
                        counters[i] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(repr(exc))

    threads = [threading.Thread(target=verify_loop, args=([i for i in range(len(SEEDS))
                                                           if i % 2 == n],))
               for n in range(2)]
    for t in threads:
        t.start()
    try:
        while len(accepted) < 60 and not errors:
            time.sleep(0.02)
        (tmp_path / "pass.txt").write_text("correct horse battery staple\n")
        began = time.monotonic()
        made = cli("backup", "--dir", str(folder), "--passphrase-file",
                   str(tmp_path / "pass.txt"), str(tmp_path / "v.backup"), "--json")
        ended = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["encrypted"] is True
    assert stat.S_IMODE((tmp_path / "v.backup").stat().st_mode) == 0o600
    before = [(i, c) for i, c, when in accepted if when < began]
    during = [(i, c) for i, c, when in accepted if began <= when <= ended]
    assert before and during, (len(before), len(during))  # the daemon served throughout
    assert d.stop() == 0

    restored = tmp_path / "restored"
    out = cli("restore", str(tmp_path / "v.backup"), str(restored), "--passphrase-file",
              str(tmp_path / "pass.txt"))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700
    again = spawn(restored)
    with again.client("verifier") as http:
        for i in range(len(SEEDS)):
            hotp = pyotp.HOTP(SEEDS[i], digits=8)
            # accepted by the original before the backup: never again (the newest few of
            # each token; the watermark makes every older one a replay too)
            for c in sorted(c for j, c in before if j == i)[-3:]:
                r = http.post("/v1/verify", json={"user": f"u{i}", "code": hotp.at(c)})
                assert r.json()["ok"] is False, (i, c, r.text)
                assert r.json()["reason"] == "replayed", (i, c, r.text)
            # a code the original never saw: accepted
            newest = max(c for j, c, _ in accepted if j == i)
            r = http.post("/v1/verify", json={"user": f"u{i}", "code": hotp.at(newest + 1)})
            assert r.json()["ok"] is True, (i, newest, r.text)
    assert again.stop() == 0


def test_restore_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "v"
    make_dir(folder)
    (tmp_path / "pass.txt").write_text("correct horse battery staple\n")
    (tmp_path / "wrong.txt").write_text("incorrect horse battery staple\n")
    plain, sealed = tmp_path / "plain.backup", tmp_path / "sealed.backup"
    assert offline("backup", "--dir", str(folder), str(plain)).returncode == 0
    assert offline("backup", "--dir", str(folder), "--passphrase-file",
                   str(tmp_path / "pass.txt"), str(sealed)).returncode == 0
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert b"fla_" not in sealed.read_bytes()  # no key in the clear
    again = offline("backup", "--dir", str(folder), str(plain))
    assert again.returncode == 1 and "exists already" in again.stderr

    cases = [
        (["restore", str(plain), str(folder)], "is not empty"),
        (["restore", str(sealed), str(tmp_path / "a")], "this backup is encrypted"),
        (["restore", str(sealed), str(tmp_path / "b"), "--passphrase-file",
          str(tmp_path / "wrong.txt")], "wrong passphrase"),
    ]
    tampered = tmp_path / "tampered.backup"
    blob = bytearray(sealed.read_bytes())
    blob[-40] ^= 1
    tampered.write_bytes(bytes(blob))
    cases.append((["restore", str(tampered), str(tmp_path / "c"), "--passphrase-file",
                   str(tmp_path / "pass.txt")], "wrong passphrase, or the backup was altered"))
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(200))
    cases.append((["restore", str(junk), str(tmp_path / "d")], "not a foblab backup"))
    for args, words in cases:
        out = offline(*args)
        assert out.returncode == 1 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    for name in "abcd":
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == original  # untouched
    ok = offline("restore", str(plain), str(tmp_path / "e"), "--json")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "e" / "admin.key").read_text() == (folder / "admin.key").read_text()

"""`foblab sim run|fleet` as real processes, and `foblab token` as a real subprocess."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

FOBLAB = str(Path(sys.executable).with_name("foblab"))
SEED = "3132333435363738393031323334353637383930"


def start(*args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen([FOBLAB, "sim", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"foblab sim failed: {err}")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 0


def token(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FOBLAB, "token", *args], capture_output=True, text=True, timeout=30)


def test_sim_run_and_token_subprocess(tmp_path: Path) -> None:
    link = tmp_path / "GAHT12345678"
    proc, ready = start("run", "--serial", "GAHT12345678", "--seed-hex", SEED, "--digits", "8",
                        "--qa", "--pty-link", str(link), "--state-dir", str(tmp_path / "s"))
    try:
        assert ready["port"] == str(link) and link.is_symlink()
        out = token("qa", "freeze", str(link), "--json")
        assert out.returncode == 0, out.stderr
        token("qa", "set-time", str(link), "1234567890")
        press = token("press", str(link), "--json")
        assert json.loads(press.stdout)["code"] == "89005924"
        info = json.loads(token("info", str(link), "--json").stdout)
        assert info["serial"] == "GAHT12345678"
    finally:
        stop(proc)
    assert not link.exists()


def test_generated_seed_goes_to_a_pskc_file_never_to_the_output(tmp_path: Path) -> None:
    import base64

    import pskc
    import pyotp

    link = tmp_path / "ev"
    proc, ready = start("run", "--model", "event", "--serial", "GAEV00000001", "--pty-link",
                        str(link), "--state-dir", str(tmp_path / "s"), "--pskc-passphrase",
                        "qwerty")
    try:
        seed_file = Path(str(ready["seed_file"]))
        assert seed_file == tmp_path / "s" / "GAEV00000001.pskc"
        container = pskc.PSKC(str(seed_file))
        container.encryption.derive_key("qwerty")
        (key,) = container.keys
        assert key.serial == "GAEV00000001" and len(key.secret) == 20
        secret_hex = key.secret.hex()
        assert secret_hex not in json.dumps(ready)
        assert secret_hex.encode() not in seed_file.read_bytes()  # encrypted in the file
        press = json.loads(token("press", str(link), "--json").stdout)["code"]
        assert press == pyotp.HOTP(base64.b32encode(key.secret).decode()).at(0)
    finally:
        stop(proc)


def test_sim_run_tcp(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, ready = start("run", "--model", "event", "--seed-hex", SEED, "--tcp", f"127.0.0.1:{port}",
                        "--state-dir", str(tmp_path))
    try:
        assert ready["port"] == f"socket://127.0.0.1:{port}"
        press = token("press", str(ready["port"]), "--json")
        assert json.loads(press.stdout)["code"] == "755224"
    finally:
        stop(proc)


def test_sim_fleet_writes_manifest_last(tmp_path: Path) -> None:
    proc, ready = start("fleet", "--count", "3", "--dir", str(tmp_path), "--rng-seed", "1",
                        "--drift-spread", "10", "--pskc-passphrase", "pw")
    try:
        manifest = json.loads(Path(str(ready["manifest"])).read_text())
        assert len(manifest["tokens"]) == 3
        for serial, entry in manifest["tokens"].items():
            assert Path(entry["port"]).is_symlink()
            info = token("info", entry["port"], "--json")
            assert json.loads(info.stdout)["serial"] == serial
        assert b"EncryptedValue" in (tmp_path / "seeds.pskc").read_bytes()
    finally:
        stop(proc)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("args,needle", [
    (["run", "--seed-hex", "zz"], "not hex"),
    (["fleet", "--dir", "/tmp"], "--count"),
])
def test_sim_usage_errors(args: list[str], needle: str) -> None:
    out = subprocess.run([FOBLAB, "sim", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and needle in out.stderr



def test_sim_run_refuses_a_serial_it_could_not_report(tmp_path: Path) -> None:
    out = subprocess.run([FOBLAB, "sim", "run", "--serial", "GAHT\u00c41234", "--state-dir",
                          str(tmp_path), "--pty-link", str(tmp_path / "tok")],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and "serial must be" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "fleet"])
def test_sim_refuses_a_baud_rate_below_one_as_a_usage_error(tmp_path: Path,
                                                            command: str) -> None:
    where = ["--state-dir", str(tmp_path)] if command == "run" else ["--dir", str(tmp_path),
                                                                     "--count", "1"]
    out = subprocess.run([FOBLAB, "sim", command, "--baud", "0", *where],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "'--baud': 0 is not in the range x>=1" in out.stderr


@pytest.mark.parametrize("option", [["--count", "2"], ["--drift-ppm", "5"],
                                    ["--drift-spread", "3"]])
def test_sim_fleet_refuses_per_group_options_beside_a_config(tmp_path: Path,
                                                              option: list[str]) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[[group]]\nmodel = "card"\ncount = 1\n')
    out = subprocess.run([FOBLAB, "sim", "fleet", "--dir", str(tmp_path / "f"), "--config",
                          str(config), *option], capture_output=True, text=True, timeout=10)
    assert out.returncode == 1 and f"{option[0]} and --config" in out.stderr
    assert not (tmp_path / "f").exists()


def test_sim_run_refuses_options_that_contradict_the_state_file(tmp_path: Path) -> None:
    """A restarted token keeps its seed; a different --seed is an error naming --fresh."""
    base = ["--serial", "GAHT12345678", "--state-dir", str(tmp_path / "state"),
            "--pty-link", str(tmp_path / "fob")]
    proc, ready = start("run", *base, "--seed-hex", SEED)
    stop(proc)
    other = "3132333435363738393031323334353637383931"
    for extra, named in ((["--seed-hex", other], "--seed"), (["--digits", "8"], "--digits 8"),
                         (["--blank"], "--blank")):
        done = subprocess.run([FOBLAB, "sim", "run", *base, *extra], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 1, done
        assert named in done.stderr and "--fresh" in done.stderr, done.stderr
        assert SEED not in done.stderr and other not in done.stderr  # never a secret
    proc, ready = start("run", *base, "--seed-hex", SEED)  # the same seed: restored, fine
    assert ready["restored"] is True
    stop(proc)
    proc, ready = start("run", *base, "--seed-hex", other, "--fresh")
    assert ready["restored"] is False
    stop(proc)
    state = json.loads((tmp_path / "state" / "GAHT12345678.json").read_text())
    assert state["seed"] == other

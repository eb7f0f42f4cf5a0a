"""foblab as a library: `foblab.lab()` with real tokens and the real daemon."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyotp
import pytest
import serial

import foblab
from foblab import _clock, _lab
from protocol import TokenClient, pyserial_reader

ROOT = Path(__file__).resolve().parents[2]


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_enroll_login_replay_and_a_wrong_code() -> None:
    with foblab.lab() as lab:
        tok = lab.token()
        v = lab.validator
        user = v.new_user()
        device = v.enroll(user, tok)
        assert device["serial"] == tok.serial and device["user"] == user
        code = tok.next_code()
        assert v.verify(user, code).accepted
        again = v.verify(user, code)
        assert not again.accepted and again.reason == "replayed"
        wrong = str((int(code) + 1) % 10**6).zfill(6)
        assert v.verify(user, wrong).reason == "invalid_code"
        # the same daemon answers a raw HTTP client with the verifier key
        with v.api_client(v.verifier_key) as http:
            assert http.post("/v1/verify", json={"user": user, "code": "123456"}).status_code \
                == 200
            assert http.get("/v1/tokens").status_code == 403


@pytest.mark.parametrize("options", [
    {"hash": "sha256", "digits": 8}, {"model": "keyfob-60"}, {"kind": "hotp"},
    {"hash": "sha512", "period": 60},
])
def test_every_kind_of_token_enrolls(options: dict) -> None:
    model = options.pop("model", "keyfob")
    with foblab.lab() as lab:
        tok = lab.token(model, **options)
        user = lab.validator.new_user()
        lab.validator.enroll(user, tok)
        assert lab.validator.verify(user, tok.next_code()).accepted, tok


def test_time_machine_drift_resync_and_lock_expiry() -> None:
    with foblab.lab(time_machine=True) as lab:
        v = lab.validator
        tok = lab.token(drift_ppm=40)
        user = v.new_user()
        v.enroll(user, tok)
        assert v.verify(user, tok.next_code()).accepted
        lab.clock.advance("365d")  # a year on both the validator and the token
        assert tok.offset() == pytest.approx(1261.44, abs=0.05)  # 40 ppm x 1 year
        assert v.verify(user, tok.next_code()).reason == "invalid_code"
        first = tok.code()
        v.resync(user, tok.serial, first, tok.next_code())
        assert v.verify(user, tok.next_code()).accepted
        # brute force locks the token; the lock lifts when (lab) time has passed
        reasons = [v.verify(user, "000000").reason for _ in range(12)]
        assert "locked" in reasons
        lock = v.verify(user, tok.next_code())
        assert lock.reason == "locked" and lock.retry_after > 0
        lab.clock.advance(lock.retry_after + 1)
        assert v.verify(user, tok.next_code()).accepted


def test_a_token_on_a_pty_answers_code_that_opens_the_port() -> None:
    with foblab.lab() as lab:
        tok = lab.token(port="pty")
        with serial.serial_for_url(tok.port_url, timeout=2) as port:
            client = TokenClient(pyserial_reader(port), port.write)
            assert client.info().serial == tok.serial
            shown = client.press().code
        assert tok.display() == shown
        link = Path(tok.port_url)
        assert link.is_symlink()
    assert not link.exists() and not link.is_symlink()


def test_a_token_on_tcp_and_its_seed_stays_inside() -> None:
    with foblab.lab() as lab:
        tok = lab.token(port="tcp")
        assert tok.port_url.startswith("socket://127.0.0.1:")
        with serial.serial_for_url(tok.port_url, timeout=2) as port:
            client = TokenClient(pyserial_reader(port), port.write)
            assert client.info().serial == tok.serial
        seed = tok._seed
        text = repr(tok) + repr(vars(tok).keys()) + str(lab)
        for form in (seed.hex(), seed.hex().upper(), pyotp.utils.b32encode(seed).decode()
                     if hasattr(pyotp.utils, "b32encode") else seed.hex()):
            assert form not in text


def test_the_codes_are_rfc_6238_codes_of_the_seed() -> None:
    with foblab.lab(time_machine=True) as lab:
        lab.clock.freeze()
        tok = lab.token(hash="sha256", digits=8)
        import base64
        totp = pyotp.TOTP(base64.b32encode(tok._seed).decode(), digits=8,
                          digest="sha256", interval=30)
        assert tok.code() == totp.at(lab.clock.now())
        assert tok.next_codes(3) == [totp.at(lab.clock.now() + 30 * i) for i in range(3)]


def test_memory_tokens_have_no_port_url() -> None:
    with foblab.lab() as lab:
        tok = lab.token()
        with pytest.raises(RuntimeError, match="port='pty'"):
            _ = tok.port_url
        with pytest.raises(ValueError, match="port must be"):
            lab.token(port="usb")


def test_the_time_machine_is_off_by_default_and_not_in_serve(tmp_path: Path) -> None:
    with foblab.lab() as lab:
        with pytest.raises(RuntimeError, match="time_machine=True"):
            _ = lab.clock
    out = subprocess.run([sys.executable, "-m", "tools.cli", "validator", "serve", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "clock" not in out.stdout.lower()
    assert "time" not in out.stdout.lower().replace("timeout", "")
    from validator.config import ConfigError, load
    (tmp_path / "foblab.toml").write_text('[validator]\nclock = "lab"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load(tmp_path / "foblab.toml")


def test_nothing_is_left_behind() -> None:
    threads = {t.name for t in threading.enumerate()}
    fds = _fds()
    with foblab.lab(time_machine=True) as lab:
        lab.token(port="pty")
        lab.token(port="tcp")
        lab.token()
        lab.validator.verify("nobody", "123456")
        where = lab.dir
        assert where.is_dir()
    assert not where.exists()
    assert {t.name for t in threading.enumerate()} <= threads
    assert _fds() <= fds


def test_doctests() -> None:
    tried = 0
    for module in (_clock, _lab, foblab):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module
        tried += result.attempted
    assert tried >= 6


def test_the_radius_door_on_the_lab_clock() -> None:
    from tools.radius_cmd import exchange

    with foblab.lab(time_machine=True) as lab:
        tok = lab.token()
        user = lab.validator.new_user()
        lab.validator.enroll(user, tok)
        radius = lab.validator.radius()
        assert radius.secret.decode() not in repr(radius)
        code = tok.next_code()
        assert exchange(radius.address, user, code, radius.secret).code == "Access-Accept"
        assert exchange(radius.address, user, code, radius.secret).code == "Access-Reject"
        lab.clock.advance("1h")  # the door reads the lab's clock, as the token does
        later = tok.next_code()
        assert exchange(radius.address, user, later, radius.secret).code == "Access-Accept"

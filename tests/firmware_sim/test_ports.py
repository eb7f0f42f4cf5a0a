"""The token over real ports: PTY (pyserial on the symlink), TCP (socket://), real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from firmware_sim.background import serve_token
from protocol.connection import HostConnection, ReplyReceived, TokenClient
from protocol.messages import FreezeRequest, InfoReply, InfoRequest, PressRequest, SetTimeRequest

SEED1 = b"12345678901234567890"
SEEDS = {"sha1": SEED1, "sha256": SEED1 + b"123456789012", "sha512": SEED1 * 3 + b"1234"}
# RFC 6238 Appendix B: time -> (SHA-1, SHA-256, SHA-512), 8 digits
RFC6238 = {
    59: ("94287082", "46119246", "90693936"),
    1111111109: ("07081804", "68084774", "25091201"),
    1111111111: ("14050471", "67062674", "99943326"),
    1234567890: ("89005924", "91819424", "93441116"),
    2000000000: ("69279037", "90698825", "38618901"),
    20000000000: ("65353130", "77737706", "47863826"),
}
HOTP = ["755224", "287082", "359152", "969429", "338314",
        "254676", "287922", "162583", "399871", "520489"]
Opener = Callable[..., TokenClient]
FOBLAB = str(Path(sys.executable).with_name("foblab"))


@pytest.mark.parametrize("index,hash_", list(enumerate(["sha1", "sha256", "sha512"])))
def test_rfc6238_vectors_over_a_pty(tmp_path: Path, open_client: Opener, index: int,
                                    hash_: str) -> None:
    with serve_token(seed=SEEDS[hash_], hash=hash_, digits=8, qa=True,
                     pty_link=tmp_path / "tok") as running:
        c = open_client(running.url)
        c.clock_command(FreezeRequest())
        for t, codes in RFC6238.items():
            assert c.clock_command(SetTimeRequest(t * 1000)).token_time_ms == t * 1000
            assert c.press().code == codes[index], (t, hash_)


def test_hotp_vectors_over_a_pty(tmp_path: Path, open_client: Opener) -> None:
    with serve_token(model="event", seed=SEED1, pty_link=tmp_path / "tok") as running:
        c = open_client(running.url)
        assert [c.press().code for _ in range(10)] == HOTP


def test_default_link_is_published_and_removed(open_client: Opener) -> None:
    with serve_token(serial="GAHT99999901", seed=SEED1) as running:
        link = Path(running.url)
        assert link.name == "GAHT99999901" and link.is_symlink()
        assert os.readlink(link).startswith("/dev/pts/")
        assert open_client(running.url).info().serial == "GAHT99999901"
    assert not link.exists()


def test_reconnecting_clients_get_fresh_answers(tmp_path: Path, open_client: Opener) -> None:
    with serve_token(model="event", seed=SEED1, pty_link=tmp_path / "tok") as running:
        for i in range(3):  # open, use, close, again
            port = serial.serial_for_url(running.url, timeout=2)
            from protocol.connection import pyserial_reader

            assert TokenClient(pyserial_reader(port), port.write).press().code == HOTP[i]
            port.close()
        # a client that asks and leaves without reading, one that leaves mid-frame
        port = serial.serial_for_url(running.url, timeout=2)
        port.write(HostConnection().send(PressRequest())[1])
        time.sleep(0.1)
        port.close()
        port = serial.serial_for_url(running.url, timeout=2)
        port.write(HostConnection().send(InfoRequest())[1][:4])
        port.close()
        time.sleep(0.4)  # longer than the inter-frame gap
        c = open_client(running.url)
        # no stale PRESS reply reaches the new client, and its first request is answered
        host = HostConnection()
        c_port = serial.serial_for_url(running.url, timeout=2)
        seq, data = host.send(InfoRequest())
        c_port.write(data)
        time.sleep(0.2)
        host.receive_data(c_port.read(c_port.in_waiting or 1))
        event = host.next_event()
        c_port.close()
        assert isinstance(event, ReplyReceived) and isinstance(event.reply, InfoReply)
        assert event.seq == seq
        assert c.press().code == HOTP[4]  # the abandoned press still counted, as a button would


def test_garbage_on_the_line_does_not_wedge_the_token(tmp_path: Path, open_client: Opener) -> None:
    with serve_token(seed=SEED1, pty_link=tmp_path / "tok") as running:
        port = serial.serial_for_url(running.url, timeout=2)
        port.write(os.urandom(5000) + b"\xff" * 3000 + b"\x00")
        time.sleep(0.2)
        port.close()
        assert open_client(running.url).info().serial


def test_tcp_socket_url(open_client: Opener) -> None:
    with serve_token(model="event", seed=SEED1, pty=False, tcp=("127.0.0.1", 0)) as running:
        assert running.url.startswith("socket://127.0.0.1:")
        a = open_client(running.url)
        b = open_client(running.url)  # two connections, one token
        assert a.press().code == HOTP[0]
        assert b.press().code == HOTP[1]
        import socket

        with socket.create_connection(("127.0.0.1", running.tcp.port)) as raw:  # type: ignore[union-attr]
            raw.sendall(os.urandom(2000))
        assert a.press().code == HOTP[2]


def test_paced_line_is_slower(tmp_path: Path, open_client: Opener) -> None:
    with serve_token(seed=SEED1, pty_link=tmp_path / "tok", baud=1200) as running:
        c = open_client(running.url)
        started = time.perf_counter()
        c.info()  # ~45-byte reply at 120 bytes/s
        assert time.perf_counter() - started > 0.2


# -- real processes ----------------------------------------------------------------------
def _start(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen([FOBLAB, "sim", "run", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"sim run failed: {err}")
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    proc.communicate(timeout=10)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_hung_up_pty_does_not_spin(tmp_path: Path, open_client: Opener) -> None:
    proc, ready = _start(["--seed-hex", SEED1.hex(), "--pty-link", str(tmp_path / "tok"),
                          "--state-dir", str(tmp_path / "state")])
    try:
        port = serial.serial_for_url(str(ready["port"]), timeout=2)
        from protocol.connection import pyserial_reader

        TokenClient(pyserial_reader(port), port.write).info()
        port.close()  # the last client hangs up
        time.sleep(0.2)
        before = _cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert _cpu_seconds(proc.pid) - before < 0.05
        assert open_client(str(ready["port"])).info()  # and it still answers
    finally:
        _stop(proc)
    assert not (tmp_path / "tok").exists()  # link removed on SIGTERM


def test_hotp_counter_never_goes_back_across_sigkill(tmp_path: Path) -> None:
    args = ["--model", "event", "--serial", "GAEV00000042", "--seed-hex", SEED1.hex(),
            "--pty-link", str(tmp_path / "tok"), "--state-dir", str(tmp_path / "state")]
    proc, ready = _start(args)
    from protocol.connection import pyserial_reader

    try:
        port = serial.serial_for_url(str(ready["port"]), timeout=2)
        c = TokenClient(pyserial_reader(port), port.write)
        assert [c.press().code for _ in range(4)] == HOTP[:4]
        port.close()
    finally:
        _stop(proc, signal.SIGKILL)
    proc, ready = _start(args)
    try:
        assert ready["restored"] is True
        port = serial.serial_for_url(str(ready["port"]), timeout=2)
        assert TokenClient(pyserial_reader(port), port.write).press().code == HOTP[4]
        port.close()
        # a second emulator of the same token is refused with a clear reason
        second = subprocess.run([FOBLAB, "sim", "run", *args],
                                capture_output=True, text=True, timeout=20)
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        _stop(proc)

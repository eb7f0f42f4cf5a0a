"""The RADIUS door of the real daemon (`foblab validator serve`, a real SQLite file) driven
by clients nobody here wrote: FreeRADIUS's radclient, and pam_radius_auth under pamtester
(through pam_wrapper, so the machine's /etc/pam.d is never read). Plus `foblab validator
radius test`, and a token on a PTY whose code goes over RADIUS.

The tokens are prepared in the database before the daemon starts (through the service,
with `now` passed in): HOTP tokens give as many fresh codes as a test wants without
waiting, and a TOTP token enabled "a year ago" makes a near miss possible now.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from validator.service import Validator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radius_helpers import (  # noqa: E402
    PAM_WRAPPER,
    Daemon,
    DropFirstReply,
    have_library,
    have_pam_module,
    hotp,
    init_dir,
    metric,
    need,
    need_binary,
    radclient,
    radius_address,
    start,
    totp_at,
    write_radius_config,
)

ROOT = Path(__file__).resolve().parents[2]
YEAR = 365 * 86_400.0
VPN_SECRET = "vpn-shared-secret"
PAM_SECRET = "pam-shared-secret"
KEYS = {user: (user * 20).encode()[:20] for user in
        ("alice", "bob", "erin", "pam", "cli")}
TOTP_KEY = b"abcdefghijabcdefghij"
CLIENTS = f"""
[[radius.clients]]
name = "vpn"
address = "127.0.0.1/32"
secret_file = "radius-vpn.secret"

[[radius.clients]]
name = "pamhost"
address = "127.0.0.2"
secret = "{PAM_SECRET}"
legacy = true
"""


class Home:
    def __init__(self, daemon: Daemon, radius: tuple[str, int]) -> None:
        self.daemon = daemon
        self.radius = radius
        self.counters = {user: 2 for user in KEYS}  # 0 and 1 enabled the token

    def next_code(self, user: str) -> str:
        code = hotp(KEYS[user], self.counters[user])
        self.counters[user] += 1
        return code

    def metrics(self) -> str:
        with self.daemon.client() as c:
            return c.get("/metrics").text

    def audit(self, user: str) -> list[dict[str, Any]]:
        with self.daemon.client() as c:
            return list(c.get("/v1/audit", params={"user": user}).json()["entries"])


def _prepare(home: Path) -> None:
    v = Validator.open(home / "validator.db", home / "seed.key")
    try:
        then = time.time() - YEAR
        for user, key in KEYS.items():
            serial = f"HOTP-{user}"
            v.register_token(serial, key, kind="hotp", now=then)
            v.enable(user, serial, hotp(key, 0), hotp(key, 1), now=then)
        v.register_token("TOTP-carol", TOTP_KEY, now=then - 60)
        step = int(then // 30)
        v.enable("carol", "TOTP-carol", totp_at(TOTP_KEY, step - 1), totp_at(TOTP_KEY, step),
                 now=then)
    finally:
        v.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    directory = tmp_path_factory.mktemp("radius") / "home"
    init_dir(directory)
    _prepare(directory)
    write_radius_config(directory, CLIENTS, {"radius-vpn.secret": VPN_SECRET.encode()})
    daemon = start(directory, "--radius", "127.0.0.1:0")
    try:
        yield Home(daemon, radius_address(daemon))
    finally:
        daemon.stop()


@pytest.fixture(autouse=True)
def _radclient() -> None:
    need_binary("radclient", "freeradius-utils")


def test_start_up_names_the_legacy_client(home: Home) -> None:
    text = "".join(home.daemon.lines)
    assert "radius client pamhost (127.0.0.2/32) is legacy" in text
    assert VPN_SECRET not in text and PAM_SECRET not in text


def test_accept_then_replay_then_wrong_code(home: Home) -> None:
    code = home.next_code("alice")
    answer = radclient(home.radius, VPN_SECRET, {"User-Name": "alice", "User-Password": code})
    assert answer.code == "Access-Accept", answer.output
    assert answer.message == "Accepted"
    assert "Message-Authenticator" in answer.output.split("Received", 1)[1]
    replay = radclient(home.radius, VPN_SECRET, {"User-Name": "alice", "User-Password": code})
    assert (replay.code, replay.message) == ("Access-Reject",
                                             "That code was used already; wait for the next one")
    wrong = radclient(home.radius, VPN_SECRET, {"User-Name": "alice",
                                               "User-Password": "000000"})
    assert (wrong.code, wrong.message) == ("Access-Reject", "Wrong user name or code")
    rows = [r for r in home.audit("alice") if r["action"] == "verify"]
    assert [(r["result"], r["reason"], r["via"], r["client"]) for r in rows][-3:] == [
        ("ok", "accepted", "radius", "vpn"), ("refused", "replayed", "radius", "vpn"),
        ("refused", "invalid_code", "radius", "vpn")]
    table = subprocess.run([sys.executable, "-m", "tools.cli", "validator", "audit", "--user",
                            "alice", "--action", "verify", "--dir", str(home.daemon.dir),
                            "--url", home.daemon.url], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[-1] == "VIA"
    assert table.stdout.splitlines()[-1].rstrip().endswith("radius:vpn")


def test_unknown_user_gets_the_wrong_code_words(home: Home) -> None:
    answer = radclient(home.radius, VPN_SECRET, {"User-Name": "nobody",
                                                "User-Password": "123456"})
    assert (answer.code, answer.message) == ("Access-Reject", "Wrong user name or code")


def test_locked_after_five_wrong_codes(home: Home) -> None:
    for _ in range(5):
        radclient(home.radius, VPN_SECRET, {"User-Name": "bob", "User-Password": "999999"})
    answer = radclient(home.radius, VPN_SECRET, {"User-Name": "bob",
                                                "User-Password": home.next_code("bob")})
    assert answer.code == "Access-Reject", answer.output
    assert (answer.message or "").startswith("Too many wrong codes; try again in ")


def test_no_message_authenticator_is_dropped_and_counted(home: Home) -> None:
    before = home.metrics()
    answer = radclient(home.radius, VPN_SECRET, {"User-Name": "alice",
                                                "User-Password": home.next_code("alice")},
                       message_authenticator=False, retries=1, timeout=0.5)
    assert answer.code is None, answer.output
    assert _count(home.metrics(), "no_message_authenticator") == \
        _count(before, "no_message_authenticator") + 1


def test_wrong_shared_secret_is_dropped_and_counted(home: Home) -> None:
    before = _count(home.metrics(), "bad_authenticator")
    answer = radclient(home.radius, "not-the-secret", {"User-Name": "alice",
                                                      "User-Password": "123456"},
                       retries=1, timeout=0.5)
    assert answer.code is None, answer.output
    assert _count(home.metrics(), "bad_authenticator") == before + 1


def _count(metrics: str, reason: str) -> int:
    assert f'foblab_radius_dropped_total{{reason="{reason}"}}' in metrics, metrics
    return int(metric(metrics, "foblab_radius_dropped_total", reason=reason))


def test_unknown_client_address_is_dropped_and_counted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_dir(home)
    write_radius_config(home, '[[radius.clients]]\nname = "elsewhere"\n'
                              'address = "192.0.2.0/24"\nsecret = "x"\n', {})
    daemon = start(home, "--radius", "127.0.0.1:0")
    try:
        answer = radclient(radius_address(daemon), "x", {"User-Name": "alice",
                                                         "User-Password": "123456"},
                           retries=1, timeout=0.5)
        assert answer.code is None, answer.output
        with daemon.client() as c:
            assert _count(c.get("/metrics").text, "unknown_client") == 1
    finally:
        daemon.stop()


def test_near_miss_challenge_then_next_code_resyncs(home: Home) -> None:
    center = int((time.time() - 2.5) // 30)
    # enabled a year ago: the sized window is ±4 steps, a near miss lies beyond it
    miss, following = totp_at(TOTP_KEY, center + 6), totp_at(TOTP_KEY, center + 7)
    first = radclient(home.radius, VPN_SECRET, {"User-Name": "carol", "User-Password": miss})
    assert first.code == "Access-Challenge", first.output
    assert first.message == "Enter the next code from your token"
    assert first.state is not None and len(first.state) == 32
    second = radclient(home.radius, VPN_SECRET, {"User-Name": "carol",
                                                "User-Password": following,
                                                "State": f"0x{first.state}"})
    assert (second.code, second.message) == ("Access-Accept", "Accepted"), second.output
    resyncs = [r for r in home.audit("carol") if r["action"] == "resync"]
    assert [(r["result"], r["via"], r["client"]) for r in resyncs] == [("ok", "radius", "vpn")]
    again = radclient(home.radius, VPN_SECRET, {"User-Name": "carol",
                                               "User-Password": following,
                                               "State": f"0x{first.state}"})
    assert again.code == "Access-Reject"


def test_a_retransmitted_request_gets_the_same_answer_once(home: Home) -> None:
    relay = DropFirstReply(home.radius)
    try:
        answer = radclient(relay.address, VPN_SECRET,
                           {"User-Name": "erin", "User-Password": home.next_code("erin")},
                           retries=3, timeout=0.7)
    finally:
        relay.close()
    assert relay.requests >= 2 and relay.dropped == 1
    assert (answer.code, answer.message) == ("Access-Accept", "Accepted"), answer.output
    verifies = [r for r in home.audit("erin") if r["action"] == "verify"]
    assert [(r["result"], r["reason"]) for r in verifies] == [("ok", "accepted")]
    assert "foblab_radius_duplicates_total 0" not in home.metrics()


def test_foblab_radius_test_command(home: Home, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(VPN_SECRET + "\n")
    server = f"{home.radius[0]}:{home.radius[1]}"

    def run(code: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tools.cli", "validator", "radius", "test",
                               "cli", code, "--server", server, "--secret-file", str(secret),
                               *extra], capture_output=True, text=True, cwd=ROOT, timeout=60)

    code = home.next_code("cli")
    ok = run(code, "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"code": "Access-Accept"' in ok.stdout
    again = run(code)
    assert again.returncode == 1
    assert again.stdout.strip() == ("Received Access-Reject: That code was used already; "
                                    "wait for the next one")
    secret.write_text("wrong\n")
    lost = run(home.next_code("cli"), "--timeout", "0.3", "--retries", "1")
    assert lost.returncode == 1
    assert lost.stderr.startswith("foblab: error: no valid answer")


# -- PAM ------------------------------------------------------------------------------------

@pytest.fixture
def pam(home: Home, tmp_path: Path) -> Any:
    return _pam_login(home.radius, tmp_path)


def _pam_login(radius: tuple[str, int], tmp_path: Path) -> Any:
    """`login(user, code)`: pamtester through pam_radius_auth to the door at `radius`."""
    need_binary("pamtester", "pamtester")
    need("pam_radius_auth.so (libpam-radius-auth)", have_pam_module("pam_radius_auth.so"))
    need(f"{PAM_WRAPPER} (libpam-wrapper)", have_library(PAM_WRAPPER))
    conf = tmp_path / "pam_radius_auth.conf"
    # server[:port] secret timeout source_ip: the PAM host is 127.0.0.2, a legacy client
    conf.write_text(f"{radius[0]}:{radius[1]} {PAM_SECRET} 3 127.0.0.2\n")
    conf.chmod(0o600)
    services = tmp_path / "pam.d"
    services.mkdir()
    (services / "foblab").write_text(f"auth required pam_radius_auth.so conf={conf}\n"
                                     "account required pam_permit.so\n")
    env = {**os.environ, "LD_PRELOAD": PAM_WRAPPER, "PAM_WRAPPER": "1",
           "PAM_WRAPPER_SERVICE_DIR": str(services)}

    def login(user: str, code: str) -> bool:
        out = subprocess.run(["pamtester", "foblab", user, "authenticate"], input=code + "\n",
                             capture_output=True, text=True, env=env, timeout=60)
        return out.returncode == 0 and "successfully authenticated" in out.stdout + out.stderr

    return login


def test_pam_right_wrong_and_replayed_code(home: Home, pam: Any) -> None:
    code = home.next_code("pam")
    assert pam("pam", code) is True
    assert pam("pam", code) is False  # replayed
    assert pam("pam", "000000") is False
    rows = [r for r in home.audit("pam") if r["action"] == "verify"]
    assert [(r["result"], r["reason"], r["client"]) for r in rows][-3:] == [
        ("ok", "accepted", "pamhost"), ("refused", "replayed", "pamhost"),
        ("refused", "invalid_code", "pamhost")]


# -- a token on a PTY, over RADIUS ----------------------------------------------------------

def test_emulated_token_code_over_serial_then_radius(home: Home, tmp_path: Path) -> None:
    """A key fob on a PTY: its codes read over serial enable it, and the next code it shows
    goes through RADIUS (a real UDP exchange with the daemon) and is accepted."""
    import json

    from daemon_helpers import Port  # type: ignore[import-not-found]

    from firmware_sim.background import serve_fleet
    from tools.radius_cmd import exchange

    with serve_fleet(directory=tmp_path / "fleet", count=1, qa=True, seed=13) as fleet:
        manifest = json.loads(Path(fleet.manifest_path).read_text())
        serial, = manifest["tokens"]
        daemon = home.daemon
        port = Port(manifest["tokens"][serial]["port"])
        try:
            with daemon.client() as c:
                r = c.post("/v1/tokens/import", json={
                    "format": "pskc", "content": Path(manifest["seed_file"]).read_text()})
                assert r.status_code == 200, r.text
                code1, code2 = port.two_codes()
                r = c.post("/v1/users/dora/devices", json={"serial": serial, "code1": code1,
                                                           "code2": code2})
                assert r.status_code == 201, r.text
            code = port.next_code()
            answer = exchange(radius_address(daemon), "dora", code, VPN_SECRET.encode())
            assert (answer.code, answer.message) == ("Access-Accept", "Accepted")
            again = exchange(radius_address(daemon), "dora", code, VPN_SECRET.encode())
            assert again.code == "Access-Reject"
        finally:
            port.close()


# -- several workers ------------------------------------------------------------------------

def _holders(port: int, pids: list[int]) -> list[int]:
    """Those of `pids` with the UDP socket bound to `port` open."""
    inodes = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    held = []
    for pid in pids:
        try:
            fds = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # it ended meanwhile
            continue
        if inodes & set(fds):
            held.append(pid)
    return held


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_answer_radius_in_one_of_them(tmp_path: Path) -> None:
    """`serve --workers 2` with [radius]: worker 0 answers RADIUS, HTTP goes to both, and
    the database is shared, so a code used through one door is refused through the other.
    A challenge's answer comes from another source port (each radclient is a new socket)
    and still finds the challenge; a retransmission gets its first answer; when worker 0
    dies, its replacement answers on the same port."""
    import signal

    directory = tmp_path / "home"
    init_dir(directory)
    _prepare(directory)
    write_radius_config(directory, CLIENTS, {"radius-vpn.secret": VPN_SECRET.encode()})
    daemon = start(directory, "--radius", "127.0.0.1:0", "--workers", "2")
    try:
        door = radius_address(daemon)
        workers = _children(daemon.proc.pid)
        assert len(workers) == 2
        first, = _holders(door[1], workers)  # one worker holds the socket (and the parent)
        assert _holders(door[1], [daemon.proc.pid]) == [daemon.proc.pid]
        counters = {"alice": 2, "bob": 2, "erin": 2, "pam": 2}

        def code(user: str) -> str:
            counters[user] += 1
            return hotp(KEYS[user], counters[user] - 1)

        def ask(user: str, password: str, **attributes: str) -> tuple[str | None, str | None]:
            a = radclient(door, VPN_SECRET, {"User-Name": user, "User-Password": password,
                                             **attributes})
            return a.code, a.message

        accepted = ("Access-Accept", "Accepted")
        replayed = ("Access-Reject",
                    "That code was used already; wait for the next one")
        c = code("alice")
        assert ask("alice", c) == accepted
        assert ask("alice", c) == replayed
        # HTTP, whichever worker answers, and RADIUS share one replay protection
        used = code("bob")
        with daemon.client("verifier") as http:
            for _ in range(4):  # new connections: the kernel spreads them over the workers
                r = http.post("/v1/verify", json={"user": "bob", "code": code("bob")},
                              headers={"Connection": "close"})
                assert r.status_code == 200 and r.json()["ok"], r.text
            r = http.post("/v1/verify", json={"user": "bob", "code": used})
            assert r.json()["reason"] == "replayed"  # older than the last accepted code
        assert ask("bob", used) == replayed
        # a challenge and its answer, from two source ports
        center = int((time.time() - 2.5) // 30)
        miss, following = totp_at(TOTP_KEY, center + 6), totp_at(TOTP_KEY, center + 7)
        challenge = radclient(door, VPN_SECRET, {"User-Name": "carol", "User-Password": miss})
        assert challenge.code == "Access-Challenge", challenge.output
        assert ask("carol", following, State=f"0x{challenge.state}") == accepted
        # a retransmission: one verification, the same answer
        relay = DropFirstReply(door)
        try:
            again = radclient(relay.address, VPN_SECRET,
                              {"User-Name": "erin", "User-Password": code("erin")},
                              retries=3, timeout=0.7)
        finally:
            relay.close()
        assert relay.dropped == 1 and (again.code, again.message) == accepted, again.output
        with daemon.client() as http:
            rows = http.get("/v1/audit", params={"user": "erin"}).json()["entries"]
        assert [r["result"] for r in rows if r["action"] == "verify"] == ["ok"]
        # worker 0 dies: its replacement answers on the same port
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            others = [p for p in _children(daemon.proc.pid) if p != first]
            held = _holders(door[1], others)
            if len(others) == 2 and held:
                break
            assert time.monotonic() < deadline, "worker 0 was not replaced"
            time.sleep(0.1)
        assert held != [first] and len(held) == 1
        late = code("alice")
        deadline = time.monotonic() + 30
        while (answer := ask("alice", late))[0] is None:  # until the replacement listens
            assert time.monotonic() < deadline, "no answer after the replacement"
        assert answer == accepted
        login = _pam_login(door, tmp_path)
        assert login("pam", code("pam")) is True
        workers = _children(daemon.proc.pid)
        assert daemon.stop(signal.SIGTERM) == 0, "".join(daemon.lines[-20:])
        assert not any(Path(f"/proc/{p}").exists() and
                       Path(f"/proc/{p}/stat").read_text().split()[2] != "Z" for p in workers)
    finally:
        daemon.stop()

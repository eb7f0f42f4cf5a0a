"""Named API keys and reload: `api-keys create/list/revoke` on the folder, SIGHUP and
POST /v1/admin/reload apply them (and [policy]) to a running daemon without dropping a
connection; every request is logged by its key's name, never by the key."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pyotp
from click.testing import CliRunner

from tools.cli import main
from validator.daemon import init_dir as make_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import (  # noqa: E402
    PYTHON,
    ROOT,
    Daemon,
    init_dir,
    set_config,
    wait_for_lines,
)

B32 = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`foblab validator ARGS` in a process of its own (the real command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOBLAB_")}
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    """The same in this process (click's runner), for the commands that only touch files:
    no interpreter start-up per call."""
    result = CliRunner().invoke(main, ["validator", *args], env={
        k: None for k in os.environ if k.startswith("FOBLAB_")})
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def status_with(d: Daemon, key: str, method: str = "GET", path: str = "/v1/tokens") -> int:
    with d.client(key) as http:
        return http.request(method, path).status_code


class KeepAlive:
    """One HTTP/1.1 connection, kept open across requests (uvicorn closes one idle for 5 s,
    so each use follows the last closely)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.file = self.sock.makefile("rb")

    def get(self, path: str, method: str = "GET", key: str | None = None) -> int:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}"
                          "Content-Length: 0\r\n\r\n".encode())
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.file.read(length)
        return status

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_named_keys_reload_by_sighup_and_by_api(tmp_path: Path, spawn: Any) -> None:
    folder = tmp_path / "v"
    admin, verifier = init_dir(folder)
    keys_file = folder / "api-keys.toml"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    listed = offline("api-keys", "list", "--dir", str(folder), "--json")
    assert [(k["name"], k["role"]) for k in json.loads(listed.stdout)["keys"]] == [
        ("admin", "admin"), ("verifier", "verifier")]
    d = spawn(folder)
    conn = KeepAlive(d.url)
    assert conn.get("/healthz") == 200

    made = offline("api-keys", "create", "radius-gw", "--role", "verifier", "--dir",
                   str(folder))
    assert made.returncode == 0, made.stderr
    gw = made.stdout.strip()
    assert gw.startswith("flv_") and "not shown again" in made.stderr
    assert gw not in keys_file.read_text()  # only its digest is kept
    assert status_with(d, gw) == 401  # not before a reload

    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_lines(d, "reloaded", mark)
    assert status_with(d, gw) == 403  # known now, and a verifier may not list tokens
    assert status_with(d, gw, "POST", "/v1/verify") == 400  # ...but may verify (no body)
    assert conn.get("/healthz") == 200  # the same connection, still open

    # the reload endpoint: admin only; revoking takes effect on it
    assert status_with(d, verifier, "POST", "/v1/admin/reload") == 403
    revoked = offline("api-keys", "revoke", "radius-gw", "--dir", str(folder))
    assert revoked.returncode == 0, revoked.stderr
    out = cli("reload", "--url", d.url, "--key", admin, "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert [k["name"] for k in body["api_keys"]] == ["admin", "verifier"]
    assert body["applied"] == [] and body["restart_needed"] == []
    assert status_with(d, gw) == 401
    conn.close()
    conn = KeepAlive(d.url)  # a reload over a connection, and more on the same one
    assert conn.get("/healthz") == 200
    assert conn.get("/v1/admin/reload", "POST", admin) == 200
    assert conn.get("/v1/tokens", key=admin) == 200

    # [policy] applies at once; a new body limit needs a restart, and says so
    set_config(folder, "policy", max_devices=1)
    set_config(folder, max_body_bytes=32768)
    with d.client("admin") as http:
        r = http.post("/v1/admin/reload")
        assert r.status_code == 200, r.text
        assert r.json()["applied"] == ["policy"]
        assert r.json()["restart_needed"] == ["max_body_bytes"]
        hotp = pyotp.HOTP(B32)
        answers = []
        for serial in ("A1", "A2"):
            assert http.post("/v1/tokens", json={"serial": serial, "secret_b32": B32,
                                                 "kind": "hotp"}).status_code == 201
            answers.append(http.post("/v1/users/ann/devices", json={
                "serial": serial, "code1": hotp.at(0), "code2": hotp.at(1)}))
        assert answers[0].status_code == 201, answers[0].text
        assert answers[1].json()["error"] == "device_limit"  # max_devices = 1 now

    # a broken keys file changes nothing: the old keys go on working
    good = keys_file.read_text()
    keys_file.write_text("[[key]]\nname = 'x'\n")
    with d.client("admin") as http:
        r = http.post("/v1/admin/reload")
    assert r.status_code == 409 and r.json()["error"] == "reload_failed"
    assert "nothing changed" in r.json()["message"]
    assert status_with(d, admin) == 200 and status_with(d, verifier) == 403
    keys_file.write_text(good)

    conn.close()
    assert d.stop() == 0
    log = "".join(d.lines)
    for secret in (admin, verifier, gw):
        assert secret not in log
    access = [json.loads(line) for line in d.lines if line.startswith("{")]
    assert {"radius-gw", "admin", "verifier"} <= {a.get("key") for a in access}
    assert any(a.get("key") == "radius-gw" and a["route"] == "/v1/verify" for a in access)


def test_an_old_folder_gets_its_keys_file(tmp_path: Path, spawn: Any) -> None:
    """A folder made before named keys: no keys file and no api_keys_file in the config."""
    folder = tmp_path / "v"
    admin, verifier = init_dir(folder)
    (folder / "api-keys.toml").unlink()
    doc = tomllib.loads((folder / "foblab.toml").read_text())
    del doc["validator"]["api_keys_file"]
    import tomli_w
    (folder / "foblab.toml").write_text(tomli_w.dumps(doc))

    d = spawn(folder)
    assert (folder / "api-keys.toml").exists()
    assert stat.S_IMODE((folder / "api-keys.toml").stat().st_mode) == 0o600
    assert status_with(d, admin) == 200 and status_with(d, verifier) == 403
    listed = json.loads(offline("api-keys", "list", "--dir", str(folder), "--json").stdout)
    assert [(k["name"], k["role"]) for k in listed["keys"]] == [
        ("admin", "admin"), ("verifier", "verifier")]


def test_api_keys_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "v"
    make_dir(folder)
    for args, words in [
        (["create", "bad name", "--role", "admin"], "a key name must be"),
        (["create", "admin", "--role", "admin"], "there is a key named 'admin' already"),
        (["revoke", "nobody"], "no key named 'nobody'"),
        (["revoke", "admin"], "the last admin key"),
    ]:
        out = offline("api-keys", *args, "--dir", str(folder))
        assert out.returncode == 1 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    # with a second admin key, the first may go
    assert offline("api-keys", "create", "ops", "--role", "admin", "--dir", str(folder)
               ).returncode == 0
    assert offline("api-keys", "revoke", "admin", "--dir", str(folder)).returncode == 0
    (folder / "api-keys.toml").chmod(0o644)
    out = offline("api-keys", "list", "--dir", str(folder))
    assert out.returncode == 1 and "readable by others" in out.stderr


def test_trusted_proxies_change_on_reload(tmp_path: Path, spawn: Any) -> None:
    """A load balancer added to `trusted_proxies` counts from the reload on, as nginx's
    `set_real_ip_from` does after `nginx -s reload`: its X-Forwarded-For is the client in
    the access log and its X-Request-Id is kept; taken out again, neither is."""
    folder = tmp_path / "v"
    admin, _ = init_dir(folder)
    d = spawn(folder)
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Request-Id": "lb-7f3a"}

    def through_the_balancer() -> tuple[str, str]:
        """(the request id answered, the access log's remote_addr for it)"""
        mark = len(d.lines)
        with d.client(None) as http:
            answered = http.get("/healthz", headers=forwarded).headers["x-request-id"]
        line, = wait_for_lines(d, f'"request_id":"{answered}"', mark)
        return answered, json.loads(line)["remote_addr"]

    assert through_the_balancer()[1] == "127.0.0.1"
    assert through_the_balancer()[0] != "lb-7f3a"

    def reload_with(proxies: list[str]) -> dict[str, Any]:
        set_config(folder, trusted_proxies=proxies)
        out = cli("reload", "--url", d.url, "--key", admin, "--json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    answer = reload_with(["127.0.0.0/8"])
    assert answer["applied"] == ["trusted_proxies"] and answer["restart_needed"] == []
    assert through_the_balancer() == ("lb-7f3a", "203.0.113.9")
    assert reload_with([])["applied"] == ["trusted_proxies"]
    answered, peer = through_the_balancer()
    assert answered != "lb-7f3a" and peer == "127.0.0.1"

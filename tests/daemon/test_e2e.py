"""End to end: init, serve, import a fleet's PSKC file, enable with codes read over serial,
verify, replay, resync, deactivate; enrollment stations, blank-token provisioning included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import PYTHON, ROOT, Daemon, Port  # noqa: E402


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    # --url wins over the URL in the folder's config (the daemon listens on port 0);
    # the admin key comes from the folder.
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", *args, "--dir",
                           str(daemon.dir), "--url", daemon.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_fleet_import_enable_verify_replay_resync_deactivate(daemon: Daemon, fleet: Any) -> None:
    manifest = json.loads(Path(fleet.manifest_path).read_text())
    serials = sorted(manifest["tokens"])
    with daemon.client() as http:
        content = Path(manifest["seed_file"]).read_text()
        r = http.post("/v1/tokens/import", json={"format": "pskc", "content": content})
        assert r.status_code == 200, r.text
        assert r.json()["imported"] == 3 and sorted(r.json()["serials"]) == serials
        again = http.post("/v1/tokens/import", json={"format": "pskc", "content": content})
        assert again.status_code == 409 and again.json()["error"] == "duplicate_serial"
        listed = http.get("/v1/tokens", params={"unassigned": "true", "limit": 1000}).json()
        assert set(serials) <= {t["serial"] for t in listed["tokens"]}
        assert all("secret" not in json.dumps(t) for t in listed["tokens"])

        serial_no = serials[0]
        port = Port(manifest["tokens"][serial_no]["port"])
        try:
            c1, c2 = port.two_codes()
            r = http.post("/v1/users/erin/devices",
                          json={"serial": serial_no, "code1": c1, "code2": "000000"
                                if c2 != "000000" else "111111"})
            assert r.status_code == 400 and r.json()["error"] == "invalid_authentication_code"
            r = http.post("/v1/users/erin/devices",
                          json={"serial": serial_no, "code1": c1, "code2": c2})
            assert r.status_code == 201, r.text
            assert r.json()["user"] == "erin"
            r = http.post("/v1/users/frank/devices",
                          json={"serial": serial_no, "code1": c1, "code2": c2})
            assert r.status_code == 409

            with daemon.client("verifier") as verifier:
                code = port.next_code()
                ok = verifier.post("/v1/verify", json={"user": "erin", "code": code}).json()
                assert ok == {"ok": True, "reason": "accepted", "user": "erin",
                              "serial": serial_no}
                replay = verifier.post("/v1/verify", json={"user": "erin", "code": code}).json()
                assert replay["ok"] is False and replay["reason"] == "replayed"

                port.jump(900)  # the token's clock jumps a quarter hour: out of the window
                far = port.client.press().code
                refused = verifier.post("/v1/verify", json={"user": "erin", "code": far}).json()
                assert refused["reason"] == "invalid_code"
                c1, c2 = port.two_codes()
                r = verifier.post(f"/v1/users/erin/devices/{serial_no}/resync",
                                  json={"code1": c1, "code2": c2})
                assert r.status_code == 200, r.text
                assert r.json()["drift"]["offset_seconds"] > 800
                after = port.next_code()
                assert verifier.post("/v1/verify", json={"user": "erin", "code": after}
                                     ).json()["ok"] is True
        finally:
            port.close()

        shown = cli(daemon, "device", "list", "erin", "--json")
        assert shown.returncode == 0, shown.stderr
        assert [d["serial"] for d in json.loads(shown.stdout)["devices"]] == [serial_no]
        table = cli(daemon, "token", "list")
        assert table.returncode == 0 and serial_no in table.stdout and "SERIAL" in table.stdout

        assert http.delete(f"/v1/users/erin/devices/{serial_no}").status_code == 204
        gone = http.post("/v1/verify", json={"user": "erin", "code": "123456"}).json()
        assert gone["reason"] == "no_device"
        assert http.delete(f"/v1/users/erin/devices/{serial_no}").status_code == 404
        audit = http.get("/v1/audit", params={"serial": serial_no, "limit": 1000}).json()
        actions = [e["action"] for e in audit["entries"]]
        for expected in ("import", "enable", "verify", "resync", "deactivate"):
            assert expected in actions


def test_cli_verify_and_errors(daemon: Daemon) -> None:
    r = cli(daemon, "verify", "nobody", "123456")
    assert r.returncode == 1 and "refused: no_device" in r.stderr
    r = cli(daemon, "token", "show", "NOSUCH-1")
    assert r.returncode == 1
    assert r.stderr.startswith("foblab: error:") and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([PYTHON, "-m", "tools.cli", "validator", "token", "list", "--url",
                        daemon.url, "--key", "wrong-key-wrong-key-wrong"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "HTTP 401" in r.stderr
    r = subprocess.run([PYTHON, "-m", "tools.cli", "validator", "token", "list", "--url",
                        "http://a:b:c", "--key", "k"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("foblab: error: bad URL") and len(r.stderr.splitlines()) == 1


def test_station_provisions_a_blank_token(daemon: Daemon, blank_token: Any) -> None:
    with daemon.client() as http:
        info = http.get("/v1/stations/bench").json()
        assert info["token"]["provisioned"] is False
        r = http.post("/v1/stations/bench/enroll", json={"user": "gina"})
        assert r.status_code == 409 and r.json()["error"] == "token_blank"
        assert "bench" in r.json()["message"]
        port = Port(blank_token.url)
        port.near_boundary(lead=0.7)  # so the station's wait for the next step is short
        port.close()
        r = http.post("/v1/stations/bench/enroll", json={"user": "gina", "provision": True})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["provisioned"] is True and body["token"]["user"] == "gina"
        serial_no = body["serial"]
        assert serial_no == "GAHT90000001"
        assert blank_token.token.state.seed is not None
        assert len(blank_token.token.state.seed) == 20  # SHA-1 wants 20 bytes
        port = Port(blank_token.url)
        try:
            code = port.next_code()
        finally:
            port.close()
        ok = http.post("/v1/verify", json={"user": "gina", "code": code}).json()
        assert ok["ok"] is True and ok["serial"] == serial_no
        r = http.post("/v1/stations/bench/enroll", json={"user": "hank"})
        assert r.status_code == 409  # already assigned to gina


def test_station_failures_name_the_station_and_leave_nothing(daemon: Daemon) -> None:
    with daemon.client() as http:
        before = http.get("/v1/tokens", params={"limit": 1000}).json()["tokens"]
        cases = {"silent": (504, "token_timeout"), "garbage": (502, "token_garbage"),
                 "nowhere": (503, "station_unavailable")}
        for name, (status, code) in cases.items():
            for method, path, body in (("GET", f"/v1/stations/{name}", None),
                                       ("POST", f"/v1/stations/{name}/enroll",
                                        {"user": "ivan", "provision": True})):
                r = http.request(method, path, json=body)
                assert (r.status_code, r.json()["error"]) == (status, code), (name, r.text)
                assert repr(name) in r.json()["message"]
        r = http.get("/v1/stations/unconfigured")
        assert r.status_code == 404 and r.json()["error"] == "unknown_station"
        after = http.get("/v1/tokens", params={"limit": 1000}).json()["tokens"]
        assert after == before
        names = {s["name"] for s in http.get("/v1/stations").json()["stations"]}
        assert names == {"bench", "silent", "garbage", "nowhere"}

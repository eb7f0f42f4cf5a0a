"""The JSON API's request decoding and handlers, through a real uvicorn on a loopback port
in this process (so mutation testing sees them; tests/daemon/test_api.py drives the same
API in a `foblab validator serve` subprocess): every answer's exact shape, every refusal's
code and text."""

from __future__ import annotations

import base64
import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pyotp
import pytest
from daemon_helpers import InProcessServer, enable_pair, metric

from firmware_sim.background import serve_token
from firmware_sim.runner import wall_ms
from validator import config
from validator.apikeys import KeyRing, Role, digest
from validator.app import create_app
from validator.http.decoding import Api, _path_checks
from validator.service import Validator
from validator.station import Station

ADMIN, VERIFIER = "a" * 24, "v" * 24
SECRET = bytes(range(20))
B32 = base64.b32encode(SECRET).decode()
TOKEN_KEYS = {"serial", "kind", "hash", "digits", "user", "assigned_at", "created",
              "failures", "locked_until", "last_accepted", "expires"}
TOTP_KEYS = TOKEN_KEYS | {"period", "t0", "window", "drift", "last_used"}
MAX_BODY = 2048


class Server(InProcessServer):
    def __init__(self, folder: Path, *, ports: dict[str, str] | None = None,
                 reload: Callable[[], dict[str, Any]] | None = None) -> None:
        settings = config.parse({}, folder).replace(aws={}, ui=False, max_body_bytes=MAX_BODY)
        self.validator = Validator.open(settings.database)
        keys = KeyRing({Role.ADMIN: digest(ADMIN.encode()),
                        Role.VERIFIER: digest(VERIFIER.encode())})
        ports = {"nowhere": "/nonexistent/ttyUSB9", **(ports or {})}
        stations = {name: Station(name, url, timeout=0.5) for name, url in ports.items()}
        super().__init__(create_app(self.validator, keys, settings, stations=stations,
                                    reload=reload))

    def client(self, key: str | None = ADMIN) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=10)

    def stop(self) -> None:
        super().stop()
        self.validator.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # One per test: what the app's construction does is then part of every test's run
    # (mutation testing runs, for a mutant, only the tests that reached the mutated code).
    s = Server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def error(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, body["error"], body["message"]


def enabled(admin: httpx.Client, serial: str, user: str) -> pyotp.TOTP:
    return enable_pair(admin, serial, user, B32)


# -- handlers ------------------------------------------------------------------------------

def test_create_and_show_a_totp_token(admin: httpx.Client) -> None:
    before = time.time()
    # base32 in lower case without its padding is the same secret
    r = admin.post("/v1/tokens", json={"serial": "IP-T1", "secret_b32": B32.lower().rstrip("=")})
    assert r.status_code == 201, r.text
    token = r.json()
    assert set(token) == TOTP_KEYS
    assert before - 1 <= token.pop("created") <= time.time() + 1
    assert token == {"serial": "IP-T1", "kind": "totp", "hash": "sha1", "digits": 6,
                     "user": None, "assigned_at": None, "failures": 0, "locked_until": None,
                     "last_accepted": None, "expires": None, "period": 30, "t0": 0,
                     "window": None, "drift": {"offset_seconds": 0.0, "rate_ppm": 0.0},
                     "last_used": None}
    shown = admin.get("/v1/tokens/IP-T1").json()
    assert shown == {**token, "created": shown["created"]}


def test_create_a_hotp_token(admin: httpx.Client) -> None:
    r = admin.post("/v1/tokens", json={"serial": "IP-H1", "secret_hex": SECRET.hex(),
                                       "kind": "hotp", "digits": 8, "hash": "sha256",
                                       "counter": 5})
    assert r.status_code == 201, r.text
    token = r.json()
    assert set(token) == TOKEN_KEYS | {"next_counter"}
    assert (token["kind"], token["hash"], token["digits"], token["next_counter"]) == (
        "hotp", "sha256", 8, 5)
    r = admin.post("/v1/tokens", json={"serial": "IP-T2", "secret_hex": SECRET.hex(),
                                       "period": 60, "t0": 30})
    assert (r.json()["period"], r.json()["t0"], r.json()["kind"]) == (60, 30, "totp")


@pytest.mark.parametrize("body,answer", [
    ({"secret_b32": B32, "secret_hex": SECRET.hex()},
     ("invalid_request", "give exactly one of secret_b32 and secret_hex")),
    ({}, ("invalid_request", "give exactly one of secret_b32 and secret_hex")),
    ({"secret_b32": "A" * 17}, ("bad_secret", "secret_b32 is not valid base32")),
    ({"secret_hex": "0" * 21}, ("bad_secret", "secret_hex is not valid hex")),
    ({"secret_hex": SECRET.hex(), "counter": 1},
     ("invalid_request", "counter is for HOTP tokens")),
    ({"secret_hex": SECRET.hex(), "kind": "hotp", "period": 30},
     ("invalid_request", "period and t0 are for TOTP tokens")),
    ({"secret_hex": SECRET.hex(), "kind": "hotp", "t0": 30},
     ("invalid_request", "period and t0 are for TOTP tokens")),
])
def test_create_refusals(admin: httpx.Client, body: dict[str, Any],
                         answer: tuple[str, str]) -> None:
    r = admin.post("/v1/tokens", json={"serial": "IP-BAD", **body})
    assert error(r) == (400, *answer)
    assert admin.get("/v1/tokens/IP-BAD").status_code == 404


def test_a_device_from_enable_to_deactivate(server: Server, admin: httpx.Client) -> None:
    totp = enabled(admin, "IP-D1", "dora")
    devices = admin.get("/v1/users/dora/devices").json()
    assert devices["user"] == "dora" and [d["serial"] for d in devices["devices"]] == ["IP-D1"]
    device = devices["devices"][0]
    assert device["user"] == "dora" and device["last_accepted"] is not None
    # when the last accepted step began on the token: t0 0, by the estimated offset
    assert device["last_used"] == pytest.approx(
        device["last_accepted"] * 30 - device["drift"]["offset_seconds"], abs=0.002)
    with server.client(VERIFIER) as verifier:
        code = totp.at(time.time() + 30)
        r = verifier.post("/v1/verify", json={"user": "dora", "code": code})
        assert r.json() == {"ok": True, "reason": "accepted", "user": "dora",
                            "serial": "IP-D1"}
        r = verifier.post("/v1/verify", json={"user": "dora", "code": code, "serial": "IP-D1"})
        assert r.json()["ok"] is False and "retry_after" not in r.json()
        now = time.time()
        r = verifier.post("/v1/users/dora/devices/IP-D1/resync", json={
            "code1": totp.at(now + 60), "code2": totp.at(now + 90)})
        body = r.json()
        assert r.status_code == 200, r.text
        assert (body["ok"], body["serial"], body["user"]) == (True, "IP-D1", "dora")
        assert body["drift"] == body["token"]["drift"] and set(body["token"]) == TOTP_KEYS
    assert admin.delete("/v1/users/dora/devices/IP-D1").status_code == 204
    assert admin.get("/v1/users/dora/devices").json() == {"user": "dora", "devices": []}


def outcomes(caplog: pytest.LogCaptureFixture, path: str) -> list[str | None]:
    """The access log's `outcome` of each request to `path`, in order."""
    fields = [getattr(rec, "fields", {}) for rec in caplog.records
              if rec.name == "foblab.access"]
    return [f.get("outcome") for f in fields if f.get("path") == path]


def test_verifications_are_counted_and_logged_by_outcome(
        server: Server, admin: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="foblab.access"):
        totp = enabled(admin, "IP-M1", "mia")
        good = totp.at(time.time() + 30)
        with server.client(VERIFIER) as verifier:
            assert verifier.post("/v1/verify", json={"user": "mia", "code": good}
                                 ).json()["ok"] is True
            assert verifier.post("/v1/verify", json={"user": "mia", "code": good}
                                 ).json()["reason"] == "replayed"
            now = time.time()
            assert verifier.post("/v1/users/mia/devices/IP-M1/resync", json={
                "code1": totp.at(now + 90), "code2": totp.at(now + 120)}).status_code == 200
        text = admin.get("/metrics").text
    assert outcomes(caplog, "/v1/users/mia/devices") == ["enabled"]
    assert outcomes(caplog, "/v1/verify") == ["accepted", "replayed"]
    # who called: the key's role and name (one key per role here, named after it)
    who = {(f["role"], f["key"]) for rec in caplog.records
           if (f := getattr(rec, "fields", {})).get("path", "").startswith("/v1/")}
    assert who == {("admin", "admin"), ("verifier", "verifier")}
    assert outcomes(caplog, "/v1/users/mia/devices/IP-M1/resync") == ["resynced"]
    assert metric(text, "foblab_verify_total", reason="accepted") == 1
    assert metric(text, "foblab_verify_total", reason="replayed") == 1
    # the accepted code's guessing surface went into the window histogram
    assert metric(text, "foblab_verify_window_steps_count") >= 1


def test_the_drift_and_last_use_of_a_token_with_its_own_t0(admin: httpx.Client) -> None:
    t0 = 1_000_000_007
    assert admin.post("/v1/tokens", json={"serial": "IP-Z1", "secret_b32": B32, "t0": t0,
                                          "period": 60}).status_code == 201
    totp = pyotp.TOTP(B32, interval=60)  # pyotp counts steps from 0: step n at n * 60
    # the token runs 1,000.5 seconds (16 to 17 steps) ahead of the daemon's clock
    step = int((time.time() + 1000.5 - t0) // 60)
    pair = [totp.at((step - 1) * 60), totp.at(step * 60)]
    r = admin.post("/v1/users/zoe/devices", json={"serial": "IP-Z1", "code1": pair[0],
                                                  "code2": pair[1]})
    assert r.status_code == 201, r.text
    token = r.json()
    offset = token["drift"]["offset_seconds"]
    assert offset == round(offset, 3) and 900 < offset < 1100
    assert token["last_used"] == round(t0 + token["last_accepted"] * 60 - offset, 3)
    assert abs(token["last_used"] - time.time()) < 120


def test_a_token_with_its_own_window_and_a_learnt_rate(server: Server,
                                                      admin: httpx.Client) -> None:
    # Through the service, with its clock passed in: enabled 40 days ago, then a code one
    # step ahead today, which teaches a rate (some 10 ppm, unrounded).
    v, totp, now = server.validator, pyotp.TOTP(B32), time.time()
    then = now - 40 * 86400 - now % 30 + 15
    v.register_token("IP-W1", SECRET, window=3, now=then - 100)
    v.enable("wes", "IP-W1", totp.at(then - 30), totp.at(then), now=then)
    today = now - now % 30 - 45
    assert v.verify("wes", totp.at(today + 30), now=today).accepted
    learnt = v.get_token("IP-W1")
    token = admin.get("/v1/tokens/IP-W1").json()
    assert token["window"] == 3
    assert token["drift"] == {"offset_seconds": round(learnt.offset_seconds, 3),
                              "rate_ppm": round(learnt.rate_ppm, 3)}
    assert 1 < token["drift"]["rate_ppm"] != round(token["drift"]["rate_ppm"])


def test_a_locked_token_says_when_to_retry_and_unlock_clears_it(
        server: Server, admin: httpx.Client) -> None:
    totp = enabled(admin, "IP-L1", "lena")
    good = totp.at(time.time() + 30)
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    with server.client(VERIFIER) as verifier:
        answers = [verifier.post("/v1/verify", json={"user": "lena", "code": wrong}).json()
                   for _ in range(5)]
        time.sleep(0.3)  # locked now; the answer's retry_after is not a whole lock
        before = time.time()
        answers.append(verifier.post("/v1/verify", json={"user": "lena", "code": wrong}).json())
        after = time.time()
    assert {k: answers[0][k] for k in ("ok", "user", "serial")} == {
        "ok": False, "user": "lena", "serial": "IP-L1"}
    locked = answers[-1]
    assert locked["ok"] is False and locked["retry_after"] > 0
    assert round(locked["retry_after"], 3) == locked["retry_after"]
    token = admin.get("/v1/tokens/IP-L1").json()
    assert token["failures"] >= 5 and token["locked_until"] > time.time()
    # retry_after: the seconds from the answer to the end of the lock, to the millisecond
    assert before - 0.002 <= token["locked_until"] - locked["retry_after"] <= after + 0.002
    unlocked = admin.post("/v1/tokens/IP-L1/unlock")
    assert unlocked.status_code == 200
    assert (unlocked.json()["failures"], unlocked.json()["locked_until"]) == (0, None)


def test_a_code_counts_only_for_the_serial_named(server: Server, admin: httpx.Client) -> None:
    totp = enabled(admin, "IP-S1", "sia")
    other = base64.b32encode(bytes(range(100, 120))).decode()
    enable_pair(admin, "IP-S2", "sia", other)
    code = totp.at(time.time() + 30)
    with server.client(VERIFIER) as verifier:
        named = verifier.post("/v1/verify", json={"user": "sia", "code": code,
                                                  "serial": "IP-S2"}).json()
        assert (named["ok"], named["serial"]) == (False, "IP-S2")
        r = verifier.post("/v1/verify", json={"user": "sia", "code": code, "serial": "IP-S1"})
        assert r.json() == {"ok": True, "reason": "accepted", "user": "sia", "serial": "IP-S1"}


def test_a_padded_base32_secret_in_any_case(admin: httpx.Client) -> None:
    secret = bytes(range(16))  # 26 base32 characters and 6 of padding
    b32 = base64.b32encode(secret).decode()
    assert b32.endswith("======")
    # padding is ignored, whatever there is of it
    for serial, text in (("IP-B1", b32), ("IP-B2", b32.lower()), ("IP-B3", b32.rstrip("=")),
                         ("IP-B4", b32 + "==")):
        r = admin.post("/v1/tokens", json={"serial": serial, "secret_b32": text,
                                           "kind": "hotp"})
        assert r.status_code == 201, r.text
        assert r.json()["next_counter"] == 0  # a fresh HOTP token: counter 0 comes next
    hotp = pyotp.HOTP(b32)
    admin.post("/v1/users/bea/devices", json={"serial": "IP-B2", "code1": hotp.at(0),
                                              "code2": hotp.at(1)}).raise_for_status()
    assert admin.get("/v1/tokens/IP-B2").json()["next_counter"] == 2


def test_list_tokens_pages_and_filters(admin: httpx.Client) -> None:
    assert admin.post("/v1/tokens", json={"serial": "IP-P00", "secret_hex": SECRET.hex()}
                      ).status_code == 201  # a TOTP token, left out of the HOTP listings
    for i in range(3):
        assert admin.post("/v1/tokens", json={"serial": f"IP-P{i}", "secret_hex": SECRET.hex(),
                                              "kind": "hotp"}).status_code == 201
    everything = admin.get("/v1/tokens", params={"kind": "hotp", "limit": 1000}).json()
    hotp = [t["serial"] for t in everything["tokens"]]
    assert {"IP-P0", "IP-P1", "IP-P2"} <= set(hotp) and everything["total"] == len(hotp)
    assert "IP-P00" not in hotp
    assert everything["next_offset"] is None and everything["offset"] == 0
    first = admin.get("/v1/tokens", params={"kind": "hotp", "limit": 2}).json()
    assert (first["limit"], first["offset"], first["next_offset"]) == (2, 0, 2)
    assert [t["serial"] for t in first["tokens"]] == hotp[:2]
    rest = admin.get("/v1/tokens", params={"kind": "hotp", "limit": 2, "offset": 2}).json()
    assert [t["serial"] for t in rest["tokens"]] == hotp[2:4]
    assert all(t["kind"] == "hotp" for t in everything["tokens"])
    default = admin.get("/v1/tokens").json()
    assert (default["limit"], default["offset"]) == (100, 0)
    enabled(admin, "IP-P9", "pia")
    mine = admin.get("/v1/tokens", params={"user": "pia"}).json()
    assert [t["serial"] for t in mine["tokens"]] == ["IP-P9"] and mine["total"] == 1
    free = admin.get("/v1/tokens", params={"unassigned": "true", "limit": 1000}).json()
    assert "IP-P9" not in {t["serial"] for t in free["tokens"]}
    assert {"IP-P0", "IP-P1"} <= {t["serial"] for t in free["tokens"]}
    taken = admin.get("/v1/tokens", params={"unassigned": "false", "limit": 1000}).json()
    assert "IP-P9" in {t["serial"] for t in taken["tokens"]}
    assert not {"IP-P0", "IP-P1"} & {t["serial"] for t in taken["tokens"]}


def test_delete_a_token(admin: httpx.Client) -> None:
    assert admin.post("/v1/tokens", json={"serial": "IP-X1", "secret_hex": SECRET.hex()}
                      ).status_code == 201
    r = admin.delete("/v1/tokens/IP-X1")
    assert (r.status_code, r.content) == (204, b"")
    assert error(admin.get("/v1/tokens/IP-X1"))[:2] == (404, "unknown_serial")


def test_audit_pages_and_export(admin: httpx.Client) -> None:
    enabled(admin, "IP-A1", "alma")
    page = admin.get("/v1/audit", params={"serial": "IP-A1", "limit": 1}).json()
    entry = page["entries"][0]
    assert set(entry) == {"id", "time", "action", "result", "reason", "serial", "user", "via",
                          "client", "window", "request_id"}
    assert (entry["action"], entry["serial"]) == ("register", "IP-A1")
    assert (page["limit"], page["offset"], page["next_offset"], page["total"]) == (1, 0, 1, 2)
    newest = admin.get("/v1/audit", params={"serial": "IP-A1", "order": "newest"}).json()
    assert [e["action"] for e in newest["entries"]] == ["enable", "register"]
    assert newest["next_offset"] is None
    second = admin.get("/v1/audit", params={"serial": "IP-A1", "limit": 1, "offset": 1}).json()
    assert [e["action"] for e in second["entries"]] == ["enable"]
    assert (second["offset"], second["next_offset"], second["total"]) == (1, 2, 2)
    r = admin.get("/v1/audit/export", params={"order": "newest"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    mine = [e for e in lines if e["serial"] == "IP-A1"]
    assert [e["action"] for e in mine] == ["enable", "register"]
    assert set(mine[0]) == {"id", "ts", "time", "action", "result", "reason", "serial",
                            "user", "via", "client", "window", "request_id"}
    assert r.text.endswith("\n") and ": " not in r.text.splitlines()[0]
    assert lines[0]["id"] > lines[-1]["id"]


def test_audit_filters_and_time_bounds(server: Server, admin: httpx.Client) -> None:
    totp = enabled(admin, "IP-F1", "fay")
    with server.client(VERIFIER) as verifier:
        verifier.post("/v1/verify", json={"user": "fay", "code": totp.at(time.time() + 30)})
        verifier.post("/v1/verify", json={"user": "fay", "code": "000000"})
    assert admin.post("/v1/tokens", json={"serial": "IP-F2", "secret_hex": SECRET.hex()}
                      ).status_code == 201

    def audit(**params: Any) -> list[tuple[str, str, str | None]]:
        r = admin.get("/v1/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == len(body["entries"])
        return [(e["action"], e["result"], e["serial"]) for e in body["entries"]]

    everything = admin.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    assert audit(user="fay") == [("enable", "ok", "IP-F1"), ("verify", "ok", "IP-F1"),
                                 ("verify", "refused", "IP-F1")]
    assert audit(action="verify") == [("verify", "ok", "IP-F1"), ("verify", "refused", "IP-F1")]
    assert audit(action="verify", result="refused") == [("verify", "refused", "IP-F1")]
    assert audit(serial="IP-F2") == [("register", "ok", "IP-F2")]
    # [since, until): the second verification's time on, before the last registration's
    times = [e["time"] for e in everything]
    since, until = times[-2], times[-1]
    assert audit(since=since, until=until) == [("verify", "refused", "IP-F1")]
    exported = admin.get("/v1/audit/export", params={"since": since, "until": until}).text
    assert [json.loads(line)["action"] for line in exported.splitlines()] == ["verify"]
    exported = admin.get("/v1/audit/export", params={"since": until}).text
    assert [json.loads(line)["serial"] for line in exported.splitlines()] == ["IP-F2"]


def test_healthz_answers_503_with_the_reason_while_the_database_cannot_be_read(
        server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Path(server.validator.store.path)  # type: ignore[attr-defined]
    aside = tmp_path / "aside"
    aside.mkdir()
    with server.client(None) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        moved = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
        for p in moved:
            p.rename(aside / p.name)
        db.write_bytes(b"\xff" * 8192)  # a disk gone bad under the running daemon
        with caplog.at_level("WARNING", logger="foblab.validator"):
            r = anon.get("/healthz")
        db.unlink()
        for p in moved:
            (aside / p.name).rename(p)
        assert error(r) == (503, "unhealthy",
                            "the database cannot be read (DatabaseError)")
        assert [rec.getMessage() for rec in caplog.records if rec.name == "foblab.validator"
                ] == ["health check failed: the database cannot be read (DatabaseError)"]
        assert anon.get("/healthz").json() == {"status": "ok"}


def test_import_csv(admin: httpx.Client) -> None:
    content = ("serial,secret_hex,kind,digits,period_or_counter,hash\n"
               f"IP-I1,{SECRET.hex()},totp,6,30,sha1\nIP-I2,{SECRET.hex()},hotp,8,3,sha256\n")
    dry = admin.post("/v1/tokens/import", json={"format": "csv", "content": content,
                                                "dry_run": True})
    assert dry.json() == {"imported": 2, "serials": ["IP-I1", "IP-I2"], "skipped": [],
                          "dry_run": True}
    assert admin.get("/v1/tokens/IP-I1").status_code == 404
    r = admin.post("/v1/tokens/import", json={"format": "csv", "content": content})
    assert r.json() == {"imported": 2, "serials": ["IP-I1", "IP-I2"], "skipped": [],
                        "dry_run": False}
    again = admin.post("/v1/tokens/import", json={"format": "csv", "content": content,
                                                  "skip_duplicates": True}).json()
    assert again["imported"] == 0
    assert [(s["serial"], s["reason"]) for s in again["skipped"]] == [
        ("IP-I1", "already_registered"), ("IP-I2", "already_registered")]
    assert error(admin.post("/v1/tokens/import", json={
        "format": "pskc", "content": "<x/>", "passphrase": "p", "key_hex": "00" * 16})) == (
        400, "invalid_request", "give passphrase or key_hex, not both")


RFC6030 = Path(__file__).resolve().parents[1] / "data" / "rfc6030"


@pytest.mark.parametrize("figure,key", [
    ("figure6.xml", {"key_hex": "12345678901234567890123456789012"}),  # RFC 6030's own
    ("figure7.xml", {"passphrase": "qwerty"}),
])
def test_import_an_encrypted_pskc_file(admin: httpx.Client, figure: str,
                                       key: dict[str, str]) -> None:
    content = (RFC6030 / figure).read_text()
    r = admin.post("/v1/tokens/import", json={"format": "pskc", "content": content, **key})
    assert r.json() == {"imported": 1, "serials": ["987654321"], "skipped": [],
                        "dry_run": False}
    assert admin.get("/v1/tokens/987654321").json()["kind"] == "hotp"
    # the same file again, without skip_duplicates: refused, nothing changed
    again = admin.post("/v1/tokens/import", json={"format": "pskc", "content": content, **key})
    assert error(again)[:2] == (409, "duplicate_serial")


def test_rotate_the_keys(server: Server, admin: httpx.Client) -> None:
    assert admin.post("/v1/tokens", json={"serial": "IP-R1", "secret_hex": SECRET.hex()}
                      ).status_code == 201
    box = server.validator.box
    old_data = box.data_key_id
    r = admin.post("/v1/admin/rotate-key").json()
    assert r["scope"] == "data" and r["rewrapped"] == 0 and r["resealed"] >= 1
    assert r["data_key_id"] != old_data and r["healthy"] is True
    assert (r["key_id"], r["data_key_id"]) == (box.key_id, box.data_key_id)
    m = admin.post("/v1/admin/rotate-key", params={"master": "true"}).json()
    # a master rotation rewraps the data key under a new master: the data key stays
    assert m["key_id"] != r["key_id"] and m["data_key_id"] == r["data_key_id"]
    assert m["scope"] == "master" and m["resealed"] == 0 and m["rewrapped"] >= 1
    assert (m["key_id"], m["data_key_id"], m["healthy"]) == (box.key_id, box.data_key_id,
                                                             True)


def test_reload_needs_the_daemon(admin: httpx.Client) -> None:
    assert error(admin.post("/v1/admin/reload")) == (
        409, "reload_failed", "this process cannot reload: it was not started by "
        "`foblab validator serve`")


def test_stations(admin: httpx.Client) -> None:
    assert admin.get("/v1/stations").json() == {"stations": [
        {"name": "nowhere", "port": "/nonexistent/ttyUSB9"}]}
    assert error(admin.get("/v1/stations/elsewhere")) == (
        404, "unknown_station", "no station named 'elsewhere' is configured")
    assert error(admin.get("/v1/stations/nowhere"))[:2] == (503, "station_unavailable")
    assert error(admin.post("/v1/stations/nowhere/enroll", json={"user": "sam"})
                 )[:2] == (503, "station_unavailable")
    text = admin.get("/metrics").text
    assert 'station="nowhere"' in text and "station_unavailable" in text


def test_reload_answers_what_the_daemon_reloaded(tmp_path: Path) -> None:
    calls: list[float] = []

    def reload() -> dict[str, Any]:
        calls.append(time.time())
        return {"reloaded": ["config", "api_keys"], "keys": 2}

    server = Server(tmp_path, reload=reload)
    try:
        with server.client() as admin:
            r = admin.post("/v1/admin/reload")
            assert (r.status_code, r.json()) == (200, {"reloaded": ["config", "api_keys"],
                                                       "keys": 2})
            assert len(calls) == 1
            with server.client(VERIFIER) as verifier:  # an admin operation
                assert error(verifier.post("/v1/admin/reload"))[:2] == (403, "forbidden")
            assert len(calls) == 1
    finally:
        server.stop()


@pytest.fixture
def hotp_on_a_port(tmp_path: Path) -> Iterator[Any]:
    """A provisioned HOTP token (seed SECRET) on a real PTY, served from this process."""
    with serve_token(model="event", seed=SECRET, serial="GAHT91000077",
                     pty_link=tmp_path / "tok") as running:
        yield running


def test_a_station_reads_the_token_on_its_port(tmp_path: Path, hotp_on_a_port: Any) -> None:
    server = Server(tmp_path, ports={"bench": hotp_on_a_port.url})
    try:
        with server.client() as admin:
            assert admin.get("/v1/stations").json() == {"stations": [
                {"name": "nowhere", "port": "/nonexistent/ttyUSB9"},
                {"name": "bench", "port": hotp_on_a_port.url}]}
            r = admin.get("/v1/stations/bench")
            assert (r.status_code, r.json()) == (200, {"station": "bench", "token": {
                "serial": "GAHT91000077", "model": "event", "firmware": "1.0.0",
                "protocol_version": 1, "kind": "hotp", "hash": "sha1", "digits": 6,
                "period": 0, "provisioned": True, "locked": True, "qa_mode": False,
                "battery_ok": True}})
            text = admin.get("/metrics").text
        assert metric(text, "foblab_station_operations_total", station="bench", op="info",
                  result="ok") == 1
        assert metric(text, "foblab_station_operations_total", station="bench", op="info",
                  result="station_unavailable") == 0
    finally:
        server.stop()


def test_a_station_enrolls_a_registered_token(
        tmp_path: Path, hotp_on_a_port: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = Server(tmp_path, ports={"bench": hotp_on_a_port.url})
    hotp = pyotp.HOTP(B32)
    try:
        with server.client() as admin:
            assert admin.post("/v1/tokens", json={"serial": "GAHT91000077", "kind": "hotp",
                                                  "secret_hex": SECRET.hex()}
                              ).status_code == 201
            with caplog.at_level("INFO", logger="foblab.access"):
                r = admin.post("/v1/stations/bench/enroll", json={"user": "sam"})
                # enrolled once: the same token cannot be enrolled again
                again = admin.post("/v1/stations/bench/enroll", json={"user": "tim"})
            assert r.status_code == 201, r.text
            token = admin.get("/v1/tokens/GAHT91000077").json()
            # the station pressed the token twice: counters 0 and 1 enabled it
            assert (token["user"], token["next_counter"]) == ("sam", 2)
            assert r.json() == {"station": "bench", "serial": "GAHT91000077", "user": "sam",
                                "provisioned": False, "token": token}
            verify = admin.post("/v1/verify", json={"user": "sam", "code": hotp.at(2)})
            assert verify.json()["ok"] is True
            assert error(again)[:2] == (409, "already_assigned")
            text = admin.get("/metrics").text
        assert metric(text, "foblab_station_operations_total", station="bench", op="enroll",
                  result="ok") == 1
        assert metric(text, "foblab_station_operations_total", station="bench", op="enroll",
                  result="already_assigned") == 1
        assert outcomes(caplog, "/v1/stations/bench/enroll") == ["enrolled", None]
    finally:
        server.stop()


def test_a_station_provisions_a_blank_token(tmp_path: Path) -> None:
    with serve_token(model="event", serial="GAHT91000078", qa=True,
                     pty_link=tmp_path / "blank") as running:
        server = Server(tmp_path, ports={"bench": running.url})
        try:
            with server.client() as admin:
                blank = admin.post("/v1/stations/bench/enroll", json={"user": "ann"})
                assert error(blank)[:2] == (409, "token_blank")
                r = admin.post("/v1/stations/bench/enroll", json={
                    "user": "ann", "provision": True, "hash": "sha256", "digits": 8})
                assert r.status_code == 201, r.text
                body = r.json()
                assert {k: body[k] for k in ("station", "serial", "user", "provisioned")} == {
                    "station": "bench", "serial": "GAHT91000078", "user": "ann",
                    "provisioned": True}
                token = body["token"]
                assert (token["kind"], token["hash"], token["digits"], token["user"],
                        token["next_counter"]) == ("hotp", "sha256", 8, "ann", 2)
                assert admin.get("/v1/tokens/GAHT91000078").json() == token
                info = admin.get("/v1/stations/bench").json()["token"]
            assert (info["provisioned"], info["hash"], info["digits"]) == (True, "sha256", 8)
        finally:
            server.stop()


def test_a_station_provisions_a_blank_token_as_totp(tmp_path: Path) -> None:
    # The token's clock set 1.5 s before the end of a 60-second step, so that enrolling
    # (two codes, then the step boundary awaited) takes seconds, not up to a minute.
    ahead_ms = round(((58.5 - time.time() % 60) % 60) * 1000)
    with serve_token(model="event", serial="GAHT91000079", qa=True,
                     pty_link=tmp_path / "blank", now=lambda: wall_ms() + ahead_ms) as running:
        server = Server(tmp_path, ports={"bench": running.url})
        try:
            with server.client() as admin:
                r = admin.post("/v1/stations/bench/enroll", json={
                    "user": "tia", "provision": True, "kind": "totp", "period": 60})
                assert r.status_code == 201, r.text
                token = r.json()["token"]
                assert (token["kind"], token["period"], token["user"]) == ("totp", 60, "tia")
                info = admin.get("/v1/stations/bench").json()["token"]
            assert (info["kind"], info["period"]) == ("totp", 60)
        finally:
            server.stop()


def test_health_and_metrics(server: Server) -> None:
    with server.client(None) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        r = anon.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "foblab_" in r.text


# -- decoding ------------------------------------------------------------------------------

def test_the_path_rules() -> None:
    checks = _path_checks()  # what PATH_CHECKS holds, built afresh
    assert set(checks) == {"user", "serial", "name"}
    assert [checks[n](v) for n, v in (("user", "a.b@c"), ("serial", "S-1/x"),
                                      ("name", "bench_1"))] == [None, None, None]
    refusals = {n: checks[n](v) for n, v in (("user", "a b"), ("serial", "a b"),
                                             ("name", "a/b"))}
    assert {n: (type(e).__name__, e.message) for n, e in refusals.items() if e} == {
        "user": ("InvalidUser", "user names are 1-64 letters, digits and +=,.@_-"),
        "serial": ("InvalidRequest",
                   "serials are 1-256 printable ASCII characters without spaces"),
        "name": ("InvalidRequest", "station names are 1-64 letters, digits, '_', '.', '-'")}


def _api(tmp_path: Path, store: object) -> Api:
    settings = config.parse({}, tmp_path)
    return Api(SimpleNamespace(store=store, verify_many=list),  # type: ignore[arg-type]
               KeyRing({}), settings)


def _where(value: int, *, plus: int) -> tuple[int, int]:
    return threading.get_ident(), value + plus


def test_a_networked_store_is_called_from_a_bounded_pool_of_threads(tmp_path: Path) -> None:
    here = threading.get_ident()
    local = _api(tmp_path, SimpleNamespace())  # a local store (SQLite): on the event loop
    assert local.offload is None  # its verifications go together on the loop, no thread
    assert local.batcher is not None and local.batcher._run is None
    assert anyio.run(functools.partial(local.call, _where, 1, plus=2)) == (here, 3)
    remote = _api(tmp_path, SimpleNamespace(remote=True, max_connections=3))
    assert remote.offload is not None and remote.offload.size == 3
    thread, value = anyio.run(functools.partial(remote.call, _where, 1, plus=2))
    assert thread != here and value == 3
    assert remote.batcher is not None  # verify: requests waiting together go as one
    # at most max_connections calls at once, however many requests wait
    two = _api(tmp_path, SimpleNamespace(remote=True, max_connections=2))
    running, most = [0], [0]
    lock = threading.Lock()

    def busy() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    async def six_at_once() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(two.call, busy)

    anyio.run(six_at_once)
    assert most[0] == 2
    default = _api(tmp_path, SimpleNamespace(remote=True))
    assert default.offload is not None and default.offload.size == 8
    assert _api(tmp_path, SimpleNamespace(remote=False)).offload is None

UNAUTHORIZED = (401, "unauthorized", "send an API key as Authorization: Bearer KEY")


@pytest.mark.parametrize("authorization,answer", [
    (None, UNAUTHORIZED),
    (f"Basic {ADMIN}", UNAUTHORIZED),
    (f"Bearer{ADMIN}", UNAUTHORIZED),
    ("Bearer " + "k" * 506, UNAUTHORIZED),  # 513 characters: longer than any key
    ("Bearer " + "k" * 505, (401, "unauthorized", "unknown API key")),
    (f"Bearer {VERIFIER}", (403, "forbidden", "the verifier key may not call this")),
])
def test_keys_are_checked(server: Server, authorization: str | None,
                          answer: tuple[int, str, str]) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with server.client(None) as client:
        assert error(client.get("/v1/tokens", headers=headers)) == answer


def test_the_scheme_is_case_blind_and_the_key_trimmed(server: Server) -> None:
    with server.client(None) as client:
        r = client.get("/v1/tokens", headers={"Authorization": f"bEARER   {ADMIN}"})
    assert r.status_code == 200


@pytest.mark.parametrize("path,answer", [
    ("/v1/users/a%20b/devices",
     (400, "invalid_user", "user names are 1-64 letters, digits and +=,.@_-")),
    ("/v1/tokens/a%20b", (400, "invalid_request",
                          "serials are 1-256 printable ASCII characters without spaces")),
    ("/v1/stations/a%20b", (400, "invalid_request",
                            "station names are 1-64 letters, digits, '_', '.', '-'")),
])
def test_path_parameters_are_checked(admin: httpx.Client, path: str,
                                     answer: tuple[int, str, str]) -> None:
    assert error(admin.get(path)) == answer


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "APPLICATION/JSON", "application/problem+json", ""])
def test_json_media_types_are_accepted(server: Server, content_type: str) -> None:
    with server.client(VERIFIER) as client:
        r = client.post("/v1/verify", content=b'{"user": "nobody", "code": "123456"}',
                        headers={"Content-Type": content_type})
    assert r.status_code == 200 and r.json()["ok"] is False


def test_other_media_types_are_refused(server: Server) -> None:
    with server.client(VERIFIER) as client:
        r = client.post("/v1/verify", content=b'{"user": "nobody", "code": "123456"}',
                        headers={"Content-Type": "text/plain"})
    assert error(r) == (415, "unsupported_media_type",
                        "send the body as Content-Type: application/json")


def test_a_body_is_required(server: Server) -> None:
    with server.client(VERIFIER) as client:
        assert error(client.post("/v1/verify")) == (400, "invalid_request",
                                                    "a JSON body is required")


def _raw(server: Server, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request on a raw socket; answers the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                header, _, rest = data.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in header.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    return int(data.split(b" ")[1]), data


def _head(length: str | None = None, chunked: bool = False) -> bytes:
    lines = [b"POST /v1/verify HTTP/1.1", b"Host: 127.0.0.1",
             f"Authorization: Bearer {VERIFIER}".encode(), b"Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}".encode())
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


TOO_LARGE = f'"the body may be at most {MAX_BODY} bytes"'.encode()


def test_a_body_past_the_limit_is_refused_and_the_connection_closed(server: Server) -> None:
    body = json.dumps({"user": "nobody", "code": "123456", "pad": "x" * MAX_BODY}).encode()
    status, answer = _raw(server, _head(str(len(body))), body)
    assert status == 413 and TOO_LARGE in answer and b"connection: close" in answer.lower()


def test_a_body_exactly_at_the_limit_is_read(server: Server) -> None:
    body = json.dumps({"user": "nobody", "code": "123456"}).encode()
    body = body[:-1] + b" " * (MAX_BODY - len(body)) + b"}"
    with server.client(VERIFIER) as client:
        r = client.post("/v1/verify", content=body,
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["ok"] is False


def test_a_chunked_body_past_the_limit_is_refused(server: Server) -> None:
    chunk = b"x" * 1000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    status, answer = _raw(server, _head(chunked=True), chunks)
    assert status == 413 and TOO_LARGE in answer


def test_a_body_in_several_packets_is_read_whole(server: Server) -> None:
    body = json.dumps({"user": "nobody", "code": "123456"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_head(chunked=True))
        for part in (body[:10], body[10:20], body[20:]):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.05)  # each its own packet, each its own ASGI message
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b'"ok"' not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b'"ok":false' in answer


def test_a_media_type_with_several_parameters_is_json(server: Server) -> None:
    with server.client(VERIFIER) as client:
        r = client.post("/v1/verify", content=b'{"user": "nobody", "code": "123456"}',
                        headers={"Content-Type": "application/json; charset=utf-8; x=1"})
    assert r.status_code == 200 and r.json()["ok"] is False


def test_a_body_past_the_limit_in_several_packets_is_refused(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_head(chunked=True))
        for _ in range(3):  # each packet below the limit, together past it
            sock.sendall(b"%x\r\n%s\r\n" % (1000, b" " * 1000))
            time.sleep(0.05)
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while TOO_LARGE not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and TOO_LARGE in answer


def test_a_query_parameter_a_route_does_not_take_is_refused(admin: httpx.Client) -> None:
    r = admin.get("/v1/users/nobody/devices", params={"limit": 5})
    assert error(r) == (400, "invalid_request", "unknown query parameter 'limit'")


def test_a_chunked_body_within_the_limit_is_read_whole(server: Server) -> None:
    body = json.dumps({"user": "nobody", "code": "123456"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                      for part in (body[:10], body[10:20], body[20:])) + b"0\r\n\r\n"
    status, answer = _raw(server, _head(chunked=True), chunks)
    assert status == 200 and b'"ok":false' in answer


def test_the_import_route_takes_a_larger_body(admin: httpx.Client) -> None:
    rows = "".join(f"IP-B{i:04d},{SECRET.hex()},totp,6,30,sha1\n" for i in range(60))
    content = "serial,secret_hex,kind,digits,period_or_counter,hash\n" + rows
    assert len(content) > MAX_BODY
    r = admin.post("/v1/tokens/import", json={"format": "csv", "content": content,
                                              "dry_run": True})
    assert r.status_code == 200 and r.json()["imported"] == 60

"""Roles and keys, every kind of bad input (a 4xx with {"error", "message"}, never a 500),
the OpenAPI document, /healthz, /metrics, and logs that never hold a code or a key."""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import SECRET_B32, Daemon, enabled_token  # noqa: E402

SECRET_HEX = "3132333435363738393031323334353637383930"


def test_roles_and_keys(daemon: Daemon) -> None:
    totp = enabled_token(daemon, "ROLE-0001", "rolf")
    with daemon.client(None) as anon, daemon.client("verifier") as ver, \
            daemon.client("not-a-key-not-a-key-not-a-key") as wrong, daemon.client() as adm:
        for client, status in ((anon, 401), (wrong, 401), (ver, 403), (adm, 200)):
            r = client.get("/v1/tokens")
            assert r.status_code == status
            if status != 200:
                assert set(r.json()) == {"error", "message"}
        assert anon.get("/v1/tokens").headers["www-authenticate"] == "Bearer"
        assert anon.post("/v1/verify", json={"user": "rolf", "code": "123456"}
                         ).status_code == 401
        for method, path in (("POST", "/v1/tokens"), ("POST", "/v1/tokens/import"),
                             ("DELETE", "/v1/tokens/ROLE-0001"), ("GET", "/v1/audit"),
                             ("POST", "/v1/tokens/ROLE-0001/unlock"),
                             ("POST", "/v1/users/rolf/devices"),
                             ("DELETE", "/v1/users/rolf/devices/ROLE-0001"),
                             ("GET", "/v1/stations/bench")):
            r = ver.request(method, path, json={})
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"] == "forbidden"
        # The verifier may verify and resync.
        r = ver.post("/v1/verify", json={"user": "rolf", "code": totp.at(time.time() + 30)})
        assert r.status_code == 200 and r.json()["ok"] is True
        now = time.time()
        r = ver.post("/v1/users/rolf/devices/ROLE-0001/resync",
                     json={"code1": totp.at(now + 60), "code2": totp.at(now + 90)})
        assert r.status_code == 200, r.text
        # Lower-case scheme is still Bearer; a key with a different case is not the key.
        r = anon.get("/v1/tokens", headers={"Authorization": f"bearer {daemon.admin}"})
        assert r.status_code == 200
        r = anon.get("/v1/tokens", headers={"Authorization": f"Bearer {daemon.admin.upper()}"})
        assert r.status_code == 401
        assert anon.get("/healthz").json() == {"status": "ok"}
        assert adm.get("/v1/tokens/ROLE-0001").status_code == 200
        assert "secret" not in adm.get("/v1/tokens/ROLE-0001").text.lower()


LONG = "x" * 300
BAD_INPUTS: list[tuple[str, str, Any, int, str]] = [
    # method, path, json body, status, error code
    ("POST", "/v1/verify", {"user": "a", "code": "1234567890123"}, 400, "invalid_request"),
    ("POST", "/v1/verify", {"user": "a", "code": "12345a"}, 400, "invalid_request"),
    ("POST", "/v1/verify", {"user": "a", "code": 123456}, 400, "invalid_request"),
    ("POST", "/v1/verify", {"user": "a b", "code": "123456"}, 400, "invalid_request"),
    ("POST", "/v1/verify", {"user": "x" * 65, "code": "123456"}, 400, "invalid_request"),
    ("POST", "/v1/verify", {"user": "a", "code": "123456", "extra": 1}, 400,
     "invalid_request"),
    ("POST", "/v1/verify", {"user": "a"}, 400, "invalid_request"),
    ("POST", "/v1/verify", ["user", "a"], 400, "invalid_request"),
    ("POST", "/v1/verify", None, 400, "invalid_request"),
    ("POST", "/v1/verify", {"user": "a", "code": "123456", "serial": "has space"}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_b32": "NOT*BASE32!!!!!!!"}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_b32": "A" * 17}, 400, "bad_secret"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": "abc" * 7}, 400, "bad_secret"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": "00" * 9 + "zz"}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1"}, 400, "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": SECRET_HEX,
                            "secret_b32": SECRET_B32}, 400, "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": SECRET_HEX, "digits": 7}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": SECRET_HEX, "digits": True}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": SECRET_HEX, "period": 0}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": SECRET_HEX, "hash": "md5"}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": LONG, "secret_hex": SECRET_HEX}, 400,
     "invalid_request"),
    ("POST", "/v1/tokens", {"serial": "T-1", "secret_hex": SECRET_HEX, "kind": "hotp",
                            "period": 30}, 400, "invalid_request"),
    ("POST", "/v1/tokens/import", {"format": "xml", "content": "x"}, 400, "invalid_request"),
    ("POST", "/v1/tokens/import", {"format": "pskc", "content": "<not pskc"}, 400,
     "invalid_seed_file"),
    ("POST", "/v1/tokens/import", {"format": "csv", "content": "a,b\n"}, 400,
     "invalid_seed_file"),
    ("POST", "/v1/users/bad%20name/devices", {"serial": "X", "code1": "1", "code2": "2"}, 400,
     "invalid_user"),
    ("GET", "/v1/users/" + "u" * 65 + "/devices", None, 400, "invalid_user"),
    ("POST", "/v1/users/ok/devices", {"serial": "NOPE", "code1": "123456",
                                      "code2": "123456"}, 404, "unknown_serial"),
    ("GET", "/v1/tokens/NOPE", None, 404, "unknown_serial"),
    ("DELETE", "/v1/tokens/NOPE", None, 404, "unknown_serial"),
    ("GET", "/v1/tokens?limit=0", None, 400, "invalid_request"),
    ("GET", "/v1/tokens?limit=abc", None, 400, "invalid_request"),
    ("GET", "/v1/tokens?bogus=1", None, 400, "invalid_request"),
    ("GET", "/v1/tokens?unassigned=maybe", None, 400, "invalid_request"),
    ("GET", "/v1/audit?since=soon", None, 400, "invalid_request"),
    ("GET", "/v1/nothing", None, 404, "not_found"),
    ("PUT", "/v1/verify", None, 405, "method_not_allowed"),
    ("POST", "/v1/stations/no%20such/enroll", {"user": "a"}, 400, "invalid_request"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_INPUTS,
                         ids=[f"{m} {p[:40]} {i}" for i, (m, p, *_rest) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_4xx_with_a_clear_error(daemon: Daemon, method: str, path: str,
                                                body: Any, status: int, code: str) -> None:
    with daemon.client() as http:
        kw: dict[str, Any] = {} if body is None and method != "POST" else {"json": body}
        if body is None and method == "POST":
            kw = {"content": b"", "headers": {"content-type": "application/json"}}
        r = http.request(method, path, **kw)
    assert r.status_code == status, r.text
    data = r.json()
    assert data["error"] == code and isinstance(data["message"], str) and data["message"]


def test_raw_bodies(daemon: Daemon) -> None:
    with daemon.client("verifier") as http:
        json_ct = {"content-type": "application/json"}
        cases = [
            (b"{not json", json_ct, 400, "invalid_json"),
            (b"[" * 10_000 + b"]" * 10_000, json_ct, 413, "body_too_large"),
            (b"[" * 5000 + b"]" * 5000, json_ct, 400, "invalid_json"),  # too deep
            (b'{"user": "a", "code": NaN}', json_ct, 400, "invalid_json"),
            (b'{"user": "a", "code": "1' + b"1" * 20000 + b'"}', json_ct, 413,
             "body_too_large"),
            (b'\xff\xfe{"user"', json_ct, 400, "invalid_json"),
            (b'{"user": "a", "code": 1e400}', json_ct, 400, "invalid_json"),  # not a float
            (b'{"user": "a\\ud800", "code": "123456"}', json_ct, 400, "invalid_json"),
            (b'\xef\xbb\xbf{"user": "a", "code": "123456"}', json_ct, 400, "invalid_json"),
            (b'{"user": "a", "code": "123456", "serial": 1' + b"0" * 30 + b'}', json_ct,
             400, "invalid_request"),  # read as a float, refused as not a string
            (b"user=a&code=123456", {"content-type": "application/x-www-form-urlencoded"},
             415, "unsupported_media_type"),
        ]
        for content, headers, status, code in cases:
            r = http.post("/v1/verify", content=content, headers=headers)
            assert (r.status_code, r.json()["error"]) == (status, code), content[:30]
    # A declared length over the limit is refused before the body is read.
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nAuthorization: Bearer " + daemon.verifier.encode() +
                     b"\r\nContent-Length: 99999999\r\n\r\n{}")
        head = b""
        while b"body_too_large" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 413 ") and b"body_too_large" in head


def test_openapi_and_metrics(daemon: Daemon) -> None:
    with daemon.client(None) as http:
        doc = http.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.")
        ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
        for expected in [("POST", "/v1/tokens"), ("POST", "/v1/tokens/import"),
                         ("GET", "/v1/tokens"), ("GET", "/v1/tokens/{serial}"),
                         ("DELETE", "/v1/tokens/{serial}"),
                         ("POST", "/v1/tokens/{serial}/unlock"),
                         ("POST", "/v1/users/{user}/devices"),
                         ("GET", "/v1/users/{user}/devices"),
                         ("DELETE", "/v1/users/{user}/devices/{serial}"),
                         ("POST", "/v1/users/{user}/devices/{serial}/resync"),
                         ("POST", "/v1/verify"), ("GET", "/v1/audit"),
                         ("GET", "/v1/stations/{name}"), ("POST", "/v1/stations/{name}/enroll")]:
            assert expected in ops
        assert not any(p.startswith("/aws") for p in doc["paths"])
        verify_schema = doc["components"]["schemas"]["Verify"]
        assert verify_schema["additionalProperties"] is False
        text = http.get("/metrics").text
        assert "# TYPE foblab_http_requests_total counter" in text
        assert 'foblab_http_requests_total{method="GET",route="/openapi.json",status="200"}' \
            in text
        assert "foblab_http_requests_in_flight 1" in text  # this very request


def test_logs_hold_no_code_and_no_key(daemon: Daemon) -> None:
    totp = enabled_token(daemon, "LOG-0001", "lola")
    code = totp.at(time.time() + 30)
    with daemon.client("verifier") as http:
        assert http.post("/v1/verify", json={"user": "lola", "code": code}).json()["ok"]
        http.post("/v1/verify", json={"user": "lola", "code": "99999999"})
        http.post("/v1/tokens", json={"serial": "LOG-0002", "secret_b32": SECRET_B32})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any('"outcome":"replayed"' in line
                                                  or '"outcome":"invalid_code"' in line
                                                  for line in daemon.lines):
        time.sleep(0.05)
    log = "".join(daemon.lines)
    assert '"route":"/v1/verify"' in log and '"outcome":"accepted"' in log
    with daemon.client(None) as http:  # both verifications' guessing surfaces
        metrics = http.get("/metrics").text
    assert "# TYPE foblab_verify_window_steps histogram" in metrics
    found = re.search(r"^foblab_verify_window_steps_count (\d+)\.0$", metrics, re.M)
    assert found is not None
    count = int(found[1])
    assert count >= 2
    assert f'foblab_verify_window_steps_bucket{{le="9.0"}} {count}.0' in metrics
    with daemon.client("admin") as http:
        rows = http.get("/v1/audit", params={"user": "lola", "action": "verify"}).json()
    assert [e["window"] is not None and e["window"] >= 1 for e in rows["entries"]] == [True] * 2
    for secret in (code, "99999999", daemon.admin, daemon.verifier, SECRET_B32, SECRET_HEX):
        assert secret not in log
    assert "Traceback" not in log


def test_aws_endpoint_is_mounted_outside_the_bearer_keys(daemon: Daemon) -> None:
    pytest.importorskip("validator.aws")
    with daemon.client(None) as http:
        for path in ("/aws", "/aws/"):
            r = http.post(path, data={"Action": "ListMFADevices", "Version": "2010-05-08"})
            assert r.status_code < 500
            assert "www-authenticate" not in r.headers  # not our 401: its own SigV4 refusal
            assert r.text.lstrip().startswith("<"), r.text[:200]


def test_hotp_counter_bound_matches_import(daemon: Daemon) -> None:
    """A counter a real seed file carries (multiOTP ships 2**52) registers through the API
    as it imports; past the core's bound it is a 400, not a 500 later."""
    with daemon.client() as http:
        r = http.post("/v1/tokens", json={"serial": "HOTP-BIG-1", "secret_hex": SECRET_HEX,
                                          "kind": "hotp", "counter": 2**52})
        assert r.status_code == 201, r.text
        r = http.post("/v1/tokens", json={"serial": "HOTP-BIG-2", "secret_hex": SECRET_HEX,
                                          "kind": "hotp", "counter": 2**63 + 1})
        assert r.status_code == 400 and r.json()["error"], r.text

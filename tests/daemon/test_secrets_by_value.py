"""No response of a full API flow holds a seed, looked for by value: the raw bytes, hex,
base32 and base64 (padded or not, urlsafe too), in upper and lower case, in bodies and
headers, for every seed of the flow (registered as hex and as base32, imported from CSV
and from PSKC). Looking for the word "secret" would miss a seed put into a token's JSON."""

from __future__ import annotations

import base64
import io
import secrets
import sys
from pathlib import Path
from typing import Any

import httpx
import pskc
import pyotp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import Daemon, clear_of_step_edge  # noqa: E402


def encodings(seed: bytes) -> set[bytes]:
    """Every way a response could spell `seed`."""
    out = {seed}
    b32 = base64.b32encode(seed)
    for text in (seed.hex(), b32.decode(), base64.b64encode(seed).decode(),
                 base64.urlsafe_b64encode(seed).decode(),
                 base64.b64encode(b32).decode(),  # AWS's blob of the base32 text
                 base64.b64encode(b32.rstrip(b"=")).decode()):
        for form in (text, text.rstrip("=")):
            out |= {form.encode(), form.lower().encode(), form.upper().encode()}
    return out


class Recorder:
    """Every response a client received: (request line, raw bytes of headers and body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        head = b"".join(k + b": " + v + b"\n" for k, v in response.headers.raw)
        self.seen.append((f"{response.request.method} {response.request.url.path} "
                          f"{response.status_code}", head + response.content))

    def leaks(self, seeds: dict[str, bytes]) -> list[str]:
        found = []
        for name, seed in seeds.items():
            forms = encodings(seed)
            for what, raw in self.seen:
                found += [f"{name} in {what}" for form in forms if form in raw]
        return found


def _pskc(serial: str, seed: bytes) -> str:
    doc = pskc.PSKC()
    doc.add_key(serial=serial, secret=seed, algorithm="urn:ietf:params:xml:ns:keyprov:pskc:totp",
                response_length=6, time_interval=30, algorithm_suite="HMAC-SHA512")
    out = io.BytesIO()
    doc.write(out)
    return out.getvalue().decode()


def test_no_response_of_a_full_flow_holds_a_seed(daemon: Daemon) -> None:
    seeds = {"hex": secrets.token_bytes(20), "b32": secrets.token_bytes(32),
             "csv": secrets.token_bytes(20), "pskc": secrets.token_bytes(64)}
    serials = {k: f"BYVAL-{k.upper()}-{secrets.token_hex(3)}" for k in seeds}
    rec = Recorder()
    with daemon.client(event_hooks={"response": [rec]}) as http, \
            daemon.client("verifier", event_hooks={"response": [rec]}) as ver:
        def ok(r: httpx.Response, *status: int) -> Any:
            assert r.status_code in (status or (200,)), r.text
            return r.json() if "json" in r.headers.get("content-type", "") else None

        ok(http.post("/v1/tokens", json={"serial": serials["hex"],
                                         "secret_hex": seeds["hex"].hex()}), 201)
        ok(http.post("/v1/tokens", json={"serial": serials["b32"], "secret_b32":
                                         base64.b32encode(seeds["b32"]).decode(),
                                         "hash": "sha256"}), 201)
        # refusals that might echo what was sent
        ok(http.post("/v1/tokens", json={"serial": serials["hex"],
                                         "secret_hex": seeds["hex"].hex()}), 409)
        ok(http.post("/v1/tokens", json={"serial": "BYVAL-SHORT", "secret_hex":
                                         seeds["csv"][:8].hex()}), 400)
        csv = (f"serial,secret_hex,kind,digits,period_or_counter,hash\n"
               f"{serials['csv']},{seeds['csv'].hex()},totp,6,30,sha1\n")
        ok(http.post("/v1/tokens/import", json={"format": "csv", "content": csv}))
        ok(http.post("/v1/tokens/import", json={"format": "csv", "content": csv}), 409, 400)
        ok(http.post("/v1/tokens/import", json={"format": "pskc", "content":
                                                _pskc(serials["pskc"], seeds["pskc"])}))
        for serial in serials.values():
            ok(http.get(f"/v1/tokens/{serial}"))
        ok(http.get("/v1/tokens", params={"limit": 500}))
        # a token's life: enable, verify, replay, wrong code, resync, unlock, deactivate
        totp = pyotp.TOTP(base64.b32encode(seeds["hex"]).decode())
        now = clear_of_step_edge()
        ok(http.post("/v1/users/byval-ann/devices", json={
            "serial": serials["hex"], "code1": totp.at(now - 30), "code2": totp.at(now)}), 201)
        code = totp.at(now + 30)
        assert ok(ver.post("/v1/verify", json={"user": "byval-ann", "code": code}))["ok"]
        assert not ok(ver.post("/v1/verify", json={"user": "byval-ann", "code": code}))["ok"]
        ok(ver.post("/v1/verify", json={"user": "byval-ann", "code": "000000"}))
        ok(ver.post(f"/v1/users/byval-ann/devices/{serials['hex']}/resync",
                    json={"code1": totp.at(now + 90), "code2": totp.at(now + 120)}))
        ok(http.post(f"/v1/tokens/{serials['hex']}/unlock"))
        ok(http.get("/v1/users/byval-ann/devices"))
        ok(http.get("/v1/audit", params={"limit": 1000}))
        ok(http.get("/metrics"))
        ok(http.get("/openapi.json"))
        ok(http.delete(f"/v1/users/byval-ann/devices/{serials['hex']}"), 204)
        for serial in serials.values():
            ok(http.delete(f"/v1/tokens/{serial}"), 204)
    assert len(rec.seen) >= 25
    assert rec.leaks(seeds) == []
    # the check itself finds a seed where there is one, in any of its spellings
    probe = Recorder()
    probe.seen = [("probe", b'{"x":"' + base64.b32encode(seeds["b32"]).lower().rstrip(b"=")
                   + b'"}')]
    assert probe.leaks(seeds) == ["b32 in probe"] * len(
        [f for f in encodings(seeds["b32"]) if f in probe.seen[0][1]])

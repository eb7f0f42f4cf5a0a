"""The console's security properties, on the real application (in-process, the time passed
in): CSRF on every POST, expiring sessions, the verifier key's one page, escaping, and no
seed on any page but the one answer that creates a virtual device."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from validator.apikeys import KeyRing, Role, digest
from validator.service import Validator
from validator.ui.console import COOKIE, Console

ADMIN_KEY, VERIFIER_KEY = "admin-key-for-tests", "verifier-key-for-tests"
EVIL = "<script>alert(1)</script>"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Console, Clock, Validator]]:
    validator = Validator.open(tmp_path / "v.db")
    keys = KeyRing({Role.ADMIN: digest(ADMIN_KEY), Role.VERIFIER: digest(VERIFIER_KEY)})
    clock = Clock(1_800_000_000.0)
    console = Console(validator, keys, session_seconds=600, clock=clock)
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/ui", app=console.app())])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, console, clock, validator
    validator.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def sign_in(client: TestClient, key: str = ADMIN_KEY) -> str:
    csrf = csrf_of(client.get("/ui/login").text)
    r = client.post("/ui/login", data={"key": key, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/ui/tester").text)


def post_routes(console: Console) -> list[str]:
    return sorted({r.path for r in console.app().routes
                   if isinstance(r, Route) and "POST" in (r.methods or ())})


def test_every_post_without_a_valid_csrf_token_is_403(world: Any) -> None:
    client, console, _, _ = world
    posts = post_routes(console)
    assert len(posts) >= 12, posts  # the test must see every form
    # before sign-in (the sign-in form included) and after it
    for signed_in in (False, True):
        if signed_in:
            good = sign_in(client)
        for path in posts:
            # one character of the real token changed: the first, which carries six bits
            # of it (a base64 token's last character may carry padding bits only)
            wrong = ("B" if good[0] == "A" else "A") + good[1:] if signed_in else "nope"
            for form in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": wrong}):
                r = client.post(f"/ui{path}", data={**form, "user": "alice", "key": ADMIN_KEY})
                assert r.status_code == 403, (path, form, r.status_code)
    # a token from another session is not valid either
    other = TestClient(client.app, base_url="http://127.0.0.1")
    other_csrf = sign_in(other)
    r = client.post("/ui/tester", data={"csrf": other_csrf, "user": "alice", "code": "1"})
    assert r.status_code == 403
    # and the right one works (so the 403s above were about the token)
    r = client.post("/ui/tester", data={"csrf": good, "user": "alice", "code": ""})
    assert r.status_code == 200 and "an MFA code is required" in r.text


def test_a_json_or_multipart_post_is_refused_too(world: Any) -> None:
    client, _, _, _ = world
    csrf = sign_in(client)
    r = client.post("/ui/tester", json={"csrf": csrf, "user": "alice", "code": ""})
    assert r.status_code == 403


def test_the_session_cookie_is_httponly_strict_and_expires(world: Any) -> None:
    client, console, clock, _ = world
    csrf = csrf_of(client.get("/ui/login").text)
    r = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf": csrf},
                    follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=600" in cookie and "Path=/ui/" in cookie
    assert client.get("/ui/tokens", follow_redirects=False).status_code == 200
    clock.t += 599
    assert client.get("/ui/tokens", follow_redirects=False).status_code == 200
    clock.t += 2  # the session has expired on the server, whatever the browser keeps
    r = client.get("/ui/tokens", follow_redirects=False)
    assert r.status_code == 303 and "/ui/login" in r.headers["location"]
    r = client.post("/ui/tester", data={"csrf": csrf, "user": "alice", "code": "123456"})
    assert r.status_code == 403


def test_sign_out_ends_the_session_on_the_server(world: Any) -> None:
    client, _, _, _ = world
    csrf = sign_in(client)
    stolen = client.cookies.get(COOKIE)
    r = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.set(COOKIE, stolen)  # the old cookie replayed: dead
    assert client.get("/ui/tokens", follow_redirects=False).status_code == 303


def test_a_wrong_key_is_refused_and_a_session_id_is_not_carried_over(world: Any) -> None:
    client, _, _, _ = world
    login = client.get("/ui/login")
    before = client.cookies.get(COOKIE)
    r = client.post("/ui/login", data={"key": "wrong", "csrf": csrf_of(login.text)})
    assert r.status_code == 401 and "neither the admin key" in r.text
    sign_in(client)
    assert client.cookies.get(COOKIE) != before  # a new id at sign-in: no fixation


def test_the_verifier_key_reaches_only_the_tester(world: Any) -> None:
    client, console, _, _ = world
    csrf = sign_in(client, VERIFIER_KEY)
    gets = sorted({r.path for r in console.app().routes if isinstance(r, Route)
                   and "GET" in (r.methods or ()) and r.path not in
                   ("/", "/login", "/tester", "/static/{name}")})
    assert "/tokens" in gets and "/aws-keys" in gets
    for path in gets:
        r = client.get(f"/ui{path}?name=alice&serial=x", follow_redirects=False)
        assert r.status_code == 403, path
        assert "only the sign-in tester" in r.text
    for path in post_routes(console):
        if path not in ("/tester", "/logout", "/login"):
            r = client.post(f"/ui{path}", data={"csrf": csrf, "user": "alice"})
            assert r.status_code == 403, path
    assert client.get("/ui/tester").status_code == 200
    r = client.get("/ui/", follow_redirects=False)
    assert r.headers["location"].endswith("/ui/tester")


def test_pages_escape_what_they_echo(world: Any) -> None:
    client, _, _, validator = world
    validator.register_token(EVIL, b"k" * 20)
    csrf = sign_in(client)
    for path in ("/ui/tokens", f"/ui/token?serial={EVIL}", f"/ui/tokens?q={EVIL}",
                 "/ui/audit?serial=" + EVIL, "/ui/audit?request_id=" + EVIL,
                 f"/ui/users?open={EVIL}"):
        r = client.get(path)
        assert r.status_code in (200, 400), path
        assert EVIL not in r.text, path
        assert "&lt;script&gt;" in r.text, path
    r = client.post("/ui/tester", data={"csrf": csrf, "user": EVIL, "code": "1"})
    assert r.status_code == 400 and EVIL not in r.text and "&lt;script&gt;" in r.text
    r = client.post("/ui/user/mfa/enable", data={"csrf": csrf, "user": "alice",
                                                 "serial": EVIL, "code1": "123456",
                                                 "code2": "654321"})
    assert r.status_code == 400 and EVIL not in r.text and "&lt;script&gt;" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_a_seed_is_shown_once_at_creation_and_never_again(world: Any) -> None:
    import base64

    client, _, _, _ = world
    csrf = sign_in(client)
    r = client.post("/ui/user/mfa/virtual", data={"csrf": csrf, "user": "carol",
                                                  "device_name": "carol-phone"})
    assert r.status_code == 200
    secret = re.search(r'id="secret">([A-Z2-7]+)<', r.text).group(1)
    assert 'id="qr" src="data:image/png;base64,' in r.text
    assert r.headers["cache-control"] == "no-store"
    seed_hex = base64.b32decode(secret + "=" * (-len(secret) % 8)).hex()
    # a failed Enable gets the form back without the QR code or the secret
    r = client.post("/ui/user/mfa/enable", data={"csrf": csrf, "user": "carol",
                                                 "mode": "virtual", "serial": "mfa/carol-phone",
                                                 "code1": "000000", "code2": "000001"})
    assert r.status_code == 400 and "not two consecutive codes" in r.text
    pages = [r.text]
    for path in ("/ui/tokens", "/ui/token?serial=mfa/carol-phone", "/ui/user?name=carol",
                 "/ui/audit", "/ui/users", "/ui/tokens?q=carol"):
        pages.append(client.get(path).text)
    for html in pages:
        assert secret not in html and seed_hex not in html.lower()
        assert "data:image/png" not in html
    # the same device name again is refused next to the field, creating nothing
    r = client.post("/ui/user/mfa/virtual", data={"csrf": csrf, "user": "carol",
                                                  "device_name": "carol-phone"})
    assert r.status_code == 409 and "exists already" in r.text and 'id="secret"' not in r.text


def test_errors_stand_next_to_their_field(world: Any) -> None:
    client, _, _, _ = world
    csrf = sign_in(client)
    r = client.post("/ui/user/mfa/enable", data={"csrf": csrf, "user": "dave",
                                                 "mode": "hardware", "serial": "NOPE1",
                                                 "code1": "12", "code2": ""})
    assert r.status_code == 400
    assert re.search(r'id="f-code1"[^>]*aria-invalid="true"', r.text)
    assert 'id="e-code1">A code is 6 or 8 digits.' in r.text
    assert 'id="e-code2">Type the code the device shows.' in r.text
    r = client.post("/ui/user/mfa/enable", data={"csrf": csrf, "user": "dave",
                                                 "mode": "hardware", "serial": "NOPE1",
                                                 "code1": "123456", "code2": "654321"})
    assert 'id="e-serial">no token with serial' in r.text


def test_a_huge_form_is_refused_and_the_console_lives_on(world: Any) -> None:
    client, _, _, _ = world
    csrf = sign_in(client)
    r = client.post("/ui/tester", data={"csrf": csrf, "user": "a" * 20_000, "code": ""})
    assert r.status_code == 413
    assert client.get("/ui/tester").status_code == 200


def test_a_locked_token_shows_its_lock_and_unlocks(world: Any) -> None:
    import pyotp

    client, _, clock, validator = world
    clock.t = __import__("time").time()  # the service verifies at its own clock: the same
    seed = b"s" * 20
    validator.register_token("GAHT55500055", seed, now=clock.t)
    totp = pyotp.TOTP(__import__("base64").b32encode(seed).decode())
    validator.enable("frank", "GAHT55500055", totp.at(clock.t - 30), totp.at(clock.t),
                     now=clock.t)
    csrf = sign_in(client)
    for _ in range(6):  # wrong codes through the tester until the token locks
        client.post("/ui/tester", data={"csrf": csrf, "user": "frank", "code": "000000"})
    page = client.get("/ui/token?serial=GAHT55500055").text
    assert re.search(r'id="lock"><strong[^>]*>locked</strong> for \d+ s more', page)
    r = client.post("/ui/tester", data={"csrf": csrf, "user": "frank", "code": "000000"})
    assert 'data-reason="locked"' in r.text
    r = client.post("/ui/token/unlock", data={"csrf": csrf, "serial": "GAHT55500055"},
                    follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/ui/token?serial=GAHT55500055").text
    assert 'id="lock">not locked' in page and 'id="failures">0<' in page


def test_tokens_page_search_filter_and_paging(world: Any) -> None:
    client, _, clock, validator = world
    for i in range(30):
        validator.register_token(f"GAHT{i:08d}", b"k" * 20, now=clock.t)
    sign_in(client)
    first = client.get("/ui/tokens").text
    assert first.count('href="/ui/token?serial=GAHT') == 25 and "1–25" in first
    next_url = re.search(r'href="(\?[^"]*offset=25[^"]*)">Next', first).group(1)
    second = client.get("/ui/tokens" + next_url.replace("&amp;", "&")).text
    assert second.count('href="/ui/token?serial=GAHT') == 5 and "Next" not in second
    found = client.get("/ui/tokens?q=ht0000002").text
    assert found.count('href="/ui/token?serial=GAHT') == 10  # GAHT00000020-29
    assert client.get("/ui/tokens?assigned=yes").text.count("/ui/token?serial=") == 0
    audit = client.get("/ui/audit").text
    serials = re.findall(r'<td class="mono">(GAHT\d+)</td>', audit)
    assert serials[:2] == ["GAHT00000029", "GAHT00000028"]  # newest first


def test_the_audit_page_shows_and_finds_an_entrys_request(world: Any) -> None:
    from validator.logs import REQUEST_ID

    client, _, clock, validator = world
    validator.register_token("GAHT00000100", b"k" * 20, now=clock.t)
    token = REQUEST_ID.set("0123456789abcdef")  # as a request of the API would
    try:
        validator.register_token("GAHT00000101", b"k" * 20, now=clock.t)
    finally:
        REQUEST_ID.reset(token)
    sign_in(client)
    page = client.get("/ui/audit").text
    assert '<a class="mono muted" href="?request_id=0123456789abcdef">0123456789abcdef</a>' \
        in page
    found = client.get("/ui/audit?request_id=0123456789abcdef").text
    assert re.findall(r'<td class="mono">(GAHT\d+)</td>', found) == ["GAHT00000101"]
    assert 'name="request_id" value="0123456789abcdef"' in found


def test_fuzzed_forms_never_break_the_console(world: Any) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client, console, _, _ = world
    csrf = sign_in(client)
    posts = post_routes(console)
    text = st.text(max_size=80)

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(path=st.sampled_from(posts), fields=st.dictionaries(
        st.sampled_from(["user", "serial", "code", "code1", "code2", "mode", "device_name",
                         "confirm", "station", "format", "content", "passphrase", "key",
                         "access_key_id", "next", "provision"]), text, max_size=6),
        raw=st.one_of(st.none(), st.binary(max_size=200)))
    def post(path: str, fields: dict[str, str], raw: bytes | None) -> None:
        if path in ("/logout", "/login"):
            return  # these end or replace the session the other examples need
        if raw is not None:
            r = client.post(f"/ui{path}", content=b"csrf=" + csrf.encode() + b"&" + raw,
                            headers={"content-type": "application/x-www-form-urlencoded"})
        else:
            r = client.post(f"/ui{path}", data={**fields, "csrf": csrf})
        assert r.status_code in (200, 303, 400, 401, 403, 404, 409, 413), (path, r.status_code)
        assert "text/html" in r.headers.get("content-type", "") or r.status_code == 303

    post()

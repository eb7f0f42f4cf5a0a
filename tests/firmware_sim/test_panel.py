"""The token panel without a browser: it binds loopback only unless told, its buttons need
the page's token and a loopback Host, and its QA controls reach a real token (on TCP) through
the protocol."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from firmware_sim.background import serve_token
from firmware_sim.panel import PanelError, bind, check_bind, parse_span, parse_time, serve_panel
from tools.cli import main


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_a_non_loopback_address_is_refused_unless_told(host: str) -> None:
    with pytest.raises(PanelError, match="loopback only"):
        check_bind(host, allow_remote=False)
    check_bind(host, allow_remote=True)  # told: allowed (never bound here: tests stay local)
    with pytest.raises(PanelError):
        bind(host, 0)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_fine(host: str) -> None:
    check_bind(host, allow_remote=False)


def test_the_cli_refuses_a_non_loopback_bind_in_one_line() -> None:
    out = CliRunner().invoke(main, ["sim", "panel", "--port", "socket://127.0.0.1:9",
                                    "--host", "0.0.0.0"])
    assert out.exit_code == 1
    assert "loopback only" in out.output and "--allow-remote" in out.output
    out = CliRunner().invoke(main, ["sim", "panel"])
    assert out.exit_code == 1 and "no tokens" in out.output


def test_spans_and_times() -> None:
    assert parse_span("365d") == 365 * 86_400_000
    assert parse_span("90s") == 90_000 and parse_span("1.5h") == 5_400_000
    assert parse_span("1y") == 365 * 86_400_000
    assert parse_time("2030-01-01T00:00:00") == 1_893_456_000_000
    assert parse_time("1893456000") == 1_893_456_000_000
    for bad in ("", "-5d", "1w", "101y", "nan", "1e9d"):
        with pytest.raises(PanelError):
            parse_span(bad)
    with pytest.raises(PanelError):
        parse_time("next tuesday")


def test_buttons_need_the_page_token_and_a_loopback_host(tmp_path: Path) -> None:
    with serve_token(model="keyfob", qa=True, seed=bytes(20), pty=False,
                     tcp=("127.0.0.1", 0), state_dir=tmp_path, durable=False) as token, \
            serve_panel([token.url]) as url:
        page = httpx.get(url)
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        secret = re.search(r'name="panel-token" content="([^"]+)"', page.text).group(1)
        serial = httpx.get(url + "state").json()["tokens"][0]["serial"]
        body = {"token": serial, "action": "drift", "value": "12.5"}
        assert httpx.post(url + "api/qa", json=body).status_code == 403
        assert httpx.post(url + "api/qa", json=body,
                          headers={"X-Panel-Token": "x" + secret}).status_code == 403
        rebound = httpx.post(url + "api/qa", json=body, headers={
            "X-Panel-Token": secret, "Host": "evil.example:80"})
        assert rebound.status_code == 421
        ok = httpx.post(url + "api/qa", json=body, headers={"X-Panel-Token": secret})
        assert ok.status_code == 200 and ok.json()["token"]["drift_ppm"] == 12.5
        bad = httpx.post(url + "api/qa", json={**body, "value": "lots"},
                         headers={"X-Panel-Token": secret})
        assert bad.status_code == 400 and "number" in bad.json()["error"]
        # the drift reached the token itself: `foblab token clock` reads it back
        out = CliRunner().invoke(main, ["token", "clock", token.url, "--json"])
        assert '"drift_ppm": 12.5' in out.output
        pressed = httpx.post(url + "api/press", json={"token": serial},
                             headers={"X-Panel-Token": secret}).json()
        assert re.fullmatch(r"[0-9]{6}", pressed["code"])
        assert re.fullmatch(r"[0-9]{6}", pressed["token"]["code"])  # lit (this step or the next)
        _fuzz(url, secret, serial)


def _fuzz(url: str, secret: str, serial: str) -> None:
    """Whatever a page posts, the panel answers 200, 400 or 403 and stays up."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                       st.text(max_size=30), st.lists(st.integers(), max_size=3))

    @settings(max_examples=20, deadline=None)
    @given(what=st.sampled_from(["qa", "press", "nothing"]),
           body=st.one_of(
               st.fixed_dictionaries({"token": st.just(serial), "action": st.sampled_from(
                   ["drift", "temperature", "age", "jump", "set-time", "battery", "x"]),
                   "value": values}),
               st.dictionaries(st.text(max_size=8), values, max_size=3)),
           raw=st.one_of(st.none(), st.binary(max_size=64)))
    def post(what: str, body: dict[str, object], raw: bytes | None) -> None:
        headers = {"X-Panel-Token": secret, "Content-Type": "application/json"}
        if raw is not None:
            r = httpx.post(url + f"api/{what}", content=raw, headers=headers)
        else:
            if body.get("action") == "battery":
                body["value"] = "replaced"  # a dead battery would blank the other examples
            # json.dumps, not httpx's json=: a page (or an attacker) can send NaN and
            # Infinity, which httpx refuses to encode
            r = httpx.post(url + f"api/{what}", content=json.dumps(body).encode(),
                           headers=headers)
        assert r.status_code in (200, 400), (what, body, raw, r.status_code, r.text)

    post()
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):  # not numbers a crystal has
        r = httpx.post(url + "api/qa", headers={"X-Panel-Token": secret,
                                                 "Content-Type": "application/json"},
                       content=f'{{"token": "{serial}", "action": "drift", '
                               f'"value": {number}}}'.encode())
        assert r.status_code == 400, (number, r.status_code, r.text)
    assert httpx.get(url + "state").status_code == 200

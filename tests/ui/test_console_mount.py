"""The console's hook into the daemon's application: on by default at /ui/, off with
`ui = false`, and the config keys checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from validator import config
from validator.apikeys import KeyRing, Role, digest
from validator.app import create_app
from validator.service import Validator


def _client(tmp_path: Path, **changes: object) -> TestClient:
    settings = config.parse({}, tmp_path).replace(aws={}, **changes)
    validator = Validator.open(settings.database)
    keys = KeyRing({Role.ADMIN: digest("a" * 20), Role.VERIFIER: digest("v" * 20)})
    return TestClient(create_app(validator, keys, settings),
                      base_url="http://127.0.0.1")


def test_the_console_is_on_by_default(tmp_path: Path) -> None:
    client = _client(tmp_path)
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"].endswith("/ui/")
    r = client.get("/ui/", follow_redirects=False)
    assert r.status_code == 303 and "/ui/login" in r.headers["location"]
    r = client.get("/ui/login")
    assert r.status_code == 200 and "Sign in" in r.text
    assert client.get("/healthz").status_code == 200  # the API is untouched


def test_ui_false_turns_it_off(tmp_path: Path) -> None:
    client = _client(tmp_path, ui=False)
    r = client.get("/ui/login")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_the_config_keys() -> None:
    base = Path("/tmp")
    s = config.parse({"validator": {"ui": False, "ui_session_seconds": 90}}, base)
    assert s.ui is False and s.ui_session_seconds == 90.0
    assert config.parse({}, base).ui is True
    for bad in ({"ui": "yes"}, {"ui_session_seconds": 0}, {"ui_session_seconds": 10**9}):
        with pytest.raises(config.ConfigError):
            config.parse({"validator": bad}, base)
    assert config.default_document()["validator"]["ui"] is True

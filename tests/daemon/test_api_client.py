"""tools.api_client against the real daemon: every operation, quoting, and one error type."""

from __future__ import annotations

import socket

import pytest
from daemon_helpers import Daemon

from tools.api_client import ApiClient, ApiError

SECRET_HEX = "3132333435363738393031323334353637383930"


def test_every_operation_round_trips(daemon: Daemon) -> None:
    serial = "AC/odd?#%&+"  # characters a path must quote (serials are printable ASCII)
    with ApiClient(daemon.url, daemon.admin, timeout=30) as api:
        assert api.health() == {"status": "ok"}
        made = api.create_token({"serial": serial, "secret_hex": SECRET_HEX})
        assert made["serial"] == serial
        assert api.get_token(serial)["serial"] == serial  # quoted: / ? # % survive
        assert api.unlock_token(serial)["failures"] == 0
        listed = api.list_tokens(unassigned=True, limit=1000)
        assert serial in [t["serial"] for t in listed["tokens"]]
        user = "client.user@example"
        assert api.list_devices(user) == {"user": user, "devices": []}
        verdict = api.verify(user, "123456")
        assert verdict["ok"] is False and verdict["reason"] == "no_device"  # an answer
        entries = api.audit(serial=serial, limit=10)["entries"]
        assert [e["action"] for e in entries][:1] == ["register"]
        assert "stations" in api.list_stations()
        api.delete_token(serial)
        with pytest.raises(ApiError) as gone:
            api.get_token(serial)
    err = gone.value
    assert (err.status, err.error) == (404, "unknown_serial") and err.refused
    assert serial in err.message and str(err) == f"{err.message} (unknown_serial, HTTP 404)"


def test_refusals_carry_the_api_error_and_extra_fields(daemon: Daemon) -> None:
    with ApiClient(daemon.url, daemon.admin, timeout=30) as api:
        api.create_token({"serial": "AC-REFUSE-1", "secret_hex": SECRET_HEX})
        with pytest.raises(ApiError) as refused:
            api.enable_device("client.refused", "AC-REFUSE-1", "000000", "000001")
        api.delete_token("AC-REFUSE-1")
    err = refused.value
    assert (err.status, err.error) == (400, "invalid_authentication_code")
    assert err.data["reason"] == "invalid_code"


def test_a_wrong_key_is_an_api_error_not_a_refusal_of_the_step(daemon: Daemon) -> None:
    with ApiClient(daemon.url, "not-a-key", timeout=30) as api, \
            pytest.raises(ApiError) as denied:
        api.list_tokens()
    assert (denied.value.status, denied.value.error) == (401, "unauthorized")


def test_unreachable_and_bad_urls() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ApiClient(f"http://127.0.0.1:{port}", "k", timeout=5) as api, \
            pytest.raises(ApiError) as down:
        api.health()
    assert down.value.status is None and down.value.error == "unreachable"
    assert str(down.value).startswith(f"cannot reach http://127.0.0.1:{port}")
    assert not down.value.refused
    with pytest.raises(ApiError) as bad:
        with ApiClient("http://[::1", "k") as api:
            api.health()
    assert bad.value.error in ("bad_url", "unreachable") and bad.value.status is None

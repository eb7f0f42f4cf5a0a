"""[radius] in foblab.toml: every mistake one line, caught before anything is served; the
listener on a real UDP socket survives whatever datagrams arrive."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validator.config import ConfigError, parse, parse_listen
from validator.core import Policy
from validator.service import Validator

try:
    import pyrad  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("pyrad (the radius extra) is not installed", allow_module_level=True)

from validator.daemon import StartupError  # noqa: E402
from validator.daemon import _radius as start_radius  # noqa: E402
from validator.radius import codec  # noqa: E402
from validator.radius.server import Client, RadiusDoor, RadiusListener, bind  # noqa: E402


def _radius(**table: Any) -> dict[str, Any]:
    return {"radius": table}


GOOD = {"name": "vpn", "address": "10.0.0.0/8", "secret": "s"}


def test_a_good_table(tmp_path: Path) -> None:
    s = parse(_radius(listen="0.0.0.0:1812", clients=[
        GOOD, {"name": "pam", "address": "192.0.2.7", "secret_file": "pam.secret",
               "legacy": True}]), tmp_path)
    assert s.radius is not None
    assert (s.radius.host, s.radius.port) == ("0.0.0.0", 1812)
    vpn, pam = s.radius.clients
    assert vpn.network == ipaddress.ip_network("10.0.0.0/8") and not vpn.legacy
    assert pam.secret_file == tmp_path / "pam.secret" and pam.legacy
    assert "'s'" not in repr(vpn)  # the secret is kept out of reprs
    assert parse({}, tmp_path).radius is None  # no table: no door


@pytest.mark.parametrize("table, words", [
    ({"listen": "1812"}, "HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, "HOST:PORT"),
    ({"port": 1812}, "unknown key"),
    ({"clients": [{**GOOD, "address": "10.0.0.300"}]}, "IP address or a CIDR"),
    ({"clients": [{"name": "vpn", "address": "10.0.0.1"}]}, "secret_file or secret"),
    ({"clients": [{**GOOD, "secret_file": "x"}]}, "secret_file or secret"),
    ({"clients": [{**GOOD, "secret": ""}]}, "non-empty"),
    ({"clients": [GOOD, GOOD]}, "used twice"),
    ({"clients": [{**GOOD, "name": "bad name"}]}, "letters, digits"),
    ({"clients": [{**GOOD, "legacy": "yes"}]}, "must be a bool"),
    ({"clients": [{**GOOD, "secrets": "s"}]}, "unknown key"),
    ({"clients": {"name": "vpn"}}, "array of tables"),
])
def test_mistakes_are_one_line(tmp_path: Path, table: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        parse(_radius(**table), tmp_path)
    assert "\n" not in str(info.value)


def test_listen_forms() -> None:
    assert parse_listen("[::1]:1812") == ("::1", 1812)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)


def test_start_up_refuses_a_readable_or_missing_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "vpn.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    table = _radius(listen="127.0.0.1:0", clients=[
        {"name": "vpn", "address": "127.0.0.1", "secret_file": "vpn.secret"}])
    with pytest.raises(StartupError, match="readable by others"):
        start_radius(parse(table, tmp_path))
    secret.unlink()
    with pytest.raises(StartupError, match="does not exist"):
        start_radius(parse(table, tmp_path))
    with pytest.raises(StartupError, match="no \\[\\[radius.clients\\]\\]"):
        start_radius(parse(_radius(listen="127.0.0.1:0"), tmp_path))


def test_start_up_refuses_a_port_in_use(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        table = _radius(listen=f"127.0.0.1:{taken.getsockname()[1]}", clients=[GOOD])
        with pytest.raises(StartupError, match="cannot listen for RADIUS"):
            start_radius(parse(table, tmp_path))
    finally:
        taken.close()


def test_serve_radius_needs_a_table(tmp_path: Path) -> None:
    from tools.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
    from daemon_helpers import init_dir  # type: ignore[import-not-found]

    init_dir(tmp_path / "home")
    result = CliRunner().invoke(main, ["validator", "serve", "--dir", str(tmp_path / "home"),
                                       "--radius", "127.0.0.1:0"])
    assert result.exit_code == 1
    assert "--radius needs a [radius] table" in result.output


# -- the listener on a real socket ---------------------------------------------------------

@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Any:
    v = Validator.open(tmp_path_factory.mktemp("l") / "v.db", policy=Policy())
    door = RadiusDoor(v, [Client("vpn", ipaddress.ip_network("127.0.0.1/32"), b"s")],
                      log_requests=False)
    running = RadiusListener(door, bind("127.0.0.1", 0))
    running.start()
    yield running
    running.stop()
    v.close()


def _ask(address: tuple[str, int]) -> bytes:
    request = codec.access_request("nobody", "123456", b"s")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(request.RequestPacket(), address)
        data = s.recv(4096)
    reply = codec.read_reply(request, data)
    assert reply is not None and reply.code == codec.ACCESS_REJECT
    return data


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datagrams=st.lists(st.one_of(
    st.binary(min_size=0, max_size=4200),
    st.binary(min_size=20, max_size=300).map(lambda b: b"\x01" + b[1:]),
), min_size=1, max_size=8))
def test_fuzzed_datagrams_never_stop_the_listener(listener: RadiusListener,
                                                  datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, listener.address)
    _ask(listener.address)  # still answering, in order behind the garbage
    assert listener.door.dropped["error"] == 0

"""The RADIUS exchange without a socket: RadiusDoor.handle over a real SQLite validator,
every call passing `now` in. Requests are built with pyrad (the codec's client half) and
answers checked with pyrad's own reply verification."""

from __future__ import annotations

import base64
import ipaddress
import os
from collections import OrderedDict
from pathlib import Path

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validator.core import Policy
from validator.service import Validator

try:
    import pyrad  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("pyrad (the radius extra) is not installed", allow_module_level=True)

from validator.radius import codec  # noqa: E402
from validator.radius.server import (  # noqa: E402
    CHALLENGE,
    LOCKED,
    REPLAYED,
    STALE,
    WRONG,
    Client,
    RadiusDoor,
)

NOW = 1_700_000_000.0
YEAR = 365 * 86_400.0
SECRET = b"s3cret-vpn"
HOTP_KEY = b"12345678901234567890"
TOTP_KEY = b"abcdefghijabcdefghij"
VPN = ("127.0.0.1", 40000)
OTHER = ("127.0.0.2", 40000)


def hotp(counter: int) -> str:
    return pyotp.HOTP(base64.b32encode(HOTP_KEY).decode()).at(counter)


def totp_at(step: int) -> str:
    """The TOTP code of `step` (a TOTP code is the HOTP code of its time step)."""
    return pyotp.HOTP(base64.b32encode(TOTP_KEY).decode()).at(step)


@pytest.fixture
def validator(tmp_path: Path):
    v = Validator.open(tmp_path / "v.db", policy=Policy())
    v.register_token("HOTP1", HOTP_KEY, kind="hotp", now=NOW - YEAR)
    v.enable("alice", "HOTP1", hotp(0), hotp(1), now=NOW - YEAR)
    # carol's TOTP token was enabled a year ago: where its clock is now is uncertain by
    # up to 100 ppm of a year (about 3,150 s), so a code a few steps out is a near miss.
    v.register_token("TOTP1", TOTP_KEY, now=NOW - YEAR - 60)
    step = int((NOW - YEAR) // 30)
    v.enable("carol", "TOTP1", totp_at(step - 1), totp_at(step), now=NOW - YEAR)
    yield v
    v.close()


@pytest.fixture
def door(validator: Validator) -> RadiusDoor:
    clients = [Client("vpn", ipaddress.ip_network("127.0.0.1/32"), SECRET),
               Client("pam", ipaddress.ip_network("127.0.0.2/32"), b"legacy-secret",
                      legacy=True)]
    return RadiusDoor(validator, clients, log_requests=False)


def ask(door: RadiusDoor, user: str, code: str, *, now: float = NOW, secret: bytes = SECRET,
        address: tuple[str, int] = VPN, state: bytes | None = None, ma: bool = True,
        proxy_state: bytes | None = None) -> tuple[codec.Reply | None, bytes | None]:
    request = codec.access_request(user, code, secret, state=state, message_authenticator=ma)
    if proxy_state is not None:
        request["Proxy-State"] = proxy_state
    data = request.RequestPacket()
    out = door.handle(data, address, now)
    if out is None:
        return None, None
    reply = codec.read_reply(request, out)
    assert reply is not None, "the answer must verify with the client's secret"
    return reply, out


def test_accept_then_replay_then_wrong(door: RadiusDoor, validator: Validator) -> None:
    reply, raw = ask(door, "alice", hotp(2))
    assert reply is not None and reply.code == codec.ACCESS_ACCEPT
    assert reply.first_attribute == 80  # Message-Authenticator first
    reply, _ = ask(door, "alice", hotp(2), now=NOW + 1)
    assert reply is not None and reply.code == codec.ACCESS_REJECT
    assert reply.message == REPLAYED
    reply, _ = ask(door, "alice", "000000", now=NOW + 2)
    assert reply is not None and (reply.code, reply.message) == (codec.ACCESS_REJECT, WRONG)
    rows = validator.audit(user="alice", action="verify")
    assert [(r.result, r.reason, r.via, r.client) for r in rows] == [
        ("ok", "accepted", "radius", "vpn"), ("refused", "replayed", "radius", "vpn"),
        ("refused", "invalid_code", "radius", "vpn")]


def test_unknown_user_reads_like_a_wrong_code(door: RadiusDoor) -> None:
    for user in ("mallory", "bad user!", "x" * 200):
        reply, _ = ask(door, user, "123456")
        assert reply is not None and (reply.code, reply.message) == (codec.ACCESS_REJECT, WRONG)


def test_locked_after_the_failure_limit(door: RadiusDoor) -> None:
    for i in range(5):
        ask(door, "alice", "999999", now=NOW + i)
    reply, _ = ask(door, "alice", hotp(2), now=NOW + 10)
    assert reply is not None and reply.code == codec.ACCESS_REJECT
    assert reply.message == LOCKED.format(24)  # the 5th failure at +4 s locked it for 30 s
    reply, _ = ask(door, "alice", hotp(2), now=NOW + 35)  # the lock lifted
    assert reply is not None and reply.code == codec.ACCESS_ACCEPT


def test_message_authenticator_required_unless_legacy(door: RadiusDoor) -> None:
    assert ask(door, "alice", hotp(2), ma=False) == (None, None)
    assert door.dropped["no_message_authenticator"] == 1
    reply, raw = ask(door, "alice", hotp(2), ma=False, address=OTHER, secret=b"legacy-secret")
    assert reply is not None and reply.code == codec.ACCESS_ACCEPT
    assert raw is not None and raw[20] == 80  # a legacy client still gets one


def test_wrong_secret_and_unknown_client_are_dropped(door: RadiusDoor) -> None:
    assert ask(door, "alice", hotp(2), secret=b"wrong") == (None, None)
    assert door.dropped["bad_authenticator"] == 1
    assert ask(door, "alice", hotp(2), address=("10.1.2.3", 1812)) == (None, None)
    assert door.dropped["unknown_client"] == 1
    reply, _ = ask(door, "alice", hotp(2))  # nothing was spent by the dropped ones
    assert reply is not None and reply.code == codec.ACCESS_ACCEPT
    from validator.http.metrics import Metrics

    scraped = Metrics()  # as the daemon scrapes the door: its families in the registry
    scraped.add_collector(door.collect_metrics)
    metrics = scraped.render().decode()
    assert 'foblab_radius_dropped_total{reason="bad_authenticator"} 1.0' in metrics
    assert 'foblab_radius_dropped_total{reason="unknown_client"} 1.0' in metrics


def test_a_retransmission_gets_the_cached_answer(door: RadiusDoor,
                                                 validator: Validator) -> None:
    request = codec.access_request("alice", hotp(2), SECRET)
    data = request.RequestPacket()
    first = door.handle(data, VPN, NOW)
    again = door.handle(data, VPN, NOW + 2)
    assert first is not None and again == first
    reply = codec.read_reply(request, first)
    assert reply is not None and reply.code == codec.ACCESS_ACCEPT
    assert len(validator.audit(user="alice", action="verify")) == 1  # verified once
    assert door.duplicates == 1
    late = door.handle(data, VPN, NOW + 10)  # past the duplicate window: a replay now
    assert late is not None
    reply = codec.read_reply(request, late)
    assert reply is not None and reply.message == REPLAYED


def test_proxy_state_is_echoed_after_our_attributes(door: RadiusDoor) -> None:
    reply, raw = ask(door, "alice", hotp(2), proxy_state=b"hop-1")
    assert reply is not None and raw is not None
    assert raw[20] == 80
    assert raw.endswith(b"\x21\x07hop-1")


def _near_miss_codes() -> tuple[str, str]:
    # the validator's centre step (typing allowance / 2); a token enabled a year ago gets
    # the widest window, ±4 steps, so a near miss lies beyond it
    step = int((NOW - 2.5) // 30)
    return totp_at(step + 6), totp_at(step + 7)


def test_near_miss_challenge_completes_a_resync(door: RadiusDoor,
                                                validator: Validator) -> None:
    miss, following = _near_miss_codes()
    reply, _ = ask(door, "carol", miss)
    assert reply is not None and reply.code == codec.ACCESS_CHALLENGE
    assert reply.message == CHALLENGE and reply.state is not None and len(reply.state) == 16
    reply2, _ = ask(door, "carol", following, state=reply.state, now=NOW + 20)
    assert reply2 is not None and reply2.code == codec.ACCESS_ACCEPT
    rows = validator.audit(user="carol", action="resync")
    assert [(r.result, r.via, r.client) for r in rows] == [("ok", "radius", "vpn")]
    # the State is single-use
    reply3, _ = ask(door, "carol", following, state=reply.state, now=NOW + 21)
    assert reply3 is not None and (reply3.code, reply3.message) == (codec.ACCESS_REJECT, STALE)


@pytest.mark.parametrize("change", ["expired", "other_user", "other_client"])
def test_a_state_is_bound_to_user_client_and_a_minute(door: RadiusDoor, change: str) -> None:
    miss, following = _near_miss_codes()
    reply, _ = ask(door, "carol", miss)
    assert reply is not None and reply.state is not None
    kw: dict = {"state": reply.state, "now": NOW + 5}
    user = "carol"
    if change == "expired":
        kw["now"] = NOW + 61
    elif change == "other_user":
        user = "alice"
    else:
        kw.update(address=OTHER, secret=b"legacy-secret")
    reply2, _ = ask(door, user, following, **kw)
    assert reply2 is not None and (reply2.code, reply2.message) == (codec.ACCESS_REJECT, STALE)


def test_a_code_far_off_is_no_challenge(door: RadiusDoor) -> None:
    step = int(NOW // 30)
    reply, _ = ask(door, "carol", totp_at(step + 200))
    assert reply is not None and (reply.code, reply.message) == (codec.ACCESS_REJECT, WRONG)


def test_chap_is_refused_in_words(door: RadiusDoor) -> None:
    request = codec.access_request("alice", hotp(2), SECRET)
    OrderedDict.__delitem__(request, 2)
    request["CHAP-Password"] = b"\x01" + b"\x00" * 16
    out = door.handle(request.RequestPacket(), VPN, NOW)
    assert out is not None
    reply = codec.read_reply(request, out)
    assert reply is not None and reply.code == codec.ACCESS_REJECT
    assert "PAP" in (reply.message or "")


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda head, body: head + body,
              st.sampled_from([b"\x01", b"\x0c", b"\x02"]).map(
                  lambda c: c + b"\x07\x00\x40" + b"A" * 16),
              st.binary(max_size=200)),
), address=st.sampled_from([VPN, OTHER, ("10.0.0.1", 1)]))
def test_fuzz_never_raises(door: RadiusDoor, data: bytes, address: tuple[str, int]) -> None:
    out = door.handle(data, address, NOW)
    assert out is None or (isinstance(out, bytes) and 20 <= len(out) <= 4096)
    assert door.dropped["error"] == 0


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.text(max_size=80), code=st.text(max_size=40), flip=st.integers(0, 400))
def test_fuzz_signed_requests(door: RadiusDoor, user: str, code: str, flip: int) -> None:
    """Well-signed requests with any name and password, and the same with one byte
    changed (which must then be dropped or answered, never crash)."""
    request = codec.access_request("u", "0", SECRET)
    try:
        request["User-Name"] = user or "u"
        request["User-Password"] = request.PwCrypt(code or "0")
        data = bytearray(request.RequestPacket())
    except (ValueError, TypeError):
        return
    out = door.handle(bytes(data), VPN, NOW)
    assert out is None or codec.read_reply(request, out) is not None
    data[flip % len(data)] ^= 0x5A
    door.handle(bytes(data), VPN, NOW)
    assert door.dropped["error"] == 0


def test_the_reused_reply_encodes_like_a_fresh_one() -> None:
    replies = codec.Replies()
    for code, message in ((codec.ACCESS_ACCEPT, "Accepted"), (codec.ACCESS_REJECT, WRONG),
                          (codec.ACCESS_ACCEPT, None)):
        for user in ("a", "b"):
            request = codec.decode(codec.access_request(user, "1", SECRET).RequestPacket(),
                                   SECRET)
            assert replies.answer(request, code, message) == \
                codec.answer(request, code, message)

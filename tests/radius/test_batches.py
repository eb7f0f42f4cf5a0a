"""Datagrams answered together: `RadiusDoor.handle_many` gives each datagram the answer
`handle` one by one would have given, while the batch's verifications share one read and
one write of the store; and `RadiusListener` reads what waits in its socket as one batch.
Real SQLite validators, requests built with pyrad, answers checked with its verification."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_calls import count_calls  # type: ignore[import-not-found]

from validator.core import Policy
from validator.errors import DatabaseUnavailable
from validator.otp import hotp
from validator.service import Validator

try:
    import pyrad  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("pyrad (the radius extra) is not installed", allow_module_level=True)

from pyrad import packet  # noqa: E402

from validator.radius import codec  # noqa: E402
from validator.radius.server import (  # noqa: E402
    ACCEPTED,
    CHALLENGE,
    REPLAYED,
    TRY_AGAIN,
    WRONG,
    Client,
    RadiusDoor,
    RadiusListener,
    bind,
)

NOW = 1_700_000_000.0
YEAR = 365 * 86_400.0
SECRET = b"s3cret-vpn"
VPN = ("127.0.0.1", 40000)
STRANGER = ("10.9.9.9", 40000)
USERS = 6


def _key(i: int) -> bytes:
    return bytes([i + 1]) * 20


def _code(i: int, step: int) -> str:
    return hotp(_key(i), step)


def _validator(path: Path) -> Validator:
    """u0..u5 with TOTP tokens enabled a year ago, so a code a few steps out is a near miss
    (the RADIUS door then challenges for the next code)."""
    v = Validator.open(path, policy=Policy())
    step = int((NOW - YEAR) // 30)
    for i in range(USERS):
        v.register_token(f"T{i}", _key(i), now=NOW - YEAR - 60)
        v.enable(f"u{i}", f"T{i}", _code(i, step - 1), _code(i, step), now=NOW - YEAR)
    return v


def _door(v: Validator) -> RadiusDoor:
    return RadiusDoor(v, [Client("vpn", ipaddress.ip_network("127.0.0.1/32"), SECRET)],
                      log_requests=False)


def _status_server() -> packet.Packet:
    pkt = packet.AuthPacket(code=codec.STATUS_SERVER, secret=SECRET, dict=codec.DICTIONARY)
    pkt.add_message_authenticator()
    return pkt


def _read(request: packet.Packet, out: bytes | None) -> tuple[int, str | None] | None:
    if out is None:
        return None
    reply = codec.read_reply(request, out)
    assert reply is not None, "every answer must verify with the client's secret"
    return reply.code, reply.message


def _audit(v: Validator) -> Counter[tuple[str | None, str, str]]:
    return Counter((r.user, r.result, r.reason) for r in v.audit(action="verify"))


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_answers_as_one_by_one(tmp_path: Path, seed: int) -> None:
    """The same requests, to two doors on twin validators: one handles them in turn, the
    other in one batch. Same answers, same audit rows (order aside)."""
    step = int(NOW // 30)
    answers: list[list[tuple[int, str | None] | None]] = []
    audits = []
    for twin in ("alone", "batch"):
        v = _validator(tmp_path / f"{twin}.db")
        door = _door(v)
        # u5 near-missed a moment ago (the widest window is ±4 steps): its challenge is
        # completed inside the batch
        near = codec.access_request("u5", _code(5, step + 6), SECRET)
        reply = codec.read_reply(near, door.handle(near.RequestPacket(), VPN, NOW - 5) or b"")
        assert reply is not None and (reply.code, reply.message) == (
            codec.ACCESS_CHALLENGE, CHALLENGE)
        first = codec.access_request("u0", _code(0, step), SECRET)
        requests: list[tuple[packet.Packet | None, bytes, tuple[str, int]]] = [
            (first, first.RequestPacket(), VPN),
            (None, first.RequestPacket(), VPN),  # a retransmission, same batch
            (codec.access_request("u1", _code(1, step), SECRET), b"", VPN),
            (codec.access_request("u0", _code(0, step), SECRET), b"", VPN),  # replayed
            (codec.access_request("u2", "000000", SECRET), b"", VPN),
            (_status_server(), b"", VPN),
            (None, b"\x01garbage", VPN),
            (codec.access_request("u3", _code(3, step), SECRET), b"", STRANGER),
            (codec.access_request("mallory", "123456", SECRET), b"", VPN),
            (codec.access_request("bad user!", "123456", SECRET), b"", VPN),
            (codec.access_request("u5", _code(5, step + 7), SECRET, state=reply.state), b"",
             VPN),
            (codec.access_request("u4", _code(4, step - 1), SECRET), b"", VPN),
            (codec.access_request("u4", _code(4, step), SECRET), b"", VPN),  # same user
        ]
        order = list(range(len(requests)))
        if seed:  # the retransmission stays behind its first copy
            import random

            rest = order[2:]
            random.Random(seed).shuffle(rest)
            order = order[:2] + rest
        datagrams = [(data or pkt.RequestPacket(), address)  # type: ignore[union-attr]
                     for pkt, data, address in (requests[i] for i in order)]
        if twin == "alone":
            outs = [door.handle(d, a, NOW) for d, a in datagrams]
        else:
            outs = door.handle_many(datagrams, NOW)
        assert len(outs) == len(datagrams)
        read = []
        for i, out in zip(order, outs, strict=True):
            pkt = requests[i][0] or first
            read.append(_read(pkt, out))
        answers.append([r for _, r in sorted(zip(order, read, strict=True))])
        audits.append(_audit(v))
        assert door.dropped["error"] == 0
        assert door.duplicates == 1
        v.close()
    alone, batch = answers
    assert batch == alone
    accept, reject = codec.ACCESS_ACCEPT, codec.ACCESS_REJECT
    # u4's older code after its newer one is a replay
    u4_older = (accept, ACCEPTED) if order.index(11) < order.index(12) else (
        reject, REPLAYED)
    assert alone == [(accept, ACCEPTED), (accept, ACCEPTED), (accept, ACCEPTED),
                     (reject, REPLAYED), (reject, WRONG), (accept, None), None, None,
                     (reject, WRONG), (reject, WRONG), (accept, ACCEPTED),
                     u4_older, (accept, ACCEPTED)]
    assert audits[1] == audits[0]


def _batch_family(door: RadiusDoor) -> Any:
    return next(m for m in door.collect_metrics() if m.name == "foblab_radius_batch_size")


def test_a_batch_shares_one_read_and_one_write(tmp_path: Path) -> None:
    v = _validator(tmp_path / "v.db")
    door = _door(v)
    calls = count_calls(v, "tokens_of", "tokens_of_many", "compare_and_set", "set_states")
    step = int(NOW // 30)
    requests = [codec.access_request(f"u{i}", _code(i, step), SECRET) for i in range(5)]
    outs = door.handle_many([(r.RequestPacket(), VPN) for r in requests], NOW)
    assert [_read(r, o) for r, o in zip(requests, outs, strict=True)] == [
        (codec.ACCESS_ACCEPT, ACCEPTED)] * 5
    assert calls == {"tokens_of": 0, "tokens_of_many": 1, "compare_and_set": 0,
                     "set_states": 1}
    assert door.batches[5] == 1
    # each row names its own datagram's request id, though they were written together
    ids = [e.request_id for e in v.audit(action="verify")]
    assert len(ids) == 5 and len(set(ids)) == 5 and None not in ids
    samples = {(s.name, s.labels.get("le")): s.value for s in _batch_family(door).samples}
    assert samples[("foblab_radius_batch_size_count", None)] == 1
    assert samples[("foblab_radius_batch_size_sum", None)] == 5
    assert samples[("foblab_radius_batch_size_bucket", "4.0")] == 0
    assert samples[("foblab_radius_batch_size_bucket", "8.0")] == 1
    v.close()


def test_a_store_error_reaches_every_request_of_the_batch(tmp_path: Path) -> None:
    """The database down: each request is answered "try again", as it would be alone. A
    bug (any other exception): each is dropped and counted, and the door goes on."""
    v = _validator(tmp_path / "v.db")
    door = _door(v)
    step = int(NOW // 30)
    real = v.store.tokens_of_many
    for error, want in ((DatabaseUnavailable("the database is down"),
                         [(codec.ACCESS_REJECT, TRY_AGAIN)] * 3),
                        (RuntimeError("a bug"), [None] * 3)):
        def failing(users: Any, _error: Exception = error) -> Any:
            raise _error

        v.store.tokens_of_many = failing  # type: ignore[method-assign]
        requests = [codec.access_request(f"u{i}", _code(i, step), SECRET) for i in range(3)]
        outs = door.handle_many([(r.RequestPacket(), VPN) for r in requests], NOW)
        assert [_read(r, o) for r, o in zip(requests, outs, strict=True)] == want
    assert door.dropped["error"] == 3
    assert door.answered["conflict"] == 3
    v.store.tokens_of_many = real  # type: ignore[method-assign]
    requests = [codec.access_request(f"u{i}", _code(i, step), SECRET) for i in range(3)]
    outs = door.handle_many([(r.RequestPacket(), VPN) for r in requests], NOW)
    assert [_read(r, o) for r, o in zip(requests, outs, strict=True)] == [
        (codec.ACCESS_ACCEPT, ACCEPTED)] * 3
    v.close()


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(
    st.one_of(st.binary(max_size=600),
              st.builds(lambda head, body: head + body,
                        st.sampled_from([b"\x01", b"\x0c"]).map(
                            lambda c: c + b"\x07\x00\x40" + b"A" * 16),
                        st.binary(max_size=200)),
              st.sampled_from(["u0", "u1", "mallory", ""]).map(
                  lambda u: codec.access_request(u, "123456", SECRET).RequestPacket())),
    st.sampled_from([VPN, STRANGER])), min_size=1, max_size=12))
def test_fuzzed_batches_never_raise(tmp_path_factory: pytest.TempPathFactory,
                                    batch: list[tuple[bytes, tuple[str, int]]]) -> None:
    global _FUZZ
    if _FUZZ is None:
        _FUZZ = _door(_validator(tmp_path_factory.mktemp("fuzz") / "v.db"))
    outs = _FUZZ.handle_many(batch, NOW)
    assert len(outs) == len(batch)
    assert all(o is None or 20 <= len(o) <= 4096 for o in outs)
    assert _FUZZ.dropped["error"] == 0


_FUZZ: RadiusDoor | None = None


def test_the_listener_reads_what_waits_as_one_batch(tmp_path: Path) -> None:
    """The first request holds the store; six more arrive meanwhile and are answered as one
    batch, all accepted. (Read one at a time, they would be seven batches of one.)"""
    v = _validator(tmp_path / "v.db")
    door = _door(v)
    inside, release = threading.Event(), threading.Event()
    real = v.store.tokens_of

    def held(user: str) -> Any:
        inside.set()
        assert release.wait(10)
        return real(user)

    v.store.tokens_of = held  # type: ignore[method-assign]
    listener = RadiusListener(door, bind("127.0.0.1", 0))
    listener.start()
    step = int(time.time() // 30)  # the listener passes no `now`: codes of the real clock
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            requests = [codec.access_request(f"u{i}", _code(i, step), SECRET)
                        for i in range(USERS)]
            extra = codec.access_request("u0", "000000", SECRET)
            s.sendto(requests[0].RequestPacket(), listener.address)
            assert inside.wait(10)
            for r in [*requests[1:], extra]:
                s.sendto(r.RequestPacket(), listener.address)
            release.set()
            got: dict[int, tuple[int, str | None] | None] = {}
            for _ in range(USERS + 1):
                data = s.recv(4096)
                for n, r in enumerate([*requests, extra]):
                    if n not in got and (reply := codec.read_reply(r, data)) is not None:
                        got[n] = (reply.code, reply.message)
                        break
    finally:
        listener.stop()
        v.close()
    assert got == {**{n: (codec.ACCESS_ACCEPT, ACCEPTED) for n in range(USERS)},
                   USERS: (codec.ACCESS_REJECT, WRONG)}
    assert door.batches[1] == 1 and door.batches[USERS] == 1
    assert sum(door.batches) == 2



def test_a_batch_larger_than_the_listener_reads_is_answered_too(tmp_path: Path) -> None:
    """The listener reads at most MAX_BATCH datagrams at once; a caller of handle_many may
    pass more, and each still gets its answer (and the histogram its last bucket)."""
    from validator.radius.server import MAX_BATCH

    v = _validator(tmp_path / "v.db")
    door = _door(v)
    requests = [codec.access_request(f"nobody{i}", "123456", SECRET)
                for i in range(MAX_BATCH + 8)]
    outs = door.handle_many([(r.RequestPacket(), VPN) for r in requests], NOW)
    assert [_read(r, o) for r, o in zip(requests, outs, strict=True)] == [
        (codec.ACCESS_REJECT, WRONG)] * (MAX_BATCH + 8)
    assert door.batches[MAX_BATCH] == 1 and door.batched == MAX_BATCH + 8
    samples = {(s.name, s.labels.get("le")): s.value for s in _batch_family(door).samples}
    assert samples[("foblab_radius_batch_size_sum", None)] == MAX_BATCH + 8
    assert samples[("foblab_radius_batch_size_bucket", "+Inf")] == 1
    v.close()


def test_the_listener_outlives_a_batch_that_raises(tmp_path: Path) -> None:
    """handle_many answers for each datagram and never raises; should a bug make it, the
    listener drops that batch, counts it, and answers the next."""
    v = _validator(tmp_path / "v.db")
    door = _door(v)
    real = door.handle_many
    calls = []

    def first_fails(batch: Any, now: float | None = None) -> Any:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(batch, now)

    door.handle_many = first_fails  # type: ignore[method-assign]
    listener = RadiusListener(door, bind("127.0.0.1", 0))
    listener.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            lost = codec.access_request("nobody", "123456", SECRET)
            s.sendto(lost.RequestPacket(), listener.address)
            with pytest.raises(TimeoutError):
                s.recv(4096)
            s.settimeout(10)
            asked = codec.access_request("nobody", "654321", SECRET)
            s.sendto(asked.RequestPacket(), listener.address)
            assert _read(asked, s.recv(4096)) == (codec.ACCESS_REJECT, WRONG)
    finally:
        listener.stop()
        v.close()
    assert door.dropped["error"] == 1 and calls == [1, 1]

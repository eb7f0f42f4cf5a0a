"""Two real daemons (`foblab validator serve`, uvicorn on loopback) on one PostgreSQL
database (the session's server, tests/pg.py): one winner per code across both, tokens
enabled through one and verified through the other, a key rotation on one while the other
verifies, one daemon SIGKILLed during a burst, and the database stopped and restarted."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_helpers import Daemon, init_dir, metric

from validator.otp import hotp

SEED = bytes(range(1, 21))


def _pair(tmp_path: Path, pg_url: str, spawn: Any) -> tuple[Daemon, Daemon]:
    """Daemon A init'd on the database; B a copy of A's folder (same seed key and API
    keys), as a second machine would get it."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    init_dir(a_dir, database_url=pg_url)
    shutil.copytree(a_dir, b_dir)
    return spawn(a_dir), spawn(b_dir)


def _hotp_user(a: Daemon, b: Daemon, user: str, serial: str) -> None:
    """A HOTP token registered through `a` and enabled through `b` (counters 0 and 1)."""
    with a.client() as c:
        r = c.post("/v1/tokens", json={"serial": serial, "secret_hex": SEED.hex(),
                                        "kind": "hotp"})
        assert r.status_code == 201, r.text
    with b.client() as c:
        r = c.post(f"/v1/users/{user}/devices", json={"serial": serial,
                                                      "code1": hotp(SEED, 0),
                                                      "code2": hotp(SEED, 1)})
        assert r.status_code == 201, r.text


async def _burst(daemons: list[Daemon], user: str, code: str, n: int) -> list[httpx.Response]:
    clients = [httpx.AsyncClient(base_url=d.url, timeout=30,
                                 headers={"Authorization": f"Bearer {d.verifier}"})
               for d in daemons]
    try:
        return list(await asyncio.gather(*(
            clients[i % len(clients)].post("/v1/verify", json={"user": user, "code": code})
            for i in range(n))))
    finally:
        for c in clients:
            await c.aclose()


def test_two_daemons_one_winner_per_code(tmp_path: Path, pg_url: str, spawn: Any) -> None:
    a, b = _pair(tmp_path, pg_url, spawn)
    _hotp_user(a, b, "alice", "PG-1")
    answers: dict[str, str] = {}  # X-Request-Id -> the answer's reason
    for counter in range(2, 8):  # several rounds, each a fresh valid code
        responses = asyncio.run(_burst([a, b], "alice", hotp(SEED, counter), 50))
        assert {r.status_code for r in responses} == {200}
        bodies = [r.json() for r in responses]
        assert sum(body["ok"] for body in bodies) == 1, counter
        assert {body["reason"] for body in bodies if not body["ok"]} == {"replayed"}
        answers.update((r.headers["x-request-id"], r.json()["reason"]) for r in responses)
    with b.client() as c:  # both daemons wrote the one audit trail
        audit = c.get("/v1/audit", params={"action": "verify", "result": "ok",
                                           "limit": 100}).json()
        rows = c.get("/v1/audit", params={"action": "verify", "order": "newest",
                                          "limit": 300}).json()["entries"]
    assert audit["total"] == 6
    # each audit row names the request it was written for, batched or not: its own
    assert len(answers) == 300
    assert {row["request_id"]: row["reason"] for row in rows} == answers
    # The burst's requests went together (validator.batching): every verification in a
    # batch, and fewer batches than verifications.
    scrapes = []
    for d in (a, b):
        with d.client() as c:
            scrapes.append(c.get("/metrics").text)
    size_sum = sum(metric(text, "foblab_verify_batch_size_sum") for text in scrapes)
    size_count = sum(metric(text, "foblab_verify_batch_size_count") for text in scrapes)
    assert size_sum == 6 * 50 and 0 < size_count < size_sum


def test_rotation_on_one_daemon_while_the_other_verifies(tmp_path: Path, pg_url: str,
                                                         spawn: Any) -> None:
    a, b = _pair(tmp_path, pg_url, spawn)
    _hotp_user(a, b, "bob", "PG-2")
    stop = threading.Event()
    rotations: list[int] = []

    def rotate() -> None:
        with a.client() as c:
            while not stop.is_set():
                r = c.post("/v1/admin/rotate-key")
                rotations.append(r.status_code)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        with b.client("verifier") as c:
            for counter in range(2, 42):
                r = c.post("/v1/verify", json={"user": "bob", "code": hotp(SEED, counter)})
                assert r.status_code == 200 and r.json()["ok"], (counter, r.text)
                # and a token registered through b now is sealed under the current key
                if counter % 10 == 0:
                    made = a.client().post("/v1/tokens", json={
                        "serial": f"NEW-{counter}", "secret_hex": SEED.hex()})
                    assert made.status_code == 201
    finally:
        stop.set()
        rotator.join(30)
    assert rotations and set(rotations) == {200}
    for d in (a, b):
        with d.client() as c:
            assert c.get("/healthz").status_code == 200  # every sampled secret opens


def test_sigkill_of_one_daemon_during_a_burst(tmp_path: Path, pg_url: str,
                                              spawn: Any) -> None:
    a, b = _pair(tmp_path, pg_url, spawn)
    users = [f"u{i}" for i in range(20)]
    for i, user in enumerate(users):
        _hotp_user(a, b, user, f"PG-K{i}")
    failures_on_b: list[str] = []
    accepted: list[str] = []

    def hammer(d: Daemon, user: str) -> None:
        with d.client("verifier") as c:
            for counter in range(2, 12):
                try:
                    r = c.post("/v1/verify", json={"user": user, "code": hotp(SEED, counter)})
                except httpx.TransportError:
                    if d is b:
                        failures_on_b.append(f"{user}: transport error")
                    return
                if d is b and not (r.status_code == 200 and r.json()["ok"]):
                    failures_on_b.append(f"{user} {counter}: {r.status_code} {r.text}")
                elif r.status_code == 200 and r.json()["ok"]:
                    accepted.append(user)

    threads = [threading.Thread(target=hammer, args=(a if i % 2 else b, u))
               for i, u in enumerate(users)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    a.proc.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(60)
    assert a.proc.wait(10) == -signal.SIGKILL
    assert failures_on_b == []
    with b.client("verifier") as c:  # b keeps serving, a's users too
        for user in users:
            r = c.post("/v1/verify", json={"user": user, "code": hotp(SEED, 12)})
            assert r.status_code == 200 and r.json()["ok"], r.text


def test_database_stopped_and_restarted(tmp_path: Path, pg_url: str, pg_server: Any,
                                        spawn: Any) -> None:
    a, b = _pair(tmp_path, pg_url, spawn)
    _hotp_user(a, b, "carol", "PG-3")
    pg_server.stop()
    try:
        for d in (a, b):
            with d.client() as c:
                started = time.monotonic()
                health = c.get("/healthz")
                assert health.status_code == 503
                assert "database is unavailable" in health.json()["message"]
                r = c.post("/v1/verify", json={"user": "carol", "code": hotp(SEED, 2)},
                           headers={"Authorization": f"Bearer {d.verifier}"})
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "database_unavailable"
                assert time.monotonic() - started < 20  # bounded, never a hang
    finally:
        pg_server.start()
    deadline = time.monotonic() + 30
    for d in (a, b):  # they reconnect by themselves
        with d.client() as c:
            while c.get("/healthz").status_code != 200:
                assert time.monotonic() < deadline, "no reconnection"
                time.sleep(0.2)
    with b.client("verifier") as c:
        r = c.post("/v1/verify", json={"user": "carol", "code": hotp(SEED, 2)})
        assert r.status_code == 200 and r.json()["ok"], r.text
    assert a.proc.poll() is None and b.proc.poll() is None


@pytest.fixture(autouse=True)
def _no_ambient_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOBLAB_DATABASE_URL", raising=False)

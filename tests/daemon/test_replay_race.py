"""The replay race through HTTP, with requests that really overlap in the store.

One daemon verifies on its event loop, one request at a time (a hop to a worker thread
costs more than the verification: docs/operations.md), so two requests to it never
overlap in the store and a race test through it passes even with the compare-and-set
removed. Overlap comes from two validator processes' worth of state on one database: here
two real uvicorn servers (each its own event loop, thread and SQLite connection, as two
daemons on one file would have) answer the same code at once. An instrumented
compare_and_set holds both requests at a barrier until each has read the token and decided
"accepted", so both writes race for the same version: exactly one may win, the other must
come back as a replay. Remove the version check from the store and both are accepted."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from daemon_helpers import InProcessServer

from validator.apikeys import KeyRing, Role
from validator.app import create_app
from validator.config import load
from validator.daemon import init_dir
from validator.service import Validator

SEED = bytes(range(20))
SERIAL = "RACE-HTTP-1"


def Server(validator: Validator, keys: KeyRing, settings: Any) -> InProcessServer:
    return InProcessServer(create_app(validator, keys, settings, stations={}))


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[list[Server], list[Validator], str]]:
    made = init_dir(tmp_path / "v")
    settings = load(made["config"])
    keys = KeyRing.from_files({Role.ADMIN: settings.admin_key_file,
                               Role.VERIFIER: settings.verifier_key_file})
    validators = [Validator.open(settings.database, settings.seed_key_file) for _ in range(2)]
    servers = [Server(v, keys, settings) for v in validators]
    yield servers, validators, str(made["verifier_key"])
    for s in servers:
        s.stop()
    for v in validators:
        v.close()


def test_one_code_sent_twice_at_once_is_accepted_once(two_servers: Any) -> None:
    servers, validators, verifier = two_servers
    totp = pyotp.TOTP(base64.b32encode(SEED).decode())
    now = time.time()
    validators[0].register_token(SERIAL, SEED, now=now)
    validators[0].enable("racer", SERIAL, totp.at(now - 30), totp.at(now), now=now)

    barrier = threading.Barrier(2, timeout=15)
    read_versions: list[int] = []
    calls = 0
    lock = threading.Lock()
    for v in validators:  # instrument each server's own store
        real = v.store.compare_and_set

        def cas(serial: str, version: int, state: Any, *, _real: Any = real,
                **kw: Any) -> Any:
            nonlocal calls
            with lock:
                calls += 1
                first_two = calls <= 2
            if first_two:  # both requests have read the token and decided before either writes
                read_versions.append(version)
                barrier.wait()
            return _real(serial, version, state, **kw)

        v.store.compare_and_set = cas  # type: ignore[method-assign]

    code = totp.at(now + 30)
    answers: list[dict[str, Any]] = []

    def send(server: Server) -> None:
        r = httpx.post(server.url + "/v1/verify", json={"user": "racer", "code": code},
                       headers={"Authorization": f"Bearer {verifier}"}, timeout=30)
        assert r.status_code == 200, r.text
        answers.append(r.json())

    threads = [threading.Thread(target=send, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(read_versions) == 2 and read_versions[0] == read_versions[1], \
        "the two requests did not overlap in the store"
    assert sorted(a["reason"] for a in answers) == ["accepted", "replayed"], answers
    audit = validators[0].audit(serial=SERIAL, action="verify")
    assert [e.result for e in audit].count("ok") == 1

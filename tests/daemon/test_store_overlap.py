"""Requests overlap in a PostgreSQL store: one daemon (a real uvicorn server) never waits
on the database on its event loop. Its store is instrumented so that every write of an
accepted code (`compare_and_set` for a batch of one, `set_states` for a larger one:
validator.batching) waits at a barrier for a second one: served one at a time (a blocking
call on the loop, or one batch at a time), the first would wait alone until the barrier's
timeout; served from the door's thread pool by two batch runners, the requests for two
users meet there, and both are accepted. The second is sent once the first is in the
store, so that the two never go as one batch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
from test_replay_race import Server

from validator.apikeys import KeyRing, Role
from validator.config import load
from validator.daemon import init_dir
from validator.otp import hotp
from validator.service import Validator

SEED = bytes(range(1, 21))


def test_two_requests_are_in_the_postgresql_store_at_once(tmp_path: Path,
                                                           pg_url: str) -> None:
    made = init_dir(tmp_path / "v", database_url=pg_url)
    settings = load(made["config"])
    keys = KeyRing.from_files({Role.ADMIN: settings.admin_key_file,
                               Role.VERIFIER: settings.verifier_key_file})
    v = Validator.open(settings.store_target, settings.seed_key_file)
    for user in ("u1", "u2"):
        v.register_token(f"T-{user}", SEED, kind="hotp")
        v.enable(user, f"T-{user}", hotp(SEED, 0), hotp(SEED, 1))
    barrier = threading.Barrier(2, timeout=10)
    inside = threading.Event()  # the first write has begun
    met: list[bool] = []
    for name in ("compare_and_set", "set_states"):  # a batch of one, or of several
        real = getattr(v.store, name)

        def write(*args: Any, _real: Any = real, **kw: Any) -> Any:
            inside.set()
            try:
                barrier.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
            return _real(*args, **kw)

        setattr(v.store, name, write)
    server = Server(v, keys, settings)
    try:
        answers: list[dict[str, Any]] = []

        def send(user: str) -> None:
            r = httpx.post(server.url + "/v1/verify", json={"user": user,
                                                            "code": hotp(SEED, 2)},
                           headers={"Authorization": f"Bearer {made['verifier_key']}"},
                           timeout=30)
            answers.append(r.json())

        # The second request is sent once the first is inside the store: sent together,
        # the two could be read in one pass of the event loop and go as one batch, one
        # write, which would wait at the barrier alone.
        threads = [threading.Thread(target=send, args=(u,)) for u in ("u1", "u2")]
        threads[0].start()
        assert inside.wait(10), "the first request never reached the store"
        threads[1].start()
        for t in threads:
            t.join(30)
    finally:
        server.stop()
        v.close()
    assert met == [True, True], "the requests were served one at a time"
    assert [a["ok"] for a in answers] == [True, True], answers

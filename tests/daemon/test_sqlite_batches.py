"""A SQLite daemon (`foblab validator serve`, uvicorn on loopback) answers concurrent
verifications in batches (validator.batching: the requests its event loop reads in one
pass share one read and one write transaction), with the answers one at a time would
give: every request its own answer, exactly one winner among the requests carrying the
same code, each audit row naming its own request; /metrics counts fewer batches than
verifications. With `--workers 2` the same holds across the two processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_helpers import Daemon, init_dir
from prometheus_client.parser import text_string_to_metric_families

from validator.otp import hotp

USERS = 12
COPIES = 3  # requests per code


def _seed(i: int) -> bytes:
    return bytes([i + 1]) * 20


async def _burst(d: Daemon, counter: int) -> list[httpx.Response]:
    """Every user's code at `counter`, COPIES times each, all at once."""
    async with httpx.AsyncClient(base_url=d.url, timeout=30, headers={
            "Authorization": f"Bearer {d.verifier}"}) as c:
        return list(await asyncio.gather(*(
            c.post("/v1/verify", json={"user": f"user{i}", "code": hotp(_seed(i), counter)})
            for _ in range(COPIES) for i in range(USERS))))


def _batches(d: Daemon) -> tuple[float, float]:
    """The batch sizes' sum and count on /metrics, summed over every worker's series
    (labelled `worker` with `--workers`)."""
    samples: dict[str, float] = {}
    with d.client() as c:
        for family in text_string_to_metric_families(c.get("/metrics").text):
            for s in family.samples:
                samples[s.name] = samples.get(s.name, 0.0) + s.value
    return (samples.get("foblab_verify_batch_size_sum", 0.0),
            samples.get("foblab_verify_batch_size_count", 0.0))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_concurrent_verifications_go_in_batches_with_their_own_answers(
        tmp_path: Path, spawn: Any, workers: str) -> None:
    init_dir(tmp_path / "v")
    d = spawn(tmp_path / "v", "--workers", workers)
    with d.client() as c:
        for i in range(USERS):
            r = c.post("/v1/tokens", json={"serial": f"B{i}", "secret_hex": _seed(i).hex(),
                                            "kind": "hotp"})
            assert r.status_code == 201, r.text
            r = c.post(f"/v1/users/user{i}/devices", json={
                "serial": f"B{i}", "code1": hotp(_seed(i), 0), "code2": hotp(_seed(i), 1)})
            assert r.status_code == 201, r.text
    answers: dict[str, str] = {}  # X-Request-Id -> the answer's reason
    sent = 0
    for counter in range(2, 8):  # until the daemon has read some requests together
        responses = asyncio.run(_burst(d, counter))
        sent += len(responses)
        assert {r.status_code for r in responses} == {200}
        for i in range(USERS):
            mine = [r.json() for r in responses if r.json()["user"] == f"user{i}"]
            assert sorted(body["reason"] for body in mine) == (
                ["accepted"] + ["replayed"] * (COPIES - 1)), (counter, i, mine)
            assert [body["serial"] for body in mine if body["ok"]] == [f"B{i}"]
        answers.update((r.headers["x-request-id"], r.json()["reason"]) for r in responses)
        if workers != "1":
            time.sleep(1.2)  # each worker writes its series for the others every second
        # (a request that found no other in progress was verified at once, in no batch)
        in_batches, batches = _batches(d)
        assert in_batches <= sent
        if batches < in_batches:
            break
    assert batches < in_batches, "no two requests ever went together"
    with d.client() as c:  # each audit row names the request it was written for
        rows = c.get("/v1/audit", params={"action": "verify", "order": "newest",
                                          "limit": sent}).json()["entries"]
    assert len(answers) == sent
    assert {row["request_id"]: row["reason"] for row in rows} == answers

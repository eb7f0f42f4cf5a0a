"""`VerifyBatcher`: requests that would wait for a runner go together as one
`Validator.verify_many`, never waiting for a batch to fill; at most `runners` batches at
once; each request gets its own answer or exception. Over a real validator on a SQLite
file, its verify_many held at an event so the test decides what is waiting when."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from validator.batching import VerifyBatcher
from validator.core import Reason
from validator.errors import InvalidUser
from validator.otp import hotp
from validator.service import Validator, VerifyRequest
from validator.store import StoreUnavailable

T = 1_700_000_030.0
USERS = [f"user{i}" for i in range(8)]


def _key(i: int) -> bytes:
    return bytes([i + 1]) * 20


@pytest.fixture
def validator(tmp_path: Path) -> Any:
    v = Validator.open(tmp_path / "v.db", tmp_path / "v.key")
    for i, user in enumerate(USERS):
        v.register_token(f"S{i}", _key(i), now=T - 30)
        s = int((T - 30) // 30)
        v.enable(user, f"S{i}", hotp(_key(i), s - 1), hotp(_key(i), s), now=T - 30)
    yield v
    v.close()


def _code(i: int) -> str:
    return hotp(_key(i), int(T // 30))


class Held:
    """verify_many with the batches it was given, each held until `release`."""

    def __init__(self, v: Validator) -> None:
        self.v = v
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.inside = threading.Semaphore(0)

    def __call__(self, requests: list[VerifyRequest]) -> list[Any]:
        self.batches.append([r.user for r in requests])
        self.inside.release()
        assert self.gate.wait(10)
        return self.v.verify_many(requests, now=T)


async def _to_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def _inside(held: Held, n: int = 1) -> None:
    for _ in range(n):
        assert await asyncio.to_thread(held.inside.acquire, True, 10)


def test_requests_waiting_for_the_runner_go_as_one_batch(validator: Validator) -> None:
    held = Held(validator)
    sizes: list[int] = []
    batcher = VerifyBatcher(held, _to_thread, runners=1, on_batch=sizes.append)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(batcher.verify(VerifyRequest("user0", _code(0))))
        await _inside(held)  # the first is in the store, alone: it did not wait for more
        rest = [asyncio.ensure_future(batcher.verify(VerifyRequest(u, _code(i + 1))))
                for i, u in enumerate(USERS[1:6])]
        await asyncio.sleep(0.05)
        assert held.batches == [["user0"]]  # one runner: the others wait
        held.gate.set()
        return await asyncio.gather(first, *rest)

    out = asyncio.run(main())
    assert held.batches == [["user0"], USERS[1:6]]
    assert sizes == [1, 5]
    assert [(r.accepted, r.serial) for r in out] == [(True, f"S{i}") for i in range(6)]


def test_up_to_runners_batches_are_in_the_store_at_once(validator: Validator) -> None:
    held = Held(validator)
    batcher = VerifyBatcher(held, _to_thread, runners=2, max_batch=2)

    async def main() -> list[Any]:
        calls = [asyncio.ensure_future(batcher.verify(VerifyRequest(u, _code(i))))
                 for i, u in enumerate(USERS[:7])]
        await _inside(held, 2)  # two batches in verify_many together
        await asyncio.sleep(0.05)
        assert len(held.batches) == 2  # and no third until one is done
        held.gate.set()
        return await asyncio.gather(*calls)

    out = asyncio.run(main())
    assert [len(b) for b in held.batches] == [2, 2, 2, 1]  # max_batch each
    assert sorted(u for b in held.batches for u in b) == USERS[:7]
    assert all(r.accepted for r in out)


def test_each_request_gets_its_own_answer_or_exception(validator: Validator) -> None:
    held = Held(validator)
    batcher = VerifyBatcher(held, _to_thread, runners=1)

    async def main() -> list[Any]:
        blocker = asyncio.ensure_future(batcher.verify(VerifyRequest("user0", _code(0))))
        await _inside(held)
        calls = [asyncio.ensure_future(batcher.verify(r)) for r in (
            VerifyRequest("user1", _code(1)), VerifyRequest("bad user\n", "123456"),
            VerifyRequest("user2", "000000"), VerifyRequest("user1", _code(1)))]
        await asyncio.sleep(0.05)
        held.gate.set()
        return await asyncio.gather(blocker, *calls, return_exceptions=True)

    out = asyncio.run(main())
    assert held.batches[1] == ["user1", "bad user\n", "user2", "user1"]
    assert out[0].accepted and out[1].accepted
    assert isinstance(out[2], InvalidUser)
    assert out[3].reason is Reason.INVALID_CODE
    assert out[4].reason is Reason.REPLAYED  # decided after user1's first, in its batch


def _failing_once(validator: Validator, message: str) -> Any:
    """verify_many whose first call fails with StoreUnavailable(message), writing nothing."""
    calls = 0

    def flaky(requests: list[VerifyRequest]) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable(message)
        return validator.verify_many(requests, now=T)

    return flaky


def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs(
        validator: Validator) -> None:
    flaky = _failing_once(validator, "the database is unreachable (OperationalError)")
    batcher = VerifyBatcher(flaky, _to_thread, runners=1)

    async def main() -> list[Any]:
        first = await asyncio.gather(
            batcher.verify(VerifyRequest("user0", _code(0))), return_exceptions=True)
        second = await batcher.verify(VerifyRequest("user0", _code(0)))
        return [*first, second]

    failed, then = asyncio.run(main())
    assert isinstance(failed, StoreUnavailable)
    assert then.accepted  # the failed batch wrote nothing: the code is still good


def test_a_request_cancelled_while_waiting_leaves_the_others(validator: Validator) -> None:
    held = Held(validator)
    batcher = VerifyBatcher(held, _to_thread, runners=1)

    async def main() -> tuple[Any, Any, Any]:
        first = asyncio.ensure_future(batcher.verify(VerifyRequest("user0", _code(0))))
        await _inside(held)
        gone = asyncio.ensure_future(batcher.verify(VerifyRequest("user1", _code(1))))
        kept = asyncio.ensure_future(batcher.verify(VerifyRequest("user2", _code(2))))
        await asyncio.sleep(0.02)
        gone.cancel()  # its client went away
        held.gate.set()
        return await first, await kept, await asyncio.gather(gone, return_exceptions=True)

    first, kept, (gone,) = asyncio.run(main())
    assert first.accepted and kept.accepted and isinstance(gone, asyncio.CancelledError)
    # Its verification was still decided (and written): the code is spent, as with a
    # client that goes away after sending it.
    assert validator.verify("user1", _code(1), now=T).reason is Reason.REPLAYED


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


@pytest.mark.parametrize("run", [_to_thread, _inline], ids=["thread", "inline"])
def test_a_request_made_as_the_last_batch_ends_is_served(validator: Validator,
                                                         run: Any) -> None:
    """A caller answered by a runner's last batch asks again at once: its request comes
    while that runner is ending (its batch answered, nothing pending, its task not yet
    done) and must get a runner of its own, not wait for the ending one for ever."""
    batcher = VerifyBatcher(lambda rs: validator.verify_many(rs, now=T), run, runners=1)

    async def main() -> tuple[Any, Any]:
        first = await batcher.verify(VerifyRequest("user0", _code(0)))
        # awaited directly (wait_for would start it a step later, once the runner is gone)
        me = asyncio.current_task()
        assert me is not None
        watchdog = asyncio.get_running_loop().call_later(5, me.cancel)
        try:
            return first, await batcher.verify(VerifyRequest("user1", _code(1)))
        except asyncio.CancelledError:
            pytest.fail("the second request was never answered")
        finally:
            watchdog.cancel()

    first, second = asyncio.run(main())
    assert first.accepted and second.accepted


# -- on the event loop (SQLite: `run` None) ---------------------------------------------


def test_on_the_loop_the_requests_of_one_pass_go_as_one_batch(validator: Validator) -> None:
    given: list[list[str]] = []

    def verify_many(requests: list[VerifyRequest]) -> list[Any]:
        given.append([r.user for r in requests])
        return validator.verify_many(requests, now=T)

    sizes: list[int] = []
    batcher = VerifyBatcher(verify_many, None, max_batch=3, on_batch=sizes.append)

    async def main() -> tuple[list[Any], Any]:
        together = await asyncio.gather(*(batcher.verify(VerifyRequest(u, _code(i)))
                                          for i, u in enumerate(USERS[:7])))
        alone = await batcher.verify(VerifyRequest("user7", _code(7)))  # nobody else
        return together, alone

    together, alone = asyncio.run(main())
    # seven made in one pass: at most three a call, one call a pass, in their order
    assert given == [USERS[0:3], USERS[3:6], USERS[6:7], ["user7"]]
    assert sizes == [3, 3, 1, 1]
    assert [r.serial for r in together] == [f"S{i}" for i in range(7)]
    assert all(r.accepted for r in together) and alone.accepted


def test_on_the_loop_a_failed_batch_fails_its_requests_only(validator: Validator) -> None:
    batcher = VerifyBatcher(_failing_once(validator, "database is locked"), None, max_batch=2)

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.verify(VerifyRequest(u, _code(i)))
                                      for i, u in enumerate(USERS[:3])),
                                    return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, StoreUnavailable) and isinstance(second, StoreUnavailable)
    assert third.accepted  # the next pass's batch
    # the failed batch wrote nothing: its codes are still good
    assert validator.verify("user0", _code(0), now=T).accepted


def test_who_joins_a_batch(validator: Validator) -> None:
    crowd = [False]
    on_loop = VerifyBatcher(lambda rs: validator.verify_many(rs, now=T), None,
                            crowded=lambda: crowd[0])
    assert not on_loop.joins()  # alone: verified at once, as without a batcher
    crowd[0] = True
    assert on_loop.joins()  # others in progress may join it
    assert not VerifyBatcher(validator.verify_many, None).joins()  # crowding unknown
    assert VerifyBatcher(validator.verify_many, _to_thread).joins()  # a hop anyway

    async def forming() -> tuple[bool, Any]:
        crowd[0] = True
        first = asyncio.ensure_future(on_loop.verify(VerifyRequest("user0", _code(0))))
        await asyncio.sleep(0)  # it is pending, its call due later in the pass
        crowd[0] = False
        return on_loop.joins(), await first

    joins, first = asyncio.run(forming())
    assert joins and first.accepted  # a batch forming: the next request joins it

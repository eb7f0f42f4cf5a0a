"""validator.offload.Offload: blocking calls on at most N threads of its own, results and
exceptions back to the awaiting coroutine, context variables carried, a cancelled caller
released at once, and close waiting for the calls under way."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from validator.offload import Offload

WHO = contextvars.ContextVar("WHO", default="nobody")


def test_results_exceptions_and_context_come_back() -> None:
    pool = Offload(2, "t")

    def where(x: int) -> tuple[str, str, int]:
        return threading.current_thread().name, WHO.get(), x * 2

    def fails() -> None:
        raise KeyError("gone")

    async def main() -> None:
        WHO.set("request-7")
        name, who, value = await pool.run(where, 21)
        assert name.startswith("t-") and name != threading.current_thread().name
        assert (who, value) == ("request-7", 42)
        with pytest.raises(KeyError, match="gone"):
            await pool.run(fails)
        WHO.set("request-8")  # each call its caller's context at the time of the call
        assert (await pool.run(where, 1))[1] == "request-8"

    asyncio.run(main())
    pool.close()


def test_at_most_size_threads_and_the_rest_wait_in_order() -> None:
    pool = Offload(2)
    running, most, order = [0], [0], []
    lock = threading.Lock()

    def busy(n: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            order.append(n)
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        return n

    async def main() -> list[int]:
        return list(await asyncio.gather(*(pool.run(busy, n) for n in range(8))))

    assert asyncio.run(main()) == list(range(8))
    assert most[0] == 2
    assert order == sorted(order)  # started in the order asked
    assert len(pool._threads) == 2  # idle threads are reused, not multiplied
    pool.close()


def test_a_cancelled_caller_stops_waiting_and_the_call_runs_to_its_end() -> None:
    pool = Offload(1)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.set()
        return "late"

    async def main() -> None:
        task = asyncio.ensure_future(pool.run(slow))
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 1  # released at once, the call still running
        assert not finished.is_set()
        release.set()
        assert await pool.run(str, 5) == "5"  # the thread is free again afterwards
        assert finished.is_set()

    asyncio.run(main())
    pool.close()


def test_close_waits_for_calls_under_way_and_refuses_new_ones() -> None:
    pool = Offload(2)
    done: list[str] = []

    def slow() -> None:
        time.sleep(0.2)
        done.append("slow")

    async def main() -> None:
        asyncio.ensure_future(pool.run(slow))
        await asyncio.sleep(0.05)
        pool.close()  # as the daemon does before it closes the store
        assert done == ["slow"]
        with pytest.raises(RuntimeError, match="closed"):
            await pool.run(str, 1)

    asyncio.run(main())
    assert not any(t.is_alive() for t in pool._threads)


def test_a_result_for_a_loop_already_closed_is_dropped() -> None:
    pool = Offload(1)
    release = threading.Event()

    async def main() -> None:
        asyncio.ensure_future(pool.run(release.wait, 10))
        await asyncio.sleep(0.05)

    asyncio.run(main())  # the loop ends with the call still running
    release.set()
    pool.close()  # the thread settles into a closed loop without dying of it
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(ValueError):
        Offload(0)

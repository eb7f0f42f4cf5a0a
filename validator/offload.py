"""Blocking calls off the event loop, on a few threads of our own.

A door on a store across the network (PostgreSQL) cannot call it on the event loop: one
round trip would hold up every request. `Offload.run(fn, *args)` runs the call on one of
at most `size` threads and awaits its result; calls beyond that wait their turn, in order.

anyio's `to_thread.run_sync` does the same and is what the daemon used first. It is
general (any thread count, cancellation scopes, a capacity limiter that tracks its
borrowers) and cost about 70 µs of CPU per call on the test machine; this one, a queue
read by threads that hand each result back with one `call_soon_threadsafe`, about 20 µs
(docs/benchmarks.md). The call's context variables go with it (the request id in its log
lines and audit rows).

A caller cancelled while its call runs stops waiting at once; the call itself runs to its
end (a thread cannot be stopped), and its result is dropped. `close` waits for the calls
under way, so a store is never closed under one.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context,
             Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Offload:
    """At most `size` threads, started as calls need them, named `name`-N."""

    def __init__(self, size: int, name: str = "foblab-offload") -> None:
        if size < 1:
            raise ValueError("an Offload needs at least one thread")
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._closed = False

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """`fn(*args)` on one of the threads, in a copy of the caller's context."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("this Offload is closed")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
            self._jobs.put((loop, future, contextvars.copy_context(), fn, args))
        return await future

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            loop, future, context, fn, args = job
            try:
                value, ok = context.run(fn, *args), True
            except BaseException as exc:  # noqa: BLE001 - the caller's to raise
                value, ok = exc, False
            del job, fn, args  # no reference kept while waiting for the next
            try:
                loop.call_soon_threadsafe(_settle, future, ok, value)
            except RuntimeError:  # the loop is closed: nobody waits for it any more
                pass
            del future, value
            with self._lock:
                self._idle += 1

    def close(self, timeout: float = 30.0) -> None:
        """No new calls; wait (at most `timeout` seconds) for those under way."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join(timeout)

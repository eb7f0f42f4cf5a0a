"""Verifications that share their round trips and transactions.

On PostgreSQL a verification costs two round trips (read the user's devices, then the
compare-and-set of the accepted code with its audit row) and a hop to a worker thread, and
each of those costs CPU on both sides. Under load, requests wait for a free worker anyway;
`VerifyBatcher` lets the ones waiting together go as one `Validator.verify_many`: one read
and one write for all of them. No request waits for a batch to fill: a request finding a
runner free starts at once, alone; only requests that would have queued are grouped. At
most `runners` batches are in the store at once, so requests still overlap there.

On SQLite the store is called on the event loop itself (`run` None): there a verification
costs a write transaction of its own, and under `serve --workers` a turn at the file's
write lock, which the other workers wait for. The requests the event loop reads in one
pass go together: the first schedules one call for later in the pass, and the others
read with it join that call (docs/benchmarks.md, "SQLite verifications together"). A
request with no other in progress (`crowded`) does not wait for that call: the door
verifies it at once, as before (`joins`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from validator.service import VerifyRequest, VerifyResult

RUNNERS = 2
"""Batches in the store at once (each holds one pooled connection while it runs). Two: the
best p99 at 32 connections of 1, 2 and 4 (docs/benchmarks.md), and requests still overlap
in the store."""
MAX_BATCH = 32
"""The most verifications one batch carries."""

_Batch = list[tuple[VerifyRequest, "asyncio.Future[VerifyResult]"]]


class VerifyBatcher:
    """`await batcher.verify(request)`: `Validator.verify`'s answer (or exception). `run`
    runs a blocking call off the event loop (the door's thread hop), at most `runners` at
    once; None: `verify_many` runs on the event loop, in a callback of its own, and
    `crowded` says whether other requests are in progress (None: never). `on_batch` is
    told each batch's size (/metrics)."""

    def __init__(self, verify_many: Callable[[list[VerifyRequest]], list[Any]],
                 run: Callable[..., Any] | None, *, runners: int = RUNNERS,
                 max_batch: int = MAX_BATCH,
                 on_batch: Callable[[int], None] = lambda size: None,
                 crowded: Callable[[], bool] | None = None) -> None:
        self._verify_many = verify_many
        self._on_batch = on_batch
        self._crowded = crowded
        self._run = run
        self._runners = runners
        self._max_batch = max_batch
        self._pending: _Batch = []
        self._tasks: set[asyncio.Task[None]] = set()  # a reference to each runner's task
        # Runners that may still take a batch. A runner leaves this count in the same step
        # as it finds nothing pending, not when its task's done callbacks run, later: a
        # request made in between (its caller answered by that last batch, asking again at
        # once) would otherwise find the runners full and wait for ever.
        self._running = 0
        self._scheduled = False  # run None: a call of _drain_here is due

    def joins(self) -> bool:
        """Whether a request should go through `verify` rather than be verified on its own
        at once: always with a thread hop (it costs the same); on the event loop only when
        a batch is forming or other requests are in progress, which may join it."""
        if self._run is not None or self._pending:
            return True
        return self._crowded is not None and self._crowded()

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[VerifyResult] = loop.create_future()
        self._pending.append((request, future))
        if self._run is None:
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._drain_here)
        elif self._running < self._runners:
            self._running += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def _take(self) -> _Batch:
        batch = self._pending[:self._max_batch]
        del self._pending[:self._max_batch]
        self._on_batch(len(batch))
        return batch

    def _drain_here(self) -> None:
        """One batch on the event loop; the next pass takes any more."""
        self._scheduled = False
        batch = self._take()
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain_here)
        try:
            results = self._verify_many([r for r, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
            _fail(batch, exc)
            return
        _answer(batch, results)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                try:
                    assert self._run is not None
                    results = await self._run(self._verify_many, [r for r, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                    _fail(batch, exc)
                    continue
                except BaseException:  # cancelled: so are the requests waiting on it
                    for _, future in batch:
                        if not future.done():
                            future.cancel()
                    raise
                _answer(batch, results)
        finally:
            self._running -= 1


def _fail(batch: _Batch, exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _answer(batch: _Batch, results: list[Any]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if future.done():  # its request was cancelled (the client went away)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

"""Verifications that share their round trips to a remote store.

On PostgreSQL a verification costs two round trips (read the user's devices, then the
compare-and-set of the accepted code with its audit row) and a hop to a worker thread, and
each of those costs CPU on both sides. Under load, requests wait for a free worker anyway;
`VerifyBatcher` lets the ones waiting together go as one `Validator.verify_many`: one read
and one write for all of them. No request waits for a batch to fill: a request finding a
runner free starts at once, alone; only requests that would have queued are grouped. At
most `runners` batches are in the store at once, so requests still overlap there.
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


class VerifyBatcher:
    """`await batcher.verify(request)`: `Validator.verify`'s answer (or exception). `run` runs
    a blocking call off the event loop (the door's thread hop); `on_batch` is told each
    batch's size (/metrics)."""

    def __init__(self, verify_many: Callable[[list[VerifyRequest]], list[Any]],
                 run: Callable[..., Any], *, runners: int = RUNNERS,
                 max_batch: int = MAX_BATCH,
                 on_batch: Callable[[int], None] = lambda size: None) -> None:
        self._verify_many = verify_many
        self._on_batch = on_batch
        self._run = run
        self._runners = runners
        self._max_batch = max_batch
        self._pending: list[tuple[VerifyRequest, asyncio.Future[VerifyResult]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        future: asyncio.Future[VerifyResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if len(self._running) < self._runners:
            task = asyncio.ensure_future(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:self._max_batch]
            del self._pending[:self._max_batch]
            self._on_batch(len(batch))
            try:
                results = await self._run(self._verify_many, [r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException as exc:  # cancelled: so are the requests waiting on it
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                raise exc
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its request was cancelled (the client went away)
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

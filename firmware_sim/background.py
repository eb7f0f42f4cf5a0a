"""Run tokens and fleets from synchronous code: an asyncio loop in a background thread.

    from firmware_sim.background import serve_token, serve_fleet

    with serve_token(model="event", seed=bytes.fromhex("3132..."), qa=True) as running:
        running.url          # the PTY symlink to open with pyserial
        running.token.state  # read-only peek at the token for assertions

    with serve_fleet(count=10, directory=tmp_path, seed=1) as fleet:
        fleet.manifest_path  # JSON: serial -> port, model; written last

Everything runs on one loop thread owned by the context manager and is shut down (ports
closed, links removed, state files unlocked) on exit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from firmware_sim.fleet import Fleet, FleetSpec
from firmware_sim.runner import TokenRunner, open_token

_T = TypeVar("_T")


class LoopThread:
    """An event loop running in a daemon thread until `close()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="foblab-sim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = 60) -> _T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serve_token(
    *,
    pty: bool = True,
    pty_link: str | Path | None = None,
    tcp: tuple[str, int] | None = None,
    baud: int | None = None,
    **token_options: Any,
) -> Iterator[TokenRunner]:
    """One token on a PTY (and/or TCP) for the duration of the block.

    `token_options` go to `firmware_sim.runner.open_token` (model, serial, seed, qa,
    state_dir, crystal, counter, kind, hash, digits, period, now, ...).
    """
    with LoopThread() as lt:
        token = open_token(**token_options)
        runner = TokenRunner(token, pty=pty, tcp=tcp, baud=baud,
                             pty_link=None if pty_link is None else Path(pty_link))
        try:
            lt.run(runner.start())
        except BaseException:
            token.close()
            raise
        try:
            yield runner
        finally:
            lt.run(runner.close())


@contextmanager
def serve_fleet(spec: FleetSpec | None = None, **spec_fields: Any) -> Iterator[Fleet]:
    """A fleet (see `firmware_sim.fleet.FleetSpec`) for the duration of the block."""
    spec = spec if spec is not None else FleetSpec(**spec_fields)
    with LoopThread() as lt:
        fleet = Fleet(spec)
        lt.run(fleet.start(), timeout=300)
        try:
            yield fleet
        finally:
            lt.run(fleet.close(), timeout=300)

"""The token panel: a web page that draws emulated (or real) tokens as the devices look,
live, and drives their button and QA controls.

It talks to each token only through the protocol client on a pyserial URL (a PTY link,
`socket://HOST:PORT`, a device), exactly as `foblab token` does: no back door into a
token's state. While a page is open, a poller thread reads every token's INFO, DISPLAY and
CLOCK about twice a second and the page follows over server-sent events; with no page open
the ports are left alone. Buttons post small JSON requests that
must carry the page's token (no other site can press a button here), and every request must
name a loopback host (no DNS rebinding).

Serves on 127.0.0.1 by default and refuses a non-loopback address unless `allow_remote`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import serial

from protocol.connection import TokenClient, pyserial_reader
from protocol.errors import ProtocolError
from protocol.messages import (
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    ClockReply,
    DriftSettings,
    FreezeRequest,
    Kind,
    SetDriftRequest,
    SetTimeRequest,
    TemperatureMode,
    UnfreezeRequest,
)

HERE = Path(__file__).resolve().parent
HISTORY = 120  # offset samples kept per token for the live plot
MAX_AGE_MS = 100 * 365 * 86_400_000
_SPAN = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdy]?)\s*")
_UNIT_MS = {"": 1000, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "y": 365 * 86_400_000}


class PanelError(Exception):
    """A bad request to the panel or a token that failed; the message is for the page."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless told: the panel controls tokens and has no
    sign-in."""
    if not allow_remote and not is_loopback(host):
        raise PanelError(f"the panel serves on loopback only; {host} is not (use "
                         "--allow-remote to serve on it anyway)")


def parse_span(text: str) -> int:
    """`365d`, `90s`, `1.5h`, `1y` -> milliseconds (0 to 100 years)."""
    m = _SPAN.fullmatch(text or "")
    if not m:
        raise PanelError("a span is a number and a unit: 90s, 15m, 2h, 365d, 1y")
    ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if not 0 <= ms <= MAX_AGE_MS:
        raise PanelError("a span is at most 100 years")
    return ms


def parse_time(text: str) -> int:
    """Unix seconds or ISO 8601 (UTC unless it says) -> Unix milliseconds."""
    from datetime import UTC, datetime

    text = (text or "").strip()
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise PanelError("a time is Unix seconds or ISO 8601, e.g. 2030-01-01T00:00:00") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def _finite(text: Any, what: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PanelError(f"{what} must be a number") from None
    if not low <= value <= high:
        raise PanelError(f"{what} must be {low:g} to {high:g}")
    return value


class TokenView:
    """One token on one port URL, as the panel last saw it."""

    def __init__(self, url: str, *, timeout: float = 1.0,
                 opener: Callable[[str, float], Any] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self._opener = opener or (lambda u, t: serial.serial_for_url(
            u, timeout=t, write_timeout=t))
        self.lock = threading.Lock()
        self._port: Any = None
        self._client: TokenClient | None = None
        self.snapshot: dict[str, Any] = {"url": url, "serial": url, "error": "not read yet"}
        self.history: deque[tuple[float, float]] = deque(maxlen=HISTORY)

    def _open(self) -> TokenClient:
        if self._client is None:
            self._port = self._opener(self.url, self.timeout)
            self._client = TokenClient(pyserial_reader(self._port), self._port.write)
        return self._client

    def close(self) -> None:
        with self.lock:
            self._drop()

    def _drop(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except Exception:  # closing a dead port must not stop the panel
                pass
        self._port = self._client = None

    def call(self, fn: Callable[[TokenClient], Any]) -> Any:
        """`fn(client)` under the token's lock; a failed port is reopened next time."""
        with self.lock:
            try:
                return fn(self._open())
            except (ProtocolError, serial.SerialException, OSError, ValueError) as exc:
                self._drop()
                raise PanelError(f"{self.url}: {exc}") from None

    def refresh(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        try:
            info, shown, clock = self.call(lambda c: (
                (i := c.info()), c.display() if i.provisioned else None, c.clock()))
        except PanelError as exc:
            self.snapshot = {**self.snapshot, "error": str(exc)}
            return self.snapshot
        totp = info.kind is Kind.TOTP
        period = info.period or 30
        token_ms = clock.token_time_ms
        d = clock.drift
        self.history.append((round(now, 3), clock.offset_ms / 1000))
        self.snapshot = {
            "url": self.url, "serial": info.serial, "model": info.model,
            "form": "card" if "card" in info.model.lower() else "fob",
            "kind": info.kind.name.lower(), "hash": info.hash.name.lower(),
            "digits": info.digits, "period": info.period, "qa": info.qa_mode,
            "battery_ok": info.battery_ok, "provisioned": info.provisioned,
            "code": shown.code if shown else "", "seconds_left": shown.seconds_left if shown
            else 0,
            "step_left": (period - (token_ms // 1000) % period) if totp else None,
            "token_time": token_ms / 1000, "offset_s": clock.offset_ms / 1000,
            "frozen": clock.frozen, "drift_ppm": d.ppm,
            "temperature_mode": d.temperature_mode.name.lower(),
            "temperature_c": d.temperature_c, "error": None,
            "history": list(self.history),
        }
        return self.snapshot

    # -- actions -------------------------------------------------------------------------

    def press(self) -> dict[str, Any]:
        reply = self.call(lambda c: c.press())
        return {"code": reply.code, "seconds_left": reply.seconds_left}

    def qa(self, action: str, value: Any = None) -> dict[str, Any]:
        def drift_with(change: Callable[[DriftSettings], DriftSettings]) -> Callable[
                [TokenClient], ClockReply]:
            def run(c: TokenClient) -> ClockReply:
                return c.clock_command(SetDriftRequest(change(c.clock().drift)))
            return run

        if action == "drift":
            ppm = _finite(value, "drift", -1000, 1000)
            self.call(drift_with(lambda d: replace(d, ppm=ppm)))
        elif action == "temperature":
            celsius = _finite(value, "temperature", -60, 120)
            self.call(drift_with(lambda d: replace(
                d, temperature_mode=TemperatureMode.CONSTANT, temperature_c=celsius)))
        elif action == "age":
            span = parse_span(str(value))
            self.call(lambda c: c.clock_command(AgeRequest(span)))
        elif action == "jump":
            text = str(value).strip()
            sign = -1 if text.startswith("-") else 1
            delta = sign * parse_span(text.lstrip("+-"))
            self.call(lambda c: c.clock_command(AdjustOffsetRequest(delta)))
        elif action == "set-time":
            when = parse_time(str(value))
            self.call(lambda c: c.clock_command(SetTimeRequest(when)))
        elif action == "freeze":
            self.call(lambda c: c.clock_command(FreezeRequest()))
        elif action == "unfreeze":
            self.call(lambda c: c.clock_command(UnfreezeRequest()))
        elif action == "battery":
            if value not in ("dead", "replaced"):
                raise PanelError("battery is dead or replaced")
            self.call(lambda c: c.info_command(BatteryRequest(dead=value == "dead")))
        else:
            raise PanelError(f"no QA action {str(action)[:40]!r}")
        return self.refresh()


class Panel:
    """The tokens of a panel and the thread that keeps their snapshots fresh."""

    def __init__(self, urls: Sequence[str], *, interval: float = 0.5,
                 timeout: float = 1.0) -> None:
        if not urls:
            raise PanelError("no tokens to show: give --dir FLEET_DIR or --port URL")
        self.views = [TokenView(u, timeout=timeout) for u in dict.fromkeys(urls)]
        self.interval = interval
        self.token = secrets.token_urlsafe(24)  # what the page sends with every POST
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.version = 0
        self.watchers = 0  # open event streams: the tokens are polled only while one is

    @staticmethod
    def urls_from_fleet(directory: str | Path) -> list[str]:
        """The port URLs in a running fleet's manifest.json (sorted by serial)."""
        path = Path(directory) / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
            tokens = manifest["tokens"]
            return [str(tokens[s]["port"]) for s in sorted(tokens)]
        except FileNotFoundError:
            raise PanelError(f"no {path}: is the fleet running (foblab sim fleet --dir "
                             f"{directory})?") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PanelError(f"cannot read {path}: {exc}") from None

    def view(self, key: str) -> TokenView:
        for v in self.views:
            if key in (v.snapshot.get("serial"), v.url):
                return v
        raise PanelError(f"no token {key[:80]!r} on this panel")

    def refresh_all(self) -> None:
        for v in self.views:
            v.refresh()
        self.version += 1

    def state(self) -> list[dict[str, Any]]:
        return [v.snapshot for v in self.views]

    def start(self) -> None:
        self.refresh_all()

        def loop() -> None:
            # Only while a page watches: a port nobody looks at is left alone (a PTY has one
            # input queue, so a poll could take the reply another program waits for).
            while not self._stop.wait(self.interval):
                if self.watchers:
                    self.refresh_all()

        self._thread = threading.Thread(target=loop, name="foblab-panel-poll", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for v in self.views:
            v.close()

    # -- the web app ---------------------------------------------------------------------

    def app(self) -> Any:
        import jinja2
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import (
            FileResponse,
            HTMLResponse,
            JSONResponse,
            PlainTextResponse,
            Response,
            StreamingResponse,
        )
        from starlette.routing import Route

        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                 autoescape=True)
        headers = {"Content-Security-Policy": "default-src 'none'; style-src 'self'; "
                   "script-src 'self'; connect-src 'self'; img-src 'self'; "
                   "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                   "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                   "Referrer-Policy": "no-referrer"}

        def host_ok(request: Request) -> bool:
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            return is_loopback(name) or name == request.scope.get("server", ("",))[0]

        async def page(request: Request) -> Response:
            if not host_ok(request):
                return PlainTextResponse("unknown host", 421)
            await run_in_threadpool(self.refresh_all)
            html = env.get_template("panel.html").render(
                tokens=self.state(), page_token=self.token)
            return HTMLResponse(html, headers=headers)

        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            types = {"panel.css": "text/css", "panel.js": "text/javascript"}
            if name not in types:
                return PlainTextResponse("not found", 404)
            return FileResponse(HERE / "static" / name, media_type=types[name],
                                headers={"Cache-Control": "no-cache"})

        async def state(request: Request) -> Response:
            if not host_ok(request):
                return PlainTextResponse("unknown host", 421)
            return JSONResponse({"tokens": self.state()}, headers=headers)

        async def events(request: Request) -> Response:
            if not host_ok(request):
                return PlainTextResponse("unknown host", 421)

            async def stream() -> AsyncIterator[str]:
                seen = -1
                self.watchers += 1
                try:
                    while not self._stop.is_set():
                        if self.version != seen:
                            seen = self.version
                            yield f"data: {json.dumps({'tokens': self.state()})}\n\n"
                        await asyncio.sleep(self.interval / 2)
                        if await request.is_disconnected():
                            break
                finally:
                    self.watchers -= 1

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})

        async def act(request: Request) -> Response:
            if not host_ok(request):
                return PlainTextResponse("unknown host", 421)
            if not secrets.compare_digest(request.headers.get("x-panel-token", ""),
                                          self.token):
                return JSONResponse({"error": "this request did not come from the panel's "
                                     "page"}, 403)
            body = await request.body()
            try:
                if len(body) > 4096:
                    raise PanelError("request too large")
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise PanelError("send a JSON object")
                v = self.view(str(data.get("token", "")))
                what = request.path_params["what"]
                if what == "press":
                    result = await run_in_threadpool(v.press)
                    snap = await run_in_threadpool(v.refresh)
                    self.version += 1
                    return JSONResponse({**result, "token": snap})
                if what == "qa":
                    snap = await run_in_threadpool(v.qa, str(data.get("action", "")),
                                                   data.get("value"))
                    self.version += 1
                    return JSONResponse({"token": snap})
                raise PanelError("no such action")
            except (PanelError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, 400)

        return Starlette(routes=[
            Route("/", page), Route("/static/{name}", static), Route("/state", state),
            Route("/events", events), Route("/api/{what}", act, methods=["POST"]),
        ])


def bind(host: str, port: int, allow_remote: bool = False) -> socket.socket:
    check_bind(host, allow_remote)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise PanelError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}/" if ":" not in host else f"http://[{host}]:{port}/"


def run(panel: Panel, sock: socket.socket, *, on_ready: Callable[[str], None] | None = None
        ) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers)."""
    import uvicorn

    panel.start()
    try:
        config = uvicorn.Config(panel.app(), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        if on_ready is not None:
            on_ready(url_of(sock))
        server.run(sockets=[sock])
    finally:
        panel.close()
        sock.close()


@contextmanager
def serve_panel(urls: Sequence[str], *, host: str = "127.0.0.1", port: int = 0,
                allow_remote: bool = False, interval: float = 0.5) -> Iterator[str]:
    """A panel on a background thread for the duration of the block; yields its URL."""
    import uvicorn

    sock = bind(host, port, allow_remote)
    panel = Panel(urls, interval=interval)
    panel.start()
    config = uvicorn.Config(panel.app(), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="foblab-panel", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        panel.close()  # ends the event streams first, so the server can stop at once
        server.should_exit = True
        thread.join(10)
        sock.close()

"""`foblab demo`: the whole product, end to end, in a temporary directory, in seconds.

It starts a small fleet of emulated key fobs in QA mode on PTYs and a blank token on an
enrollment station, runs the real validator daemon (`foblab validator serve`, uvicorn on an
ephemeral loopback port) as a child process in its own process group, and then tells the
story of a token's life through the HTTP API and the serial ports: import the vendor's PSKC
file, enable alice with two consecutive codes, log in, replay, a wrong code, a year of drift
at +40 ppm, resync, a login through the RADIUS door (as a VPN would send it), and a blank
token provisioned through the station for bob.

Every step states what must happen and checks it; the exit status is 0 only if all did.
Whatever happens (a failed step, Ctrl-C, SIGTERM) the daemon's process group is stopped,
the ports are closed, their links removed and the directory deleted.

Where a person would wait for the display to change (up to 30 s), the demo steps the QA
token's clock to its next code instead; the validator sees that as drift of less than a
step, which is what its window is for.

`FOBLAB_DEMO_BREAK=STEP` (or the hidden `--break STEP`) flips the expectation of one step,
so the tests can see the demo fail; STEP is one of the step keys (e.g. `replay`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from tools._vocab import READY, TOKEN_REPLY
from tools.api_client import ApiClient, ApiError

PERIOD_MS = 30_000
FLEET_SIZE = 3
STATION = "bench"


class DemoAbort(Exception):
    """A step failed in a way the story cannot go on from."""


@dataclass
class Step:
    key: str
    title: str
    expected: str
    actual: str = ""
    ok: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


class Story:
    def __init__(self, as_json: bool, broken: str | None) -> None:
        self.as_json = as_json
        self.broken = broken
        self.steps: list[Step] = []

    def expect(self, key: str, title: str, expected: str, actual: str, *,
               detail: dict[str, Any] | None = None, fatal: bool = False) -> bool:
        """Record a step: `expected` and `actual` are short outcome words (accepted, ...)."""
        if self.broken == key:  # the test hook: this step now expects the opposite
            expected = f"not {expected}"
        step = Step(key, title, expected, actual, actual == expected, detail or {})
        self.steps.append(step)
        if not self.as_json:
            mark = "ok  " if step.ok else "FAIL"
            click.echo(f"{len(self.steps):>2}. {mark} {title}: {actual}")
            if not step.ok:
                click.echo(f"         expected {expected}, got {actual}")
        if fatal and not step.ok:
            raise DemoAbort(f"step {len(self.steps)} ({key}) failed: cannot go on")
        return step.ok

    def say(self, line: str) -> None:
        if not self.as_json:
            click.echo(f"    {line}")

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


# -- the pieces ---------------------------------------------------------------------------

@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every `finally` runs."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


RADIUS_SECRET_FILE = "radius-vpn.secret"


def _radius_config(directory: Path) -> bool:
    """Give the daemon a RADIUS door with one client, a VPN on loopback, when pyrad (the
    `radius` extra) is installed. Returns whether it did."""
    import secrets

    try:
        import pyrad  # noqa: F401
    except ImportError:
        return False
    from validator.secrets_box import write_private_file

    write_private_file(directory / RADIUS_SECRET_FILE, secrets.token_hex(16).encode())
    with (directory / "foblab.toml").open("a") as f:
        f.write(f'\n[radius]\nlisten = "127.0.0.1:0"\n\n[[radius.clients]]\nname = "vpn"\n'
                f'address = "127.0.0.1/32"\nsecret_file = "{RADIUS_SECRET_FILE}"\n')
    return True


@contextmanager
def _daemon(directory: Path, station_url: str, log_path: Path
            ) -> Iterator[tuple[str, int, tuple[str, int] | None]]:
    """`foblab validator serve` on an ephemeral port, in its own process group; its URL,
    pid and RADIUS address (None without a [radius] table)."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below, after the child is gone
    cmd = [sys.executable, "-c", "from tools.cli import main; main()", "validator", "serve",
           "--dir", str(directory), "--port", "0", "--station", f"{STATION}={station_url}",
           "--log-level", "warning"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, env=env, cwd=str(Path(__file__).parent.parent))
    try:
        deadline = time.monotonic() + READY.seconds
        url = None
        while url is None:
            text = log_path.read_text(errors="replace")
            m = re.search(r"listening on (https?://[^\s\"]+)", text)
            if m:
                url = m.group(1)
            elif proc.poll() is not None:
                raise DemoAbort(f"the daemon exited ({proc.returncode}): "
                                f"{text.strip().splitlines()[-1:] or ''}")
            elif time.monotonic() > deadline:
                raise DemoAbort(f"the daemon did not start within {READY.seconds:g} s")
            else:
                time.sleep(0.05)
        m = re.search(r"answering RADIUS on udp ([^\s\"]+):(\d+)", log_path.read_text())
        yield url, proc.pid, (m.group(1), int(m.group(2))) if m else None
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    else:  # the daemon is gone; make sure nothing it started lingers in its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _failed(exc: ApiError) -> str:
    """A refused or failed API call as a step's actual outcome."""
    return f"HTTP {exc.status} {exc.data}" if exc.status is not None else exc.message


class Fob:
    """A QA token on its serial port, read the way a person reads a key fob."""

    def __init__(self, url: str) -> None:
        import serial

        from protocol import TokenClient, pyserial_reader

        self.url = url
        self.port = serial.serial_for_url(url, timeout=TOKEN_REPLY.seconds,
                                           write_timeout=TOKEN_REPLY.seconds)
        self.client = TokenClient(pyserial_reader(self.port), self.port.write)
        self.used: int | None = None  # the newest step the validator has taken from us

    def close(self) -> None:
        self.port.close()

    def _step_to(self, step: int, into_ms: int = 300) -> None:
        from protocol import AdjustOffsetRequest

        now = self.client.clock().token_time_ms
        delta = step * PERIOD_MS + into_ms - now
        if delta > 0:
            self.client.clock_command(AdjustOffsetRequest(delta))

    def step(self) -> int:
        return int(self.client.clock().token_time_ms // PERIOD_MS)

    def code(self) -> str:
        """The code on the display, pressing the button; a fresh one (QA: the clock is
        stepped to the next code rather than waiting for it) if this step was used."""
        if self.used is not None and self.step() <= self.used:
            self._step_to(self.used + 1)
        return self.client.press().code

    def pair(self) -> tuple[str, str]:
        """Two consecutive codes: the one shown, then the next (stepped to, not waited for)."""
        first = self.code()
        self._step_to(self.step() + 1, 500)
        return first, self.client.press().code

    def offset_s(self) -> float:
        return self.client.clock().offset_ms / 1000


# -- the story ----------------------------------------------------------------------------

def _story(story: Story, work: Path, stack: ExitStack) -> None:
    from firmware_sim.background import serve_fleet, serve_token
    from protocol import AgeRequest, DriftSettings, SetDriftRequest
    from validator.daemon import init_dir

    # 1. tokens
    fleet = stack.enter_context(serve_fleet(count=FLEET_SIZE, directory=work / "fleet",
                                            qa=True, durable=False))
    serials = sorted(fleet.tokens)
    blank = stack.enter_context(serve_token(model="keyfob", qa=True, seed=None,
                                            state_dir=work / "blank-state",
                                            pty_link=work / "station" / "blank",
                                            durable=False))
    panel = _panel(stack, [str(fleet.ports[s].url) for s in serials])
    story.expect("fleet", f"started {FLEET_SIZE} emulated key fobs in QA mode on PTYs "
                 f"({', '.join(serials)}) and a blank token on the enrollment station; "
                 f"token panel on {panel or '(needs foblab[ui])'}",
                 "running", "running" if fleet.manifest_path.exists() else "missing",
                 detail={"serials": serials, "ports": str(work / "fleet" / "ports"),
                         "panel": panel}, fatal=True)

    # 2. the daemon
    made = init_dir(work / "validator")
    with_radius = _radius_config(work / "validator")
    url, pid, radius = stack.enter_context(_daemon(work / "validator", blank.url,
                                                   work / "validator" / "daemon.log"))
    api = stack.enter_context(ApiClient(url, str(made["admin_key"])))
    try:
        api.health()
        health = "healthy"
    except ApiError as exc:
        health = f"HTTP {exc.status}" if exc.status is not None else exc.message
    console = f"{url}/ui/" if api.has_console() else None
    story.expect("daemon", f"validator daemon (pid {pid}) listening on {url}, SQLite in "
                 f"{work / 'validator'}; web console on {console or '(needs foblab[ui])'}",
                 "healthy", health,
                 detail={"url": url, "pid": pid, "console": console,
                         "admin_key_file": str(work / "validator" / "admin.key")}, fatal=True)

    # 3. the vendor's seed file
    status: int | None = 200
    try:
        data = api.import_tokens(fleet.seed_file.read_text(), "pskc")
    except ApiError as exc:
        data, status = exc.data, exc.status
    imported = data.get("imported") if isinstance(data, dict) else None
    story.expect("import", f"imported the fleet's PSKC seed file as a vendor shipment: "
                 f"{imported} tokens", f"{FLEET_SIZE} imported", f"{imported} imported",
                 detail={"status": status}, fatal=True)

    # 4. enable alice with two consecutive codes read over serial
    serial = serials[0]
    fob = Fob(str(fleet.ports[serial].url))
    stack.callback(fob.close)
    c1, c2 = fob.pair()
    try:
        api.enable_device("alice", serial, c1, c2)
        got = "enabled"
    except ApiError as exc:
        got = _failed(exc)
    story.expect("enable", f"enabled alice's {serial} with two consecutive codes read over "
                 f"{fob.url}: {c1}, {c2}", "enabled", got, fatal=True)
    fob.used = fob.step()

    def login(user: str, code: str) -> str:
        """The outcome of `user` logging in with `code`, in the steps' words."""
        try:
            data = api.verify(user, code)
        except ApiError as exc:
            return f"HTTP {exc.status}" if exc.status is not None else exc.message
        if not isinstance(data, dict):
            return "HTTP 200 without a verdict"
        return "accepted" if data.get("ok") else f"refused ({data.get('reason')})"

    # 5-7. a login, the same code again, a wrong code
    code = fob.code()
    got = login("alice", code)
    story.expect("login", f"alice logs in with the code on the display, {code}", "accepted",
                 got)
    fob.used = fob.step()
    got = login("alice", code)
    story.expect("replay", f"the same code {code} a second time", "refused (replayed)", got)
    wrong = f"{(int(code) + 500_017) % 1_000_000:06d}"
    got = login("alice", wrong)
    story.expect("wrong", f"a code that is not on the display, {wrong}",
                 "refused (invalid_code)", got)

    # 8. a year at +40 ppm
    before = fob.offset_s()
    fob.client.clock_command(SetDriftRequest(DriftSettings(ppm=40.0)))
    fob.client.clock_command(AgeRequest(365 * 86_400_000))
    offset = fob.offset_s()
    code = fob.code()
    got = login("alice", code)
    story.expect("drifted", f"a year at +40 ppm later (AGE): the token's clock gained "
                 f"{offset - before:+.1f} s and is {offset:+.1f} s off, its code {code} is out "
                 "of the window", "refused (invalid_code)", got,
                 detail={"token_offset_s": offset, "aged_by_s": offset - before})

    # 9. resync
    c1, c2 = fob.pair()
    try:
        data = api.resync_device("alice", serial, c1, c2)
        got = "accepted"
    except ApiError as exc:
        data, got = exc.data, _failed(exc)
    est = ((data or {}).get("drift") or {}).get("offset_seconds") if isinstance(data, dict) \
        else None
    story.expect("resync", f"resync with two consecutive codes {c1}, {c2}: the validator "
                 f"now puts the token at {est:+.1f} s" if isinstance(est, float | int) else
                 "resync with two consecutive codes", "accepted", got)
    fob.used = fob.step()

    # 10. log in again, and the drift estimate
    code = fob.code()
    got = login("alice", code)
    fob.used = fob.step()
    try:
        data = api.get_token(serial)
    except ApiError as exc:
        data = exc.data
    drift = data.get("drift", {}) if isinstance(data, dict) else {}
    story.expect("login-again", f"alice logs in again with {code}; the validator's drift "
                 f"estimate: {drift.get('offset_seconds', float('nan')):+.1f} s "
                 f"(token {fob.offset_s():+.1f} s)", "accepted", got,
                 detail={"drift": drift, "token_offset_s": fob.offset_s()})

    # 11. the same token through the RADIUS door, as a VPN asks
    if with_radius:
        code = fob.code()
        got = _radius_login(work / "validator", radius, "alice", code)
        fob.used = fob.step()
        where = f"{radius[0]}:{radius[1]}" if radius else "?"
        story.expect("radius", f"a VPN sends alice's next code {code} to the RADIUS door "
                     f"(udp {where}, PAP with Message-Authenticator)", "Access-Accept", got)
    else:
        story.say("(no RADIUS step: pyrad, the radius extra, is not installed)")

    # 12. the enrollment station: provision the blank token and enable it for bob
    # (QA: its clock is put 2 s before a step boundary, so the station's wait for its
    # second code is short)
    bench = Fob(blank.url)
    bench._step_to(bench.step() + 1, -2000)
    bench.close()
    try:
        data = api.station_enroll(STATION, "bob", provision=True)
        got = "enrolled"
    except ApiError as exc:
        data, got = exc.data, _failed(exc)
    new_serial = data.get("serial") if isinstance(data, dict) else None
    story.expect("station", f"the enrollment station provisioned blank token {new_serial} "
                 f"over its serial port and enabled it for bob", "enrolled", got)
    if got == "enrolled" and isinstance(data, dict):
        bench = Fob(blank.url)
        stack.callback(bench.close)
        last = (data.get("token") or {}).get("last_accepted")
        bench.used = last if isinstance(last, int) else bench.step()
        code = bench.code()
        story.expect("bob", f"bob logs in with his new token's code, {code}", "accepted",
                     login("bob", code))


def _radius_login(directory: Path, radius: tuple[str, int] | None, user: str,
                  code: str) -> str:
    from tools.radius_cmd import NoAnswer, exchange

    if radius is None:
        return "no RADIUS door"
    secret = (directory / RADIUS_SECRET_FILE).read_bytes().strip()
    try:
        return exchange(radius, user, code, secret).code
    except NoAnswer:
        return "no answer"


def _panel(stack: ExitStack, urls: list[str]) -> str | None:
    """The token panel on the fleet (a free loopback port), or None without Jinja2."""
    try:
        import jinja2  # noqa: F401 - the panel's templates

        from firmware_sim.panel import serve_panel
    except ModuleNotFoundError:
        return None
    return stack.enter_context(serve_panel(urls))


def _linger(story: Story) -> None:
    """--serve: keep everything running for a look in the browser, until Ctrl-C."""
    first, second = story.steps[0].detail, story.steps[1].detail
    click.echo(f"serving until Ctrl-C: the web console on {second.get('console')} (sign in "
               f"with the key in {second.get('admin_key_file')}), the token panel on "
               f"{first.get('panel')}")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


def run_demo(as_json: bool, broken: str | None,
             serve: bool = False) -> tuple[Story, Path, float]:
    story = Story(as_json, broken)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="foblab-demo-"))
    try:
        with _signals_as_interrupt(), ExitStack() as stack:
            if not as_json:
                click.echo(f"foblab demo: emulated tokens, the validator daemon and clock drift, "
                           f"end to end (in {work})")
            try:
                _story(story, work, stack)
            except DemoAbort as exc:
                story.say(str(exc))
            else:
                if serve and not as_json and len(story.steps) >= 2:
                    try:
                        _linger(story)
                    except KeyboardInterrupt:
                        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return story, work, time.monotonic() - started


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@click.option("--break", "broken", hidden=True, envvar="FOBLAB_DEMO_BREAK",
              help="Flip one step's expectation (for tests).")
@click.option("--serve", is_flag=True,
              help="After the story, keep the daemon, its web console and the token panel "
                   "running until Ctrl-C.")
def demo(as_json: bool, broken: str | None, serve: bool) -> None:
    """Run the whole story end to end: tokens, daemon, enable, login, drift, resync,
    enrollment. Needs nothing but this package; leaves nothing behind."""
    try:
        story, work, seconds = run_demo(as_json, broken or None, serve)
    except KeyboardInterrupt:
        click.echo("foblab demo: interrupted; everything it started is stopped and removed",
                   err=True)
        sys.exit(130)
    left = work.exists()
    if as_json:
        click.echo(json.dumps({
            "ok": story.ok and not left, "seconds": round(seconds, 2), "workdir": str(work),
            "left_behind": left,
            "steps": [{"step": i + 1, "key": s.key, "title": s.title, "expected": s.expected,
                       "actual": s.actual, "ok": s.ok, **({"detail": s.detail} if s.detail
                                                          else {})}
                      for i, s in enumerate(story.steps)],
        }, indent=1))
    else:
        good = sum(s.ok for s in story.steps)
        verdict = "every step behaved as stated" if story.ok else \
            f"{len(story.steps) - good} step(s) did not behave as stated"
        click.echo(f"{good}/{len(story.steps)} steps ok in {seconds:.1f} s: {verdict}; "
                   f"{'left files behind!' if left else 'nothing left behind'}")
    sys.exit(0 if story.ok and not left else 1)


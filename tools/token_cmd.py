"""`foblab token ...`: talk to a token (emulated or real) on any pyserial port URL.

Every command takes PORT (a device path, a PTY symlink, `socket://HOST:PORT`, ...),
`--timeout SECONDS` and `--json`. Failures (port missing, no reply, token refused) print one
line `foblab: error: ...` on stderr and exit 1. JSON keys are listed in docs/token.md.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import serial

from firmware_sim.clock import implied_mode
from protocol import (
    DEFAULT_PERIOD,
    AdjustOffsetRequest,
    AgeRequest,
    BatteryRequest,
    ClockReply,
    DriftSettings,
    ErrorCode,
    FactoryResetRequest,
    FreezeRequest,
    Hash,
    InfoReply,
    Kind,
    ProtocolError,
    ProvisionRequest,
    SetDriftRequest,
    SetTimeRequest,
    TemperatureMode,
    TokenClient,
    TokenRefused,
    UnfreezeRequest,
    pyserial_reader,
)
from tools import choices
from tools._args import DURATION, HEX, SIGNED_DURATION, TIME, format_time_ms
from tools._args import fail as _fail
from tools._vocab import timeout_option

_F = TypeVar("_F", bound=Callable[..., Any])
MAX_PEEK = 32  # codes a PEEK reply holds (firmware_sim MAX_PEEK; one frame)
NEGATIVE_OK = {"ignore_unknown_options": True}  # so `-12.5` and `-90s` are arguments




@contextmanager
def _client(port: str, timeout: float) -> Iterator[TokenClient]:
    try:
        link = serial.serial_for_url(port, timeout=timeout, write_timeout=timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        _fail(f"cannot open {port}: {exc}")
    try:
        yield TokenClient(pyserial_reader(link), link.write)
    except ProtocolError as exc:
        _fail(f"{port}: {exc}")
    except (serial.SerialException, OSError) as exc:
        _fail(f"{port}: {exc}")
    finally:
        link.close()


def common(f: _F) -> _F:
    f = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)
    f = timeout_option("token")(f)
    f = click.argument("port")(f)
    return f


def _emit(as_json: bool, data: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(data, sort_keys=True) if as_json else human)


# -- output shapes ---------------------------------------------------------------------
def info_text(r: InfoReply) -> str:
    algo = f"{r.kind.name} {r.hash.name} {r.digits} digits"
    if r.kind is Kind.TOTP:
        algo += f" {r.period} s"
    flags = [name for name, on in (("provisioned", r.provisioned), ("locked", r.locked),
                                   ("QA", r.qa_mode)) if on]
    flags.append("battery ok" if r.battery_ok else "BATTERY DEAD")
    return f"{r.serial}  {r.model} (firmware {r.firmware})  {algo}  [{', '.join(flags)}]"


def clock_dict(r: ClockReply) -> dict[str, Any]:
    d = r.drift
    return {
        "token_time": r.token_time_ms / 1000, "token_time_iso": format_time_ms(r.token_time_ms),
        "offset_s": r.offset_ms / 1000, "frozen": r.frozen, "drift_ppm": d.ppm,
        "aging_ppm_per_year": d.aging_ppm_per_year,
        "temperature_mode": d.temperature_mode.name.lower(), "temperature_c": d.temperature_c,
        "temperature_swing_c": d.temperature_swing_c,
    }


def clock_text(r: ClockReply) -> str:
    d = r.drift
    parts = [f"{format_time_ms(r.token_time_ms)}", f"offset {r.offset_ms / 1000:+.3f} s",
             f"drift {d.ppm:+.3f} ppm"]
    if d.aging_ppm_per_year:
        parts.append(f"aging {d.aging_ppm_per_year:+.3f} ppm/yr")
    if d.temperature_mode is TemperatureMode.CONSTANT:
        parts.append(f"{d.temperature_c:.2f} °C")
    elif d.temperature_mode is TemperatureMode.DAILY:
        parts.append(f"{d.temperature_c:.2f}±{d.temperature_swing_c:.2f} °C daily")
    if r.frozen:
        parts.append("FROZEN")
    return "  ".join(parts)


def _clock_cmd(port: str, timeout: float, as_json: bool, req: Any) -> None:
    with _client(port, timeout) as c:
        r = c.clock_command(req)
    _emit(as_json, clock_dict(r), clock_text(r))


def _info_cmd(port: str, timeout: float, as_json: bool, req: Any) -> None:
    with _client(port, timeout) as c:
        r = c.info_command(req)
    _emit(as_json, r.to_json(), info_text(r))


# -- commands ----------------------------------------------------------------------------
@click.group()
def token() -> None:
    """Talk to a token on PORT (any pyserial URL: a device, a PTY link, socket://HOST:PORT)."""


@token.command()
@common
def info(port: str, timeout: float, as_json: bool) -> None:
    """Serial, model, algorithm and flags."""
    with _client(port, timeout) as c:
        r = c.info()
    _emit(as_json, r.to_json(), info_text(r))


@token.command()
@common
@click.option("--quiet", "-q", is_flag=True,
              help="Print the code alone (for $(...) in a shell).")
def press(port: str, timeout: float, as_json: bool, quiet: bool) -> None:
    """Press the button: the code now on the display."""
    with _client(port, timeout) as c:
        r = c.press()
    _emit(as_json, {"code": r.code, "seconds_left": r.seconds_left},
          r.code + (f"  ({r.seconds_left} s left)" if r.seconds_left and not quiet else ""))


@token.command()
@common
def display(port: str, timeout: float, as_json: bool) -> None:
    """What the display shows, without pressing ("" when blank)."""
    with _client(port, timeout) as c:
        r = c.display()
    _emit(as_json, {"code": r.code, "seconds_left": r.seconds_left},
          (r.code + (f"  ({r.seconds_left} s left)" if r.seconds_left else "")) if r.code
          else "(blank)")


@token.command()
@common
def clock(port: str, timeout: float, as_json: bool) -> None:
    """The token's own time, its offset from true time and its drift settings."""
    with _client(port, timeout) as c:
        r = c.clock()
    _emit(as_json, clock_dict(r), clock_text(r))


@token.command()
@common
@click.option("--interval", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Seconds between looks at the display.")
@click.option("--count", type=click.IntRange(min=0), default=0,
              help="Stop after this many changes of the display (0: never).")
@click.option("--no-press", is_flag=True,
              help="Only watch: never press, even when a time token's display blanks.")
@click.option("--press-every", type=DURATION, default=None,
              help="Press every DURATION (e.g. 60s). An event (HOTP) token is only pressed "
                   "with this: each press uses up a code.")
def watch(port: str, timeout: float, as_json: bool, interval: float, count: int,
          no_press: bool, press_every: int | None) -> None:
    """Show the token's display: serial, code, countdown (and drift and battery in QA mode).

    On a terminal the line redraws in place; otherwise (or with --json) one line per change
    of the display. A time (TOTP) token is pressed when its display blanks, as a person would
    (not with --no-press); an event (HOTP) token only with --press-every. A dead battery
    shows a blank display. Ctrl-C stops.
    """
    live = sys.stdout.isatty() and not as_json
    shown = 0
    last: tuple[Any, ...] | None = None
    with _client(port, timeout) as c:
        info = c.info()
        event = info.kind is Kind.HOTP
        last_press: float | None = None  # --press-every presses at once, then every ...
        try:
            while count == 0 or shown < count:
                state = _look(c, info, event=event, no_press=no_press,
                              press_due=press_every is not None and (
                                  last_press is None or
                                  (time.monotonic() - last_press) * 1000 >= press_every))
                if state.pop("pressed"):
                    last_press = time.monotonic()
                key = (state["code"], state["battery_ok"]) if not live else tuple(state.items())
                if key != last:
                    last = key
                    shown += 1
                    if live:
                        click.echo("\r\x1b[K" + _watch_line(state, info, bar=True), nl=False)
                    elif as_json:
                        click.echo(json.dumps({**state, "time": round(time.time(), 3)},
                                              sort_keys=True))
                    else:
                        click.echo(_watch_line(state, info, bar=False))
                if count == 0 or shown < count:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
        finally:
            if live:
                click.echo("")


def _look(c: TokenClient, info: InfoReply, *, event: bool, no_press: bool,
          press_due: bool) -> dict[str, Any]:
    """One look at the token: what the display shows, pressing when a person would."""
    battery_ok = c.info().battery_ok if info.qa_mode else True
    r = c.display()
    code, left, pressed = r.code, r.seconds_left, False
    if press_due or (not r.code and not event and not no_press):
        try:
            p = c.press()
            code, left, pressed = p.code, p.seconds_left, True
        except TokenRefused as exc:
            if exc.reply.code is not ErrorCode.BATTERY_DEAD:
                raise
            battery_ok, pressed = False, True  # a dead battery: the display stays blank
    state: dict[str, Any] = {"serial": info.serial, "code": code, "seconds_left": left,
                             "battery_ok": battery_ok, "pressed": pressed}
    if info.qa_mode:
        clk = c.clock()
        state.update(offset_s=clk.offset_ms / 1000, drift_ppm=clk.drift.ppm)
    return state


def _watch_line(state: dict[str, Any], info: InfoReply, *, bar: bool) -> str:
    code = state["code"]
    if code:
        half = len(code) // 2
        shown = f"{code[:half]} {code[half:]}"
    else:
        shown = "(blank)".ljust(len("000 000") if info.digits == 6 else len("0000 0000"))
    parts = [state["serial"], shown]
    left = state["seconds_left"]
    if code and left and info.period:
        if bar:
            filled = round(10 * left / info.period)
            parts.append(f"[{'#' * filled}{'.' * (10 - filled)}] {left:2d} s")
        else:
            parts.append(f"({left} s left)")
    elif not code and info.kind is Kind.HOTP and state["battery_ok"]:
        parts.append("press the button (or --press-every 60s)")
    if "offset_s" in state:
        parts.append(f"offset {state['offset_s']:+.1f} s  drift {state['drift_ppm']:+.1f} ppm")
    parts.append("battery ok" if state["battery_ok"] else "BATTERY DEAD")
    return "  ".join(parts)


@token.command()
@common
@click.option("--seed-hex", "seed", type=HEX, required=True, help="The secret, hex.")
@click.option("--kind", type=choices.KIND, default=Kind.TOTP.label,
              show_default=True)
@click.option("--hash", "hash_", type=choices.HASH, default=Hash.SHA1.label,
              show_default=True)
@click.option("--digits", type=choices.DIGITS, default="6",
              show_default=True)
@click.option("--period", type=int, default=DEFAULT_PERIOD, show_default=True,
              help="TOTP step, seconds.")
@click.option("--counter", type=int, default=0, show_default=True, help="HOTP initial counter.")
def provision(port: str, timeout: float, as_json: bool, seed: bytes, kind: str, hash_: str,
              digits: str, period: int, counter: int) -> None:
    """Seed a blank token (it locks itself; reseeding is refused)."""
    _info_cmd(port, timeout, as_json,
              ProvisionRequest(seed=seed, kind=Kind.from_label(kind), hash=Hash.from_label(hash_),
                               digits=int(digits), period=period, counter=counter))


# -- QA ----------------------------------------------------------------------------------
@token.group()
def qa() -> None:
    """QA commands (the token must run in QA mode): make the clock misbehave on purpose."""


@qa.command(context_settings=NEGATIVE_OK)
@common
@click.argument("ppm", type=float)
@click.option("--aging", type=float, default=0.0, help="Aging, ppm per year.")
@click.option("--temp-mode", type=choices.TEMPERATURE_MODE, default=None,
              help="Temperature model (default: constant if --temp is given, else none).")
@click.option("--temp", "temp_c", type=float, default=25.0, help="°C, or the daily mean.")
@click.option("--swing", "swing_c", type=float, default=0.0,
              help="Daily profile amplitude, °C (implies --temp-mode daily).")
def drift(port: str, timeout: float, as_json: bool, ppm: float, aging: float,
          temp_mode: str | None, temp_c: float, swing_c: float) -> None:
    """Set the crystal's drift: PPM (decimal, e.g. -12.5), aging and temperature."""
    mode = implied_mode(temp_c, swing_c) if temp_mode is None \
        else TemperatureMode.from_label(temp_mode)
    settings = DriftSettings(ppm=ppm, aging_ppm_per_year=aging, temperature_mode=mode,
                             temperature_c=temp_c, temperature_swing_c=swing_c)
    _clock_cmd(port, timeout, as_json, SetDriftRequest(settings))


@qa.command(context_settings=NEGATIVE_OK)
@common
@click.argument("delta", type=SIGNED_DURATION)
def offset(port: str, timeout: float, as_json: bool, delta: int) -> None:
    """Step the clock by DELTA (e.g. 90s, -15m): a jump."""
    _clock_cmd(port, timeout, as_json, AdjustOffsetRequest(delta))


@qa.command()
@common
@click.argument("span", type=DURATION)
def age(port: str, timeout: float, as_json: bool, span: int) -> None:
    """Live through SPAN (e.g. 365d) of simulated time at once, drift applied."""
    _clock_cmd(port, timeout, as_json, AgeRequest(span))


@qa.command("set-time")
@common
@click.argument("when", type=TIME)
def set_time(port: str, timeout: float, as_json: bool, when: int) -> None:
    """Set the token's clock to WHEN (Unix seconds or ISO 8601)."""
    _clock_cmd(port, timeout, as_json, SetTimeRequest(when))


@qa.command()
@common
def freeze(port: str, timeout: float, as_json: bool) -> None:
    """Stop the token's clock."""
    _clock_cmd(port, timeout, as_json, FreezeRequest())


@qa.command()
@common
def unfreeze(port: str, timeout: float, as_json: bool) -> None:
    """Let the clock run on from where it was frozen."""
    _clock_cmd(port, timeout, as_json, UnfreezeRequest())


@qa.command("next")
@common
@click.option("--quiet", "-q", is_flag=True,
              help="Print the code alone (for $(...) in a shell).")
def next_(port: str, timeout: float, as_json: bool, quiet: bool) -> None:
    """Skip to the next code and press: what waiting for the display to change does, now.

    A TOTP token's clock is stepped forward to half a second into its next step (the offset
    grows by up to one period, as `qa offset` would); an event token is simply pressed.
    """
    with _client(port, timeout) as c:
        info = c.info()
        if info.kind is Kind.TOTP and info.period:
            period_ms = info.period * 1000
            now = c.clock().token_time_ms
            c.clock_command(AdjustOffsetRequest((now // period_ms + 1) * period_ms + 500 - now))
        r = c.press()
    _emit(as_json, {"code": r.code, "seconds_left": r.seconds_left},
          r.code + (f"  ({r.seconds_left} s left)" if r.seconds_left and not quiet else ""))


@qa.command()
@common
@click.option("--count", type=click.IntRange(1, MAX_PEEK), default=3, show_default=True,
              help=f"How many codes, 1 to {MAX_PEEK} (as many as fit one reply frame).")
def peek(port: str, timeout: float, as_json: bool, count: int) -> None:
    """Codes for the current step and the next COUNT-1 (HOTP: the next presses)."""
    with _client(port, timeout) as c:
        r = c.peek(count)
    _emit(as_json, {"codes": list(r.codes), "step": r.step, "seconds_left": r.seconds_left},
          " ".join(r.codes))


@qa.command()
@common
@click.argument("state", type=click.Choice(["dead", "replaced"]))
def battery(port: str, timeout: float, as_json: bool, state: str) -> None:
    """Kill the battery (blank display, clock stops) or fit a new one."""
    _info_cmd(port, timeout, as_json, BatteryRequest(dead=state == "dead"))


@qa.command()
@common
def reset(port: str, timeout: float, as_json: bool) -> None:
    """Factory reset: erase the seed and unlock (the clock keeps running)."""
    _info_cmd(port, timeout, as_json, FactoryResetRequest())

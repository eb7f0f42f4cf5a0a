"""The scenario file: TOML in, a checked `Scenario` out, every error with its line number.

The format is documented in docs/scenarios.md. In short:

    name = "..."                       # top-level settings
    seed = 1
    [token]   model, kind, hash, digits, period, serial, secret_hex
    [clock]   ppm, aging_ppm_per_year, temperature ("none" | "constant" | "daily"),
              temp_c, temp_swing_c, offset_s, steps = [{day, hour, offset_s}, ...]
    [validator]  window, max_failures, lock_base_s, lock_cap_s, typing_allowance_s
    [[event]] action, day / hour / minute / second or after, repeat, every, expect, reason, ...

`tomllib` reports syntax errors with their line; for schema errors (a wrong value, an unknown
key) the line is found by scanning the text for the offending table header or key, since
`tomllib` keeps no positions.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from firmware_sim.clock import Crystal
from firmware_sim.models import PRESETS, build_model
from firmware_sim.token import check_serial
from protocol import Hash, Kind, TemperatureMode
from tools._args import parse_duration_ms, parse_time_ms
from validator import rules
from validator.core import Policy

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DEFAULT_START = "2031-03-03T00:00:00Z"
"""Simulated time zero unless the file says `start`: a Monday, far from any leap second."""

CODE_ACTIONS = ("enable", "login", "resync")
TOKEN_ACTIONS = ("age", "set-drift", "battery", "step")
ACTIONS = (*CODE_ACTIONS, "deactivate", *TOKEN_ACTIONS, "wait")
STATUSES = ("accepted", "refused", "ok")
REASONS = (
    "invalid_code", "replayed", "locked", "no_device", "not_enabled",  # the validator's
    "battery_dead",  # the token shows nothing: there is no code to type
    "already_assigned", "not_assigned", "device_limit", "unknown_serial",  # enable/deactivate
)
CODES = ("current", "replay", "old", "wrong")
TEMPERATURES = TemperatureMode.labels()
MAX_USER = 40
"""Shorter than the validator's 64: a live run adds a 9-character suffix to every name."""
MAX_DAYS = 36_500
MAX_OFFSET_S = 1e9  # clock offsets and jumps, either sign: far beyond any crystal


class ScenarioError(Exception):
    """A scenario file that cannot be run; `line` is 1-based (0: no line applies)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class TokenSpec:
    model: str = "keyfob"
    kind: Kind = Kind.TOTP
    hash: Hash = Hash.SHA1
    digits: int = 6
    period: int = 30
    serial: str | None = None
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClockSpec:
    """The crystal: firmware_sim's `Crystal` as the file names its fields, plus an initial
    offset."""

    ppm: float = 0.0
    aging_ppm_per_year: float = 0.0
    temperature: str = "none"
    temp_c: float = 25.0
    temp_swing_c: float = 0.0
    offset_s: float = 0.0

    def crystal(self) -> Crystal:
        """The firmware's crystal settings. Raises ValueError beyond its limits."""
        return Crystal(ppm=self.ppm, aging_ppm_per_year=self.aging_ppm_per_year,
                       temperature_mode=TemperatureMode.from_label(self.temperature),
                       temperature_c=self.temp_c, temperature_swing_c=self.temp_swing_c)

    def describe(self) -> str:
        parts = [f"{self.ppm:+g} ppm"]
        if self.aging_ppm_per_year:
            parts.append(f"aging {self.aging_ppm_per_year:+g} ppm/year")
        if self.temperature == TemperatureMode.CONSTANT:
            parts.append(f"{self.temp_c:g} °C")
        elif self.temperature == TemperatureMode.DAILY:
            parts.append(f"{self.temp_c:g} ± {self.temp_swing_c:g} °C daily")
        return ", ".join(parts)


@dataclass(frozen=True)
class ValidatorSpec:
    """Policy overrides for the in-process validator (a live daemon uses its own)."""

    window: int | None = None
    max_failures: int | None = None
    lock_base_s: float | None = None
    lock_cap_s: float | None = None
    typing_allowance_s: float | None = None

    def policy(self) -> Policy:
        """The core's policy with these overrides. Raises ValueError for a policy the core
        refuses (checked when the file is parsed)."""
        fields: dict[str, Any] = {}
        for name, value in (("window", self.window), ("max_failures", self.max_failures),
                            ("lock_base", self.lock_base_s), ("lock_cap", self.lock_cap_s),
                            ("typing_allowance", self.typing_allowance_s)):
            if value is not None:
                fields[name] = value
        return Policy(**fields)


@dataclass(frozen=True)
class Expect:
    status: str
    reason: str | None = None

    def describe(self) -> str:
        return self.status if self.reason is None else f"{self.status} ({self.reason})"


@dataclass(frozen=True)
class Event:
    """One event of the expanded timeline."""

    index: int
    name: str
    action: str
    at_ms: int
    """Simulated milliseconds since the scenario's start."""
    line: int
    user: str
    expect: Expect
    code: str = "current"
    steps_back: int = 2
    typing_s: float = 3.0
    span_ms: int = 0
    clock: ClockSpec | None = None
    dead: bool = False
    offset_ms: int = 0

    @property
    def when(self) -> str:
        """`day 7 09:13:05`."""
        day, rest = divmod(self.at_ms, DAY_MS)
        h, rest = divmod(rest, HOUR_MS)
        m, rest = divmod(rest, 60_000)
        return f"day {day} {h:02d}:{m:02d}:{rest // 1000:02d}"


@dataclass(frozen=True)
class _Template:
    """An `[[event]]` table before repetition and random times of day are resolved."""

    line: int
    name: str | None
    action: str
    day: float | None
    hour: tuple[float, float] | None
    minute: float
    second: float
    after_ms: int | None
    repeat: int
    every_ms: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    path: str
    name: str
    description: str
    seed: int
    start_ms: int
    user: str
    token: TokenSpec
    clock: ClockSpec
    validator: ValidatorSpec
    templates: tuple[_Template, ...]
    steps: tuple[tuple[int, int, int], ...] = ()
    """Clock steps from `[clock] steps`: (at_ms, offset_ms, line)."""
    typing_s: float = 3.0
    """Seconds from reading a code to the validator receiving it, unless an event says."""

    def with_seed(self, seed: int | None) -> Scenario:
        return self if seed is None else replace(self, seed=seed)

    def timeline(self) -> list[Event]:
        """The events in time order, repetitions expanded, random times drawn from the seed."""
        rng = random.Random(f"{self.seed}:timeline")
        raw: list[tuple[int, int, _Template, int]] = []  # (at, order, template, instance)
        last = 0
        order = 0
        for tpl in self.templates:
            for i in range(tpl.repeat):
                if tpl.after_ms is not None:
                    at = last + (tpl.after_ms if i == 0 else tpl.every_ms)
                else:
                    at = round(((tpl.day or 0.0) * DAY_MS) + i * tpl.every_ms
                               + tpl.minute * 60_000 + tpl.second * 1000)
                    if tpl.hour is not None:
                        lo, hi = tpl.hour
                        hour = lo if lo == hi else rng.uniform(lo, hi)
                        at += round(hour * HOUR_MS)
                if at < last:
                    raise ScenarioError(self.path, tpl.line,
                                        f"event goes back in time ({_fmt_ms(at)} is before "
                                        f"the previous event at {_fmt_ms(last)})")
                last = at
                raw.append((at, order, tpl, i))
                order += 1
        for at, offset, line in self.steps:
            raw.append((at, -1, _Template(line, "clock step", "step", None, None, 0, 0, None,
                                          1, 0, {"offset_s": offset / 1000}), 0))
        raw.sort(key=lambda r: (r[0], r[1]))
        events = []
        for index, (at, _, tpl, i) in enumerate(raw):
            events.append(self._event(index, at, tpl, i))
        return events

    def _event(self, index: int, at: int, tpl: _Template, instance: int) -> Event:
        f = tpl.fields
        user = f.get("user", self.user)
        base = tpl.name or (f"{tpl.action} {user}" if tpl.action in (*CODE_ACTIONS, "deactivate")
                            else tpl.action)
        name = f"{base} #{instance + 1}" if tpl.repeat > 1 else base
        expect = Expect(f.get("expect", "ok"), f.get("reason"))
        return Event(
            index=index, name=name, action=tpl.action, at_ms=at, line=tpl.line, user=user,
            expect=expect, code=f.get("code", "current"), steps_back=f.get("steps_back", 2),
            typing_s=float(f.get("typing_s", self.typing_s)),
            span_ms=f.get("span_ms", 0), clock=f.get("clock"), dead=bool(f.get("dead", False)),
            offset_ms=round(float(f.get("offset_s", 0.0)) * 1000),
        )


def _fmt_ms(ms: int) -> str:
    return Event(0, "", "wait", ms, 0, "", Expect("ok")).when


class _Locator:
    """Finds the line of a table, an `[[event]]` or a key in the file's text."""

    _HEADER = re.compile(r"^\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.events = [i + 1 for i, ln in enumerate(self.lines)
                       if re.match(r"^\s*\[\[\s*event\s*\]\]", ln)]

    def table(self, name: str) -> int:
        pattern = re.compile(r"^\s*\[\s*" + re.escape(name) + r"\s*\]")
        for i, ln in enumerate(self.lines):
            if pattern.match(ln):
                return i + 1
        return 0

    def event(self, index: int) -> int:
        return self.events[index] if index < len(self.events) else 0

    def key(self, start: int, key: str) -> int:
        """The line of `key = ...` in the table whose header is line `start` (0: the top
        level); the table's header line when the key is not written out on its own line."""
        pattern = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
        for i in range(start, len(self.lines)):
            ln = self.lines[i]
            if self._HEADER.match(ln):
                break
            if pattern.match(ln):
                return i + 1
        return start


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file. Raises ScenarioError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(p), 0, f"cannot read: {exc}") from None
    return parse(text, str(p))


def parse(text: str, path: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(m.group(1)) if m else 0
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        col = f", column {m.group(2)}" if m else ""
        raise ScenarioError(path, line, f"not valid TOML: {msg}{col}") from None
    return _Parser(path, text, data).scenario()


class _Parser:
    def __init__(self, path: str, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.loc = _Locator(text)
        self.data = data

    def fail(self, line: int, message: str) -> ScenarioError:
        return ScenarioError(self.path, line, message)

    def table(self, name: str) -> tuple[dict[str, Any], int]:
        value = self.data.get(name, {})
        line = self.loc.table(name)
        if not isinstance(value, dict):
            raise self.fail(self.loc.key(0, name), f"{name} must be a table ([{name}])")
        return value, line

    def unknown(self, table: dict[str, Any], allowed: tuple[str, ...], start: int,
                where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(self.loc.key(start, key),
                                f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}")

    def scenario(self) -> Scenario:
        d = self.data
        top = ("name", "description", "seed", "start", "user", "typing_s",
               "token", "clock", "validator", "event")
        self.unknown(d, top, 0, "the top level")
        name = _typed(self, d, "name", str, 0, "a string", default="")
        seed = _typed(self, d, "seed", int, 0, "an integer", default=1)
        start_text = _typed(self, d, "start", str, 0, "an ISO 8601 time", default=DEFAULT_START)
        try:
            start_ms = parse_time_ms(start_text)
        except ValueError as exc:
            raise self.fail(self.loc.key(0, "start"), str(exc)) from None
        if start_ms < 0:
            raise self.fail(self.loc.key(0, "start"), "start must not be before 1970-01-01")
        user = _typed(self, d, "user", str, 0, "a user name", default="alice")
        if not rules.USER.matches(user, MAX_USER):
            raise self.fail(self.loc.key(0, "user"), rules.USER.describe("user names", MAX_USER))
        typing_s = _number(self, d, "typing_s", 0, 3.0, lo=0, hi=600)
        token = self.token()
        clock, steps = self.clock()
        validator = self.validator()
        events = d.get("event", [])
        if not isinstance(events, list) or not events:
            raise self.fail(0, "a scenario needs at least one [[event]]")
        templates = tuple(self.event(i, e) for i, e in enumerate(events))
        scenario = Scenario(
            path=self.path, name=name or Path(self.path).stem,
            description=_typed(self, d, "description", str, 0, "a string", default=""),
            seed=seed, start_ms=start_ms, user=user, token=token, clock=clock,
            validator=validator, templates=templates, steps=steps, typing_s=typing_s)
        scenario.timeline()  # events in time order: fail now, not mid-run
        return scenario

    def token(self) -> TokenSpec:
        t, line = self.table("token")
        self.unknown(t, ("model", "kind", "hash", "digits", "period", "serial", "secret_hex"),
                     line, "[token]")
        model = _typed(self, t, "model", str, line, "a model name", default="keyfob")
        if model not in PRESETS:
            raise self.fail(self.loc.key(line, "model"),
                            f"unknown model {model!r}; have: {', '.join(PRESETS)}")
        kind = _choice(self, t, "kind", Kind.labels(), line, default=None)
        hash_ = _choice(self, t, "hash", Hash.labels(), line, default=None)
        digits = _typed(self, t, "digits", int, line, "6 or 8", default=None)
        period = _typed(self, t, "period", int, line, "an integer", default=None)
        try:
            m = build_model(model, kind=kind, hash=hash_, digits=digits, period=period)
        except ValueError as exc:
            raise self.fail(line, str(exc)) from None
        if m.kind is not Kind.TOTP:
            raise self.fail(self.loc.key(line, "kind") if "kind" in t else line,
                            "scenarios drive TOTP tokens (their clock is what they test)")
        secret = None
        if "secret_hex" in t:
            try:
                secret = bytes.fromhex(_typed(self, t, "secret_hex", str, line, "hex"))
            except ValueError:
                raise self.fail(self.loc.key(line, "secret_hex"), "secret_hex is not hex") \
                    from None
            if not 1 <= len(secret) <= 64:
                raise self.fail(self.loc.key(line, "secret_hex"), "the secret must be 1-64 bytes")
        serial = _typed(self, t, "serial", str, line, "a string", default=None)
        if serial is not None:
            try:  # the token's own rule, narrower than the validator's
                check_serial(serial)
            except ValueError as exc:
                raise self.fail(self.loc.key(line, "serial"), str(exc)) from None
        return TokenSpec(model, m.kind, m.hash, m.digits, m.period, serial, secret)

    def clock(self) -> tuple[ClockSpec, tuple[tuple[int, int, int], ...]]:
        c, line = self.table("clock")
        self.unknown(c, ("ppm", "aging_ppm_per_year", "temperature", "temp_c", "temp_swing_c",
                         "offset_s", "steps"), line, "[clock]")
        spec = _clock(self, c, line, allow_offset=True)
        steps = []
        raw = c.get("steps", [])
        sline = self.loc.key(line, "steps") if "steps" in c else line
        if not isinstance(raw, list):
            raise self.fail(sline, "steps must be a list of {day, hour, offset_s}")
        for step in raw:
            if not isinstance(step, dict) or "offset_s" not in step or \
                    not set(step) <= {"day", "hour", "offset_s"}:
                raise self.fail(sline, "each clock step is {day = D, hour = H, offset_s = S}")
            day, hour, offset_s = step.get("day", 0), step.get("hour", 0), step["offset_s"]
            if not (_is_num(day) and 0 <= day <= MAX_DAYS and _is_num(hour) and 0 <= hour <= 24
                    and _is_num(offset_s) and abs(offset_s) <= MAX_OFFSET_S):
                raise self.fail(sline, f"a clock step is day 0-{MAX_DAYS}, hour 0-24 and "
                                f"offset_s within ±{MAX_OFFSET_S:g} s, all numbers")
            steps.append((round(day * DAY_MS + hour * HOUR_MS), round(offset_s * 1000), sline))
        return spec, tuple(steps)

    def validator(self) -> ValidatorSpec:
        v, line = self.table("validator")
        keys = ("window", "max_failures", "lock_base_s", "lock_cap_s", "typing_allowance_s")
        self.unknown(v, keys, line, "[validator]")
        spec = ValidatorSpec(
            window=_typed(self, v, "window", int, line, "an integer >= 0", default=None),
            max_failures=_typed(self, v, "max_failures", int, line, "an integer", default=None),
            lock_base_s=_number(self, v, "lock_base_s", line, None, lo=0.001, hi=86_400),
            lock_cap_s=_number(self, v, "lock_cap_s", line, None, lo=0.001, hi=86_400 * 365),
            typing_allowance_s=_number(self, v, "typing_allowance_s", line, None, lo=0, hi=600),
        )
        try:
            spec.policy()
        except ValueError as exc:
            raise self.fail(line, f"[validator]: {exc}") from None
        return spec

    def event(self, index: int, e: Any) -> _Template:
        line = self.loc.event(index)
        if not isinstance(e, dict):
            raise self.fail(line, "each event is a [[event]] table")
        common = ("name", "action", "day", "hour", "minute", "second", "after", "repeat",
                  "every", "user", "expect", "reason")
        per_action: dict[str, tuple[str, ...]] = {
            "enable": ("code", "typing_s"), "login": ("code", "steps_back", "typing_s"),
            "resync": ("code", "typing_s"), "deactivate": (), "age": ("span",),
            "set-drift": ("ppm", "aging_ppm_per_year", "temperature", "temp_c",
                          "temp_swing_c"),
            "battery": ("dead",), "step": ("offset_s",), "wait": (),
        }
        if "action" not in e:
            raise self.fail(line, f"event {index + 1} has no action; one of {', '.join(ACTIONS)}")
        action = e["action"]
        if not isinstance(action, str) or action not in per_action:
            raise self.fail(self.loc.key(line, "action"),
                            f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        self.unknown(e, common + per_action[action], line, f"a {action} event")
        where = f"event {index + 1} ({action})"

        def key_line(key: str) -> int:
            return self.loc.key(line, key)

        name = _typed(self, e, "name", str, line, "a string", default=None)
        fields: dict[str, Any] = {}
        if "user" in e:
            user = e["user"]
            if not rules.USER.matches(user, MAX_USER):
                raise self.fail(key_line("user"), rules.USER.describe("user names", MAX_USER))
            fields["user"] = user
        expect = e.get("expect", "ok" if action not in CODE_ACTIONS else None)
        if expect is None:
            raise self.fail(line, f"{where} needs expect = \"accepted\" or \"refused\"")
        if expect not in STATUSES:
            raise self.fail(key_line("expect"),
                            f"expect must be one of {', '.join(STATUSES)}, not {expect!r}")
        if action in CODE_ACTIONS and expect == "ok":
            raise self.fail(key_line("expect"), f"{where}: expect \"accepted\" or \"refused\"")
        if action not in (*CODE_ACTIONS, "deactivate") and expect != "ok":
            raise self.fail(key_line("expect"), f"{where}: a {action} event can only be \"ok\"")
        fields["expect"] = expect
        if "reason" in e:
            reason = e["reason"]
            if expect != "refused":
                raise self.fail(key_line("reason"), "reason goes with expect = \"refused\"")
            if reason not in REASONS:
                raise self.fail(key_line("reason"),
                                f"unknown reason {reason!r}; one of {', '.join(REASONS)}")
            fields["reason"] = reason
        if "code" in e:
            code = e["code"]
            allowed = CODES if action == "login" else ("current", "wrong")
            if code not in allowed:
                raise self.fail(key_line("code"),
                                f"code must be one of {', '.join(allowed)}, not {code!r}")
            fields["code"] = code
        if "steps_back" in e:
            fields["steps_back"] = _typed(self, e, "steps_back", int, line, "an integer")
            if not 1 <= fields["steps_back"] <= 1000:
                raise self.fail(key_line("steps_back"), "steps_back must be 1-1000")
        if "typing_s" in e:
            fields["typing_s"] = _number(self, e, "typing_s", line, 0.0, lo=0, hi=600)
        if action == "age":
            fields["span_ms"] = _duration(self, e, "span", line, required=True)
        if action == "set-drift":
            fields["clock"] = _clock(self, e, line, allow_offset=False)
        if action == "battery":
            if not isinstance(e.get("dead"), bool):
                raise self.fail(key_line("dead") if "dead" in e else line,
                                "a battery event needs dead = true (dies) or false (replaced)")
            fields["dead"] = e["dead"]
        if action == "step":
            fields["offset_s"] = _number(self, e, "offset_s", line, None, lo=-MAX_OFFSET_S,
                                         hi=MAX_OFFSET_S)
            if fields["offset_s"] is None:
                raise self.fail(line, "a step event needs offset_s (seconds, signed)")
        # when
        has_abs = any(k in e for k in ("day", "hour", "minute", "second"))
        if has_abs and "after" in e:
            raise self.fail(key_line("after"), "give either day/hour/minute/second or after")
        if not has_abs and "after" not in e:
            raise self.fail(line, f"{where} needs a time: day (and hour) or after = \"30s\"")
        day = _number(self, e, "day", line, None, lo=0, hi=MAX_DAYS)
        hour: tuple[float, float] | None = None
        if "hour" in e:
            h = e["hour"]
            if isinstance(h, list) and len(h) == 2 and all(_is_num(x) for x in h) \
                    and 0 <= h[0] <= h[1] <= 24:
                hour = (float(h[0]), float(h[1]))
            elif _is_num(h) and 0 <= h <= 24:
                hour = (float(h), float(h))
            else:
                raise self.fail(key_line("hour"),
                                "hour is a number 0-24 or a range [from, to] (a random time)")
        minute = _number(self, e, "minute", line, 0.0, lo=0, hi=1440)
        second = _number(self, e, "second", line, 0.0, lo=0, hi=86_400)
        after = _duration(self, e, "after", line) if "after" in e else None
        repeat = _typed(self, e, "repeat", int, line, "an integer", default=1)
        if not 1 <= repeat <= 100_000:
            raise self.fail(key_line("repeat"), "repeat must be 1-100000")
        every = _duration(self, e, "every", line) if "every" in e else 0
        if repeat > 1 and every <= 0:
            raise self.fail(key_line("repeat"), "repeat needs every = \"7d\" (or similar)")
        return _Template(line, name, action, day, hour, minute, second, after,
                         repeat, every, fields)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _typed(p: _Parser, table: dict[str, Any], key: str, kind: type, start: int, what: str,
           default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise p.fail(start, f"missing {key}")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise p.fail(p.loc.key(start, key), f"{key} must be {what}, not {value!r}")
    return value


def _number(p: _Parser, table: dict[str, Any], key: str, start: int, default: Any,
            *, lo: float, hi: float) -> Any:
    if key not in table:
        return default
    value = table[key]
    if not _is_num(value) or not lo <= value <= hi:
        raise p.fail(p.loc.key(start, key), f"{key} must be a number from {lo:g} to {hi:g}, "
                     f"not {value!r}")
    return float(value)


def _duration(p: _Parser, table: dict[str, Any], key: str, start: int,
              required: bool = False) -> int:
    if key not in table:
        if required:
            raise p.fail(start, f"missing {key} (a duration such as \"365d\")")
        return 0
    value = table[key]
    ms: int | None = None
    try:
        if _is_num(value):
            ms = round(float(value) * 1000)
        elif isinstance(value, str):
            ms = parse_duration_ms(value)
    except ValueError as exc:
        raise p.fail(p.loc.key(start, key), str(exc)) from None
    if ms is None:
        raise p.fail(p.loc.key(start, key), f"{key} must be a duration such as \"90s\" or "
                     "\"7d\"")
    if not 0 <= ms <= MAX_DAYS * DAY_MS:
        raise p.fail(p.loc.key(start, key), f"{key} must be from 0 to {MAX_DAYS} days, not "
                     f"{value!r}")
    return ms


def _choice(p: _Parser, table: dict[str, Any], key: str, allowed: tuple[str, ...], start: int,
            default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if value not in allowed:
        raise p.fail(p.loc.key(start, key), f"{key} must be one of {', '.join(allowed)}, "
                     f"not {value!r}")
    return value


def _clock(p: _Parser, c: dict[str, Any], line: int, *, allow_offset: bool) -> ClockSpec:
    """Clock settings from a table ([clock], or a set-drift event's own keys over a default
    crystal); checked against firmware_sim's own limits."""

    def fail(key: str, msg: str) -> ScenarioError:
        return p.fail(p.loc.key(line, key), msg)

    values: dict[str, Any] = {}
    for key in ("ppm", "aging_ppm_per_year", "temp_c", "temp_swing_c", "offset_s"):
        if key in c:
            if key == "offset_s" and not allow_offset:
                raise fail(key, "offset_s belongs to [clock]; use a step event to jump")
            if not _is_num(c[key]):
                raise fail(key, f"{key} must be a number, not {c[key]!r}")
            if key == "offset_s" and abs(c[key]) > MAX_OFFSET_S:
                raise fail(key, f"offset_s must be within ±{MAX_OFFSET_S:g} s")
            values[key] = float(c[key])
    if "temperature" in c:
        if c["temperature"] not in TEMPERATURES:
            raise fail("temperature", f"temperature must be one of {', '.join(TEMPERATURES)}, "
                       f"not {c['temperature']!r}")
        values["temperature"] = c["temperature"]
    elif "temp_c" in values:
        values["temperature"] = (TemperatureMode.DAILY if values.get("temp_swing_c")
                                 else TemperatureMode.CONSTANT).label
    spec = replace(ClockSpec(), **values)
    try:
        spec.crystal()
    except ValueError as exc:
        raise p.fail(line, f"bad clock settings: {exc}") from None
    return spec

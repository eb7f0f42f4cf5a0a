"""`foblab scenario ...`: run QA scenario files, and the drift study.

`scenario run FILE...` runs each TOML scenario in-process with simulated time (the real
firmware and the real validator service), or with `--live` against a running daemon and an
emulated token on a serial port. Exit status 0 only if every expectation held; 1 if one did
not; 2 for a file that cannot be run (the message names its line).

`scenario study` is the Monte Carlo drift study over a token population (see
docs/scenarios.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from tools._args import fail
from tools._progress import bar, wanted
from tools._vocab import warn_renamed
from tools.scenario import report
from tools.scenario.engine import EventResult, RunResult, run_in_process, scenario_serial
from tools.scenario.spec import Scenario, ScenarioError, load
from tools.scenario.study import POPULATIONS

POPULATION_NAMES = tuple(POPULATIONS)


def _fail(message: str, status: int = 2) -> NoReturn:
    """A scenario usage error exits 2 (1 is kept for a failed expectation)."""
    fail(message, status)


@click.group()
def scenario() -> None:
    """QA scenarios (token, clock, timeline, expectations) and the drift study."""


@scenario.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rng-seed", "seed", type=int,
              help="Override the scenario's random seed (times of day, secret).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write JUnit XML to this file.")
@click.option("--live", is_flag=True,
              help="Run against a daemon (--url, --key) and a QA token on --port.")
@click.option("--url", envvar="FOBLAB_URL", help="Live: the daemon's URL ($FOBLAB_URL).")
@click.option("--key", envvar="FOBLAB_KEY", help="Live: an admin API key ($FOBLAB_KEY).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Live: a file holding an admin API key (as validator init writes).")
@click.option("--ca-file", envvar="FOBLAB_CA_FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Live: trust an https:// daemon's certificate signed by this CA "
                   "($FOBLAB_CA_FILE).")
@click.option("--token", "port_url", help="Live: the token's port URL (device path, PTY link, "
                                           "socket://HOST:PORT). It must be in QA mode.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Live: seconds to wait for the token or the daemon.")
@click.option("--reset-token", is_flag=True,
              help="Live: allow erasing a token that holds a seed or is registered with the "
                   "daemon (otherwise such a token is refused).")
@click.option("--quiet", "-q", is_flag=True, help="Print only failures and the verdict.")
def run(files: tuple[Path, ...], seed: int | None, as_json: bool, junit: Path | None,
        live: bool, url: str | None, key: str | None, key_file: Path | None,
        ca_file: Path | None,
        port_url: str | None, timeout: float, reset_token: bool, quiet: bool) -> None:
    """Run scenario FILEs and check every expectation.

    In-process (default): simulated time, deterministic for a seed. With --live the same
    file runs against a running daemon and a token in QA mode; time between events is
    applied to the token's clock with AGE (the daemon keeps the wall clock), as described
    in docs/scenarios.md.
    """
    if junit is not None:
        _check_output(junit, "--junit")
    scenarios: list[Scenario] = []
    invalid: list[tuple[str, str]] = []  # (file, problem): run the others, report these
    for path in files:
        try:
            scenarios.append(load(path).with_seed(seed))
        except ScenarioError as exc:
            invalid.append((str(path), str(exc)))
    if key_file is not None:
        key = _read_key_file(key_file)
    elif key is not None and (os.sep in key or key.endswith(".key")) and Path(key).is_file():
        warn_renamed("--key PATH", "--key-file PATH")  # --key took a path too, once
        key = _read_key_file(Path(key))
    if live:
        missing = [name for name, value in (("--url", url), ("--key or --key-file", key),
                                            ("--token", port_url)) if not value]
        if missing:
            _fail(f"--live needs {', '.join(missing)}")
    elif port_url:
        _fail("--token goes with --live")
    runs: list[RunResult] = []
    stream = not as_json
    for sc in scenarios:
        def show(r: EventResult) -> None:
            if not quiet or not r.ok:
                click.echo(report.event_line(r))

        if live:
            from tools.scenario.live import LiveError, run_live

            assert url and key and port_url
            if stream:
                for line in report.header(RunResult(sc, "live", "?")):
                    click.echo(line)
            try:
                result = run_live(sc, url=url, key=key, port=port_url,
                                  timeout=timeout, on_event=show if stream else None,
                                  reset_token=reset_token, ca_file=ca_file)
            except LiveError as exc:
                _fail(f"{sc.path}: {exc}")
        else:
            if stream:
                for line in report.header(RunResult(sc, "in-process", scenario_serial(sc))):
                    click.echo(line)
            result = run_in_process(sc, on_event=show if stream else None)
        runs.append(result)
        if stream:
            for line in report.footer(result):
                click.echo(line)
            if len(scenarios) > 1:
                click.echo("")
    if junit is not None:
        try:
            junit.write_bytes(report.junit(runs, invalid))
        except OSError as exc:
            _fail(f"cannot write {junit}: {exc}")
    for _, problem in invalid:  # after the runs, so they are not lost in the timeline
        click.echo(f"foblab: error: {problem}", err=True)
    if as_json:
        docs = [report.to_json(r) for r in runs]
        out: Any = docs[0] if len(docs) == 1 and not invalid else {
            "passed": all(r.passed for r in runs) and not invalid, "scenarios": docs,
            "invalid": [{"file": f, "error": e} for f, e in invalid]}
        click.echo(json.dumps(out, indent=1))
    elif len(runs) + len(invalid) > 1:
        good = sum(r.passed for r in runs)
        click.echo(f"{good}/{len(runs) + len(invalid)} scenarios passed"
                   + (f", {len(invalid)} could not be run" if invalid else ""))
    sys.exit(2 if invalid else 0 if all(r.passed for r in runs) else 1)


def _check_output(path: Path, option: str) -> None:
    """An output file's folder must exist and be writable before the work starts."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        _fail(f"{option} {path}: the folder {folder} does not exist")
    if path.is_dir():
        _fail(f"{option} {path} is a folder")
    if not os.access(folder, os.W_OK):
        _fail(f"{option} {path}: the folder {folder} is not writable")


def _read_key_file(path: Path) -> str:
    """An API key from a key file (as `validator init` writes them)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read the key file {path}: {exc}")


@scenario.command()
@click.option("--population", default="default", show_default=True,
              type=click.Choice(["all", *POPULATION_NAMES]),
              help="A population of docs/scenarios.md; `all` runs each in turn and prints "
                   "one summary. The options below change it.")
@click.option("--tokens", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--years", type=click.FloatRange(0.01, 50), default=3.0, show_default=True)
@click.option("--interval", "interval_days", type=click.FloatRange(0.01, 3650),
              help="Mean days between a token's logins (exponential) [default: 7].")
@click.option("--regular", is_flag=True, default=None,
              help="Log in every --interval days exactly instead.")
@click.option("--hours", type=(float, float),
              help="Logins happen at a random time of day between these hours (UTC) "
                   "[default: 7 22].")
@click.option("--typing", type=(float, float),
              help="Seconds from reading a code to its arrival: uniform between these "
                   "[default: 1 5].")
@click.option("--ppm-sd", type=float, help="Crystal error: N(0, this) ppm ... [default: 2]")
@click.option("--ppm-clip", type=float, help="... clipped to ± this [default: 20].")
@click.option("--temp", "temp_mean", type=float,
              help="Mean of the tokens' temperatures, °C (N(this, --temp-sd)) [default: 22].")
@click.option("--temp-sd", type=float, help="[default: 4]")
@click.option("--temp-swing", type=float,
              help="Largest daily temperature swing, ± °C (uniform per token) [default: 3].")
@click.option("--aging-sd", type=float, help="Aging: N(0, this) ppm per year [default: 1].")
@click.option("--initial-offset", type=float,
              help="Clocks are set within ± this many seconds when enabled [default: 10].")
@click.option("--zero-drift", is_flag=True,
              help="Perfect clocks and instant typing: every policy must accept all.")
@click.option("--window", type=click.IntRange(0, 10), default=1, show_default=True,
              help="TOTP steps searched either side of the believed step (foblab: at least).")
@click.option("--max-window", type=click.IntRange(0, 10), default=4, show_default=True,
              help="foblab's largest window, ± steps.")
@click.option("--rng-seed", "seed", type=int, default=1, show_default=True,
              help="Seed of the random generator: the same seed, the same population.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: offset against time for sample tokens (needs matplotlib).")
@click.option("--samples", type=click.IntRange(1, 20), default=6, show_default=True,
              help="Sample tokens drawn in the plot.")
def study(population: str, tokens: int, years: float, interval_days: float | None,
          regular: bool | None, hours: tuple[float, float] | None,
          typing: tuple[float, float] | None, ppm_sd: float | None, ppm_clip: float | None,
          temp_mean: float | None, temp_sd: float | None, temp_swing: float | None,
          aging_sd: float | None, initial_offset: float | None, zero_drift: bool,
          window: int, max_window: int, seed: int, as_json: bool, plot: Path | None,
          samples: int) -> None:
    """Monte Carlo drift study: the foblab tracker against privacyIDEA's default TOTP
    check, whole-step (LinOTP, privacyIDEA at ±1) and sync-only (FreeIPA), on the same
    token population."""
    from tools.scenario.study import StudyParams, run_study, summary, table
    from tools.scenario.study import plot as draw

    given: dict[str, Any] = dict(
        interval_days=interval_days, regular=regular,
        day_start_h=None if hours is None else hours[0],
        day_end_h=None if hours is None else hours[1],
        typing_min_s=None if typing is None else typing[0],
        typing_max_s=None if typing is None else typing[1], ppm_sd=ppm_sd,
        ppm_clip=ppm_clip, temp_mean_c=temp_mean, temp_sd_c=temp_sd,
        temp_swing_c=temp_swing, aging_sd=aging_sd, initial_offset_s=initial_offset)
    fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    fields.update(tokens=tokens, years=years, window=window, max_window=max_window,
                  seed=seed, samples=samples)
    names = list(POPULATIONS) if population == "all" else [population]
    try:
        if zero_drift:
            zero = StudyParams.zero_drift()
            base = {k: getattr(zero, k) for k in (
                "ppm_sd", "temp_mean_c", "temp_sd_c", "temp_swing_c", "aging_sd",
                "initial_offset_s", "typing_min_s", "typing_max_s")}
            runs: list[tuple[str | None, StudyParams]] = [
                (None, StudyParams(**{**base, **fields}))]
        else:
            runs = [(name, StudyParams(**{**POPULATIONS[name][1], **fields}))
                    for name in names]
    except ValueError as exc:
        _fail(str(exc))
    if plot is not None and len(runs) > 1:
        _fail("--plot draws one population: name it with --population")
    if plot is not None:  # fail before the work, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _fail("--plot needs matplotlib: pip install 'foblab[plot]' "
                  "(or .venv/bin/pip install matplotlib)")
        _check_output(plot, "--plot")
    total = sum(params.tokens for _, params in runs)
    with bar(total, f"study: {total:,} tokens, {runs[0][1].years:g} years",
             show=wanted(as_json=as_json)) as advance:
        results = [run_study(params, name, on_token=advance) for name, params in runs]
    if plot is not None:
        try:
            draw(results[0], str(plot))
        except (RuntimeError, OSError) as exc:
            _fail(str(exc))
    if as_json:
        docs = [r.to_json() for r in results]
        doc: dict[str, Any] = docs[0] if len(docs) == 1 else {"populations": docs}
        if plot is not None:
            doc["plot"] = str(plot)
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo("\n\n".join(table(r) for r in results))
        if len(results) > 1:
            click.echo("\n" + summary(results))
        if plot is not None:
            click.echo(f"plot: {plot}")

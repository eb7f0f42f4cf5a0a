"""`foblab sim ...`: run emulated tokens until SIGTERM or Ctrl-C.

`sim run` serves one token on a PTY (stable symlink, default /tmp/foblab/<SERIAL>) or on
TCP; `sim fleet` serves many on one event loop and writes a manifest and a PSKC seed file.
Both print one ready line (JSON with --json) once their ports exist, and remove their links
on exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import click

from firmware_sim.clock import Drift
from firmware_sim.fleet import Fleet, FleetSpec, load_config, write_seed_file
from firmware_sim.models import DEFAULT_MODEL, HASHES, KINDS, PRESETS, SEED_BYTES
from firmware_sim.runner import TokenRunner, open_token
from firmware_sim.storage import StorageError
from tools._args import HEX, HOST_PORT
from tools._args import fail as _fail
from tools._progress import bar, wanted


def default_state_dir() -> Path:
    """$FOBLAB_STATE_DIR, else $XDG_STATE_HOME/foblab/tokens (~/.local/state/...)."""
    if env := os.environ.get("FOBLAB_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "foblab" / "tokens"


async def _until_signal(ready: Any = None) -> None:
    """Wait for SIGTERM/SIGINT/SIGHUP; `ready()` runs once the handlers are in place, so a
    signal sent as soon as the ready line is read stops the process cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


@click.group()
def sim() -> None:
    """Run emulated display tokens on virtual serial ports."""


@sim.command(context_settings={"ignore_unknown_options": True})
@click.option("--model", type=click.Choice(list(PRESETS)), default=DEFAULT_MODEL,
              show_default=True)
@click.option("--serial", help="Serial number (default: a new one in the model's format).")
@click.option("--seed-hex", "seed", type=HEX, help="The secret, hex (default: a random one).")
@click.option("--blank", is_flag=True, help="No seed: a blank token waiting for PROVISION.")
@click.option("--kind", type=click.Choice(KINDS), help="Override the model's kind.")
@click.option("--hash", "hash_", type=click.Choice(HASHES), help="Override the model's hash.")
@click.option("--digits", type=click.Choice(["6", "8"]), help="Override the model's digits.")
@click.option("--period", type=int, help="Override the model's TOTP step, seconds.")
@click.option("--counter", type=int, default=0, help="HOTP initial counter.")
@click.option("--qa", is_flag=True, help="Accept QA commands (drift, age, set-time, ...).")
@click.option("--pty-link", type=click.Path(path_type=Path),
              help="Symlink to publish (default /tmp/foblab/<SERIAL>).")
@click.option("--tcp", type=HOST_PORT, help="Serve on TCP HOST:PORT instead of a PTY.")
@click.option("--state-dir", type=click.Path(path_type=Path),
              help="Where the token's state file lives (default $FOBLAB_STATE_DIR or "
                   "~/.local/state/foblab/tokens).")
@click.option("--drift-ppm", type=float, default=0.0, help="Crystal error, ppm (e.g. -12.5).")
@click.option("--baud", type=click.IntRange(min=1),
              help="Pace replies as a UART at this baud rate.")
@click.option("--seed-file", type=click.Path(path_type=Path),
              help="Where a generated seed's factory copy goes, as a PSKC file (default "
                   "<state-dir>/<SERIAL>.pskc).")
@click.option("--pskc-passphrase", help="Encrypt that seed file with PBKDF2 from this.")
@click.option("--fresh", is_flag=True,
              help="Start the token anew: erase its state file (seed, counter, clock) first.")
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def run(model: str, serial: str | None, seed: bytes | None, blank: bool, kind: Any,
        hash_: Any, digits: str | None, period: int | None, counter: int, qa: bool,
        pty_link: Path | None, tcp: tuple[str, int] | None, state_dir: Path | None,
        drift_ppm: float, baud: int | None, seed_file: Path | None,
        pskc_passphrase: str | None, fresh: bool, as_json: bool) -> None:
    """Run one token until SIGTERM or Ctrl-C.

    A token keeps its state (seed, counter, clock) in a file named after its serial: run the
    same --serial again and it is restored, as a real token survives being switched off.
    Options that contradict that file (--seed-hex, --blank, --kind, --hash, --digits, --period)
    are refused; --fresh erases the file first.
    """
    if seed is not None and blank:
        _fail("--seed-hex and --blank exclude each other")
    if pty_link is not None and tcp is not None:
        _fail("--pty-link and --tcp exclude each other")
    state_dir = state_dir if state_dir is not None else default_state_dir()
    if fresh and serial is not None:
        _erase_state(state_dir, serial)
    generated = seed is None and not blank
    if generated:
        seed = secrets.token_bytes(SEED_BYTES[hash_ or PRESETS[model].hash])
    try:
        token = open_token(
            model, serial=serial, seed=seed, kind=kind, hash=hash_,
            digits=None if digits is None else int(digits), period=period, counter=counter,
            drift=Drift(ppm=drift_ppm), qa=qa, state_dir=state_dir,
        )
        if token.restored:
            clash = _contradictions(token.state, seed=None if generated else seed,
                                    blank=blank, kind=kind, hash_=hash_, digits=digits,
                                    period=period)
            if clash:
                where = token.file.path if token.file else state_dir
                token.close()
                _fail(f"{token.state.serial} already has a state file ({where}) and "
                      f"{', '.join(clash)} contradict(s) it: "
                      "drop the option to run the token as it is, or add --fresh to erase "
                      "its state and start anew")
        if generated and not token.restored:
            # The factory's copy of a secret we made up, handed over as a vendor does: a
            # seed file to import, never printed.
            seed_file = seed_file or state_dir / f"{token.state.serial}.pskc"
            write_seed_file(seed_file, [token.state], passphrase=pskc_passphrase)
        else:
            seed_file = None
    except (ValueError, StorageError, OSError) as exc:
        _fail(str(exc))
    runner = TokenRunner(token, pty=tcp is None, pty_link=pty_link, tcp=tcp, baud=baud)

    async def main() -> None:
        try:
            await runner.start()
        except OSError as exc:
            _fail(f"cannot open the port: {exc}")
        try:
            st = token.state
            ready: dict[str, Any] = {
                "serial": st.serial, "model": st.model, "kind": st.kind, "port": runner.url,
                "device": runner.pty.path if runner.pty else None,
                "state_file": str(token.file.path) if token.file else None,
                "restored": token.restored, "provisioned": st.provisioned, "qa_mode": st.qa_mode,
            }
            if seed_file is not None:
                ready["seed_file"] = str(seed_file)

            def say_ready() -> None:
                if as_json:
                    click.echo(json.dumps(ready, sort_keys=True))
                else:
                    extra = " (restored from its state file)" if token.restored else ""
                    seed_note = f"  seed file {seed_file}" if seed_file is not None else ""
                    click.echo(f"{st.serial} {st.model} on {runner.url}{extra}{seed_note}")
                sys.stdout.flush()

            await _until_signal(say_ready)
        finally:
            await runner.close()

    asyncio.run(main())


def _erase_state(state_dir: Path, serial: str) -> None:
    """--fresh: remove the token's state file (refused while another emulator runs it)."""
    from firmware_sim.storage import StateDir

    try:
        with StateDir(state_dir).open(serial) as file:
            if file.exists():
                file.path.unlink()
    except (ValueError, StorageError, OSError) as exc:
        _fail(f"--fresh: {exc}")


def _contradictions(state: Any, *, seed: bytes | None, blank: bool, kind: Any, hash_: Any,
                    digits: str | None, period: int | None) -> list[str]:
    """The options given that the restored state disagrees with (the seed is compared in
    constant time and never printed)."""
    import hmac

    clash = []
    if seed is not None and (state.seed is None or not hmac.compare_digest(seed, state.seed)):
        clash.append("--seed-hex")
    if blank and state.seed is not None:
        clash.append("--blank")
    for name, given, stored in (("--kind", kind, state.kind), ("--hash", hash_, state.hash),
                                ("--digits", digits, str(state.digits)),
                                ("--period", period, state.period)):
        if given is not None and given != stored:
            clash.append(f"{name} {given} (the file says {stored})")
    return clash


@sim.command()
@click.option("--count", type=click.IntRange(0, 4000), default=None,
              help="How many tokens (with --model; or use --config).")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
              help="Fleet directory: manifest.json, seeds.pskc, ports/, state/.")
@click.option("--model", type=click.Choice(list(PRESETS)), default=None)
@click.option("--config", type=click.Path(exists=True, path_type=Path),
              help="TOML file with [[group]] tables (model, count, drift_ppm, drift_spread, "
                   "aging_ppm_per_year).")
@click.option("--rng-seed", "seed", type=int,
              help="Seed of the random generator: the same seed gives the same fleet.")
@click.option("--drift-ppm", type=float, default=None, help="Every token's drift, ppm.")
@click.option("--drift-spread", type=float, default=None,
              help="Each token's drift is --drift-ppm plus uniform(-X, +X) ppm.")
@click.option("--qa", is_flag=True, default=None, help="Tokens accept QA commands.")
@click.option("--pskc-passphrase", help="Encrypt the seed file with PBKDF2 from this.")
@click.option("--baud", type=click.IntRange(min=1),
              help="Pace replies as a UART at this baud rate.")
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def fleet(count: int | None, directory: Path, model: str | None, config: Path | None,
          seed: int | None, drift_ppm: float | None, drift_spread: float | None,
          qa: bool | None, pskc_passphrase: str | None, baud: int | None,
          as_json: bool) -> None:
    """Run many tokens in one process until SIGTERM or Ctrl-C.

    --rng-seed, --qa, --pskc-passphrase and --baud given on the command line win over the config
    file; --count, --model, --drift-ppm and --drift-spread belong to its [[group]] tables.
    """
    fields: dict[str, Any] = {}
    if config is not None:
        try:
            fields.update(load_config(config))
        except ValueError as exc:
            _fail(str(exc))
        per_group = [name for name, value in (("--count", count), ("--model", model),
                                              ("--drift-ppm", drift_ppm),
                                              ("--drift-spread", drift_spread))
                     if value is not None]
        if per_group:  # each [[group]] sets these itself; ignoring an option would be a lie
            _fail(f"{'/'.join(per_group)} and --config's [[group]] tables exclude each other")
    elif count is None:
        _fail("give --count N (or --config FILE)")
    else:
        fields.update(count=count, model=model or DEFAULT_MODEL,
                      drift_ppm=drift_ppm or 0.0, drift_spread=drift_spread or 0.0)
    for key, value in (("seed", seed), ("qa", qa), ("pskc_passphrase", pskc_passphrase),
                       ("baud", baud)):
        if value is not None:
            fields[key] = value
    try:
        spec = FleetSpec(directory=directory, **fields)
        spec.all_groups()
    except (ValueError, TypeError) as exc:
        _fail(str(exc))

    async def main() -> None:
        running = Fleet(spec)
        total = sum(g.count for g in spec.all_groups())
        try:
            with bar(total, f"starting {total:,} tokens", show=wanted(as_json=as_json)) as step:
                await running.start(on_token=step)
        except (ValueError, StorageError, OSError) as exc:
            _fail(f"cannot start the fleet: {exc}")
        try:
            ready = {"count": len(running.tokens), "manifest": str(running.manifest_path),
                     "seed_file": str(running.seed_file)}
            def say_ready() -> None:
                click.echo(json.dumps(ready) if as_json else
                           f"{ready['count']} tokens ready; manifest {ready['manifest']}")
                sys.stdout.flush()

            await _until_signal(say_ready)
        finally:
            await running.close()

    asyncio.run(main())


@sim.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="A running fleet's directory: every token in its manifest.json.")
@click.option("--port", "--token", "ports", multiple=True, metavar="URL",
              help="A token's port URL (a PTY link, socket://HOST:PORT, a device); repeat.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on (loopback unless --allow-remote).")
@click.option("--listen-port", type=click.IntRange(0, 65535), default=8710, show_default=True,
              help="TCP port to serve on (0: any free one).")
@click.option("--allow-remote", is_flag=True,
              help="Serve on a non-loopback address too (the panel has no sign-in).")
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def panel(directory: Path | None, ports: tuple[str, ...], host: str, listen_port: int,
          allow_remote: bool, as_json: bool) -> None:
    """A web page that shows tokens as the devices look, live, with their button and QA
    controls. Talks to them over their ports, as `foblab token` does. Ctrl-C stops."""
    try:
        import jinja2  # noqa: F401 - the page's templates

        from firmware_sim import panel as web
    except ModuleNotFoundError as exc:
        _fail(f"the panel needs {exc.name}: pip install 'foblab[ui]'")
    urls = list(ports)
    try:
        if directory is not None:
            urls = web.Panel.urls_from_fleet(directory) + urls
        sock = web.bind(host, listen_port, allow_remote)
        running = web.Panel(urls)
    except web.PanelError as exc:
        _fail(str(exc))

    def ready(url: str) -> None:
        click.echo(json.dumps({"url": url, "tokens": len(urls)}) if as_json else
                   f"token panel on {url} ({len(urls)} token(s)); Ctrl-C stops")
        sys.stdout.flush()

    web.run(running, sock, on_ready=ready)

"""`foblab validator ...`: set up and run the validator daemon, and talk to its API.

`init`, `serve` and `check` (offline: opens every sealed secret) run here; every other
command is a thin client of the HTTP API (`tools.api_client`): `--url` and `--key`, else
`FOBLAB_URL` and `FOBLAB_KEY`, else `--dir DIR` (an init'd folder: its foblab.toml gives the
URL, its admin.key the key), else http://127.0.0.1:8700. An https:// daemon is trusted by
the system's CAs, or by `--ca-file` (`FOBLAB_CA_FILE`); `--client-cert` (`FOBLAB_CLIENT_CERT`)
answers one that requires client certificates. Each takes `--json`; otherwise it
prints a readable table. Every failure is one line `foblab: error: ...` on stderr and exit
status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from protocol import Hash, Kind
from tools import choices
from tools._args import fail as _fail
from tools._paging import echo_note, fetch, page_options
from tools._progress import timed, wanted
from tools._vocab import timeout_option
from tools.api_client import ApiClient, ApiError
from tools.cli import LazyGroup
from validator.config import (
    CONFIG_NAME,
    DEFAULT_PORT,
    ConfigError,
    Settings,
    check_station,
    check_tls,
    load,
    parse_listen,
)

F = TypeVar("F", bound=Callable[..., Any])




@click.group(cls=LazyGroup, lazy={"aws-keys": "tools.aws_keys_cmd:aws_keys",
                                  "radius": "tools.radius_cmd:radius",
                                  "migrate": "tools.database_cmd:migrate",
                                  "copy": "tools.database_cmd:copy"})
def validator() -> None:
    """The validator daemon: init, serve, and its API from the command line."""


# -- init and serve ------------------------------------------------------------------------

@validator.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--show-keys", is_flag=True, help="Also print the two API keys.")
@click.option("--database-url", metavar="URL",
              help="Keep the data in this PostgreSQL database (postgresql://...) instead of "
                   "a SQLite file; several daemons may share it (copy seed.key to each).")
@click.option("--json", "as_json", is_flag=True)
def init(directory: Path, host: str, port: int, show_keys: bool, database_url: str | None,
         as_json: bool) -> None:
    """Create DIRECTORY: foblab.toml, seed key, database, admin and verifier API keys."""
    from validator.config import check_database_url
    from validator.daemon import StartupError, init_dir

    try:
        if database_url is not None:
            check_database_url(database_url)
        made = init_dir(directory, host=host, port=port, database_url=database_url)
    except ConfigError as exc:
        _fail(str(exc))
    except StartupError as exc:
        _fail(str(exc))
    shown = {k: str(v) for k, v in made.items() if show_keys or not k.endswith("_key")}
    if as_json:
        click.echo(json.dumps(shown, sort_keys=True))
        return
    click.echo(f"initialised {directory}")
    for key, value in shown.items():
        click.echo(f"  {key:<18} {value}")
    if not show_keys:
        click.echo("  (API keys are in the key files, mode 0600; --show-keys prints them)")
    click.echo(f"start it with: foblab validator serve --dir {directory}")


def _station_option(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, url = item.partition("=")
        if not sep:
            _fail(f"--station takes NAME=URL, not {item!r}")
        try:
            check_station(name, url)
        except ConfigError as exc:
            _fail(str(exc))
        out[name] = url
    return out


@validator.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help=f"An init'd folder (reads its {CONFIG_NAME}).")
@click.option("--config", type=click.Path(path_type=Path), help="A config file.")
@click.option("--host", help="Listen address (default from the config, else 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Listen port (0: any free port; default from the config, else 8700).")
@click.option("--station", "stations", multiple=True, metavar="NAME=URL",
              help="Add an enrollment station (repeatable).")
@click.option("--radius", "radius_listen", metavar="HOST:PORT",
              help="Answer RADIUS on this UDP address (needs a [radius] table with clients; "
                   "overrides its listen).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="Serve HTTPS with this certificate chain (PEM); with --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="The private key of --tls-cert (PEM).")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="Require a client certificate signed by a CA in this file (PEM).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes answering on the one port (SQLite in WAL mode or PostgreSQL; "
                   "RADIUS is answered by one of them; not with stations).")
@click.option("--log-format", type=click.Choice(["json", "text", "auto"]),
              help="Every log line as JSON or as text (default from the config's log_format, "
                   "else auto: JSON unless stderr is a terminal).")
def serve(directory: Path | None, config: Path | None, host: str | None, port: int | None,
          stations: Sequence[str], radius_listen: str | None, tls_cert: Path | None,
          tls_key: Path | None, tls_client_ca: Path | None, log_level: str,
          workers: int, log_format: str | None) -> None:
    """Run the daemon until SIGTERM or Ctrl-C; SIGHUP re-reads the config and API keys."""
    import logging

    from validator.daemon import StartupError
    from validator.daemon import serve as run

    if (directory is None) == (config is None):
        _fail("give --dir DIR or --config FILE (one of them)")
    path = config if config is not None else directory / CONFIG_NAME  # type: ignore[operator]
    try:
        settings = load(path)
    except ConfigError as exc:
        _fail(str(exc))
    extra_stations = _station_option(stations)
    radius_at = None
    if radius_listen is not None:
        try:
            radius_at = parse_listen(radius_listen, "--radius")
        except ConfigError as exc:
            _fail(str(exc))
    tls: dict[str, Path] = {name: value for name, value in (
        ("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_client_ca", tls_client_ca))
        if value is not None}

    def command_line(settings: Settings) -> Settings:
        """The options over the config file: at start-up, and again on every reload."""
        changes: dict[str, Any] = dict(tls)
        if host is not None:
            changes["host"] = host
        if port is not None:
            changes["port"] = port
        if extra_stations:
            changes["stations"] = {**settings.stations, **extra_stations}
        if radius_at is not None:
            if settings.radius is None:
                raise ConfigError("--radius needs a [radius] table with [[radius.clients]] "
                                  "in the config (docs/radius.md)")
            changes["radius"] = dataclasses.replace(settings.radius, host=radius_at[0],
                                                    port=radius_at[1])
        merged = settings.replace(**changes)
        check_tls(merged.tls_cert, merged.tls_key, merged.tls_client_ca)
        return merged

    try:
        settings = command_line(settings)
    except ConfigError as exc:
        _fail(str(exc))

    # the ready lines go through the daemon's log, in its format (the URL ends the message)
    log = logging.getLogger("foblab.ready")  # kept at info whatever --log-level says

    def ready(url: str) -> None:
        log.info("foblab validator listening on %s", url, extra={"fields": {"url": url}})

    def radius_ready(address: str) -> None:
        log.info("foblab validator answering RADIUS on udp %s", address,
                 extra={"fields": {"address": address}})

    try:
        code = run(settings, on_ready=ready, log_level=log_level, on_radius=radius_ready,
                   overrides=command_line, workers=workers, log_format=log_format)
    except StartupError as exc:
        _fail(str(exc))
    sys.exit(code)


# -- the API client ------------------------------------------------------------------------

# The API's words for things the command line names otherwise: an error relayed from the
# daemon is reworded so it names the options the user can type.
API_WORDS = (
    ('send "provision": true', "give --provision"),
    ("secret_b32", "--seed-b32"),
    ("secret_hex", "--seed-hex"),
    ("key_hex", "--key-hex"),
    ("skip_duplicates", "--skip-duplicates"),
)

WHERE_HELP = ("give --dir DIR (a folder made by `foblab validator init`), or --url URL with "
              "--key KEY or --key-file FILE, or set FOBLAB_URL and FOBLAB_KEY")


def in_cli_words(message: str) -> str:
    for api, cli in API_WORDS:
        message = message.replace(api, cli)
    return message


def _from_dir(directory: Path) -> tuple[str, str | None]:
    try:
        settings = load(directory / CONFIG_NAME)
    except ConfigError as exc:
        _fail(str(exc))
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    try:
        key = settings.admin_key_file.read_text().strip()
    except OSError as exc:
        _fail(f"cannot read {settings.admin_key_file}: {exc.strerror}")
    except UnicodeDecodeError:
        _fail(f"{settings.admin_key_file} does not hold an API key")
    return f"{settings.scheme}://{host}:{settings.port}", key


def client_command(group: click.Group, name: str | None = None, *,
                   with_subcommands: bool = False) -> Callable[[F], F]:
    """Register a client command with --url/--key/--dir/--timeout/--json; it receives
    `client` and `as_json` instead of those. `with_subcommands`: a group that runs as a
    command when no subcommand is named (`audit` and `audit export`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(url: str | None, key: str | None, key_file: Path | None,
                  directory: Path | None, ca_file: Path | None, client_cert: Path | None,
                  client_key: Path | None, timeout: float, as_json: bool,
                  **kwargs: Any) -> Any:
            if with_subcommands and click.get_current_context().invoked_subcommand:
                return None  # the subcommand has its own options
            dir_url, dir_key = _from_dir(directory) if directory is not None else (None, None)
            given_url = url or os.environ.get("FOBLAB_URL") or dir_url
            final_url = given_url or f"http://127.0.0.1:{DEFAULT_PORT}"
            file_key = None
            if key_file is not None:
                try:
                    file_key = key_file.read_text().strip()
                except (OSError, UnicodeDecodeError) as exc:
                    _fail(f"cannot read the key file {key_file}: {exc}")
            final_key = key or file_key or os.environ.get("FOBLAB_KEY") or dir_key
            if not final_key:
                _fail(f"no API key for {final_url}: {WHERE_HELP}")
            try:
                with ApiClient(final_url, final_key, timeout, ca_file=ca_file,
                               client_cert=client_cert, client_key=client_key) as client:
                    return fn(client=client, as_json=as_json, **kwargs)
            except ApiError as exc:
                if exc.error == "unreachable" and not given_url:
                    # no location given: the URL tried is only the built-in default
                    _fail(f"{exc.message}; that is only the default location: {WHERE_HELP}")
                _fail(in_cli_words(str(exc)))

        for option in (
            click.option("--url", help="The daemon's URL (env FOBLAB_URL)."),
            click.option("--key", help="API key (env FOBLAB_KEY)."),
            click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
                         help="A file holding the API key (as validator init writes)."),
            click.option("--dir", "directory", type=click.Path(path_type=Path),
                         help="An init'd folder: URL and admin key from it."),
            click.option("--ca-file", envvar="FOBLAB_CA_FILE",
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="Trust an https:// daemon whose certificate this CA (PEM) "
                              "signed (env FOBLAB_CA_FILE)."),
            click.option("--client-cert", envvar="FOBLAB_CLIENT_CERT",
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="A client certificate (PEM) for a daemon that requires one "
                              "(env FOBLAB_CLIENT_CERT)."),
            click.option("--client-key", envvar="FOBLAB_CLIENT_KEY",
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="Its private key, when not in the same file "
                              "(env FOBLAB_CLIENT_KEY)."),
            timeout_option("validator", extra=" Station enrollment takes up to a period."),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
        ):
            inner = option(inner)
        name_ = name or fn.__name__.rstrip("_").replace("_", "-")
        if with_subcommands:
            group.group(name_, invoke_without_command=True)(inner)
        else:
            group.command(name_)(inner)
        return fn

    return wrap


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (_, title) in
              enumerate(columns)]
    click.echo("  ".join(t.ljust(w) for (_, t), w in zip(columns, widths, strict=True)))
    for c in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


_TOKEN_COLUMNS = (("serial", "SERIAL"), ("kind", "KIND"), ("hash", "HASH"),
                  ("digits", "DIGITS"), ("user", "USER"), ("failures", "FAILURES"),
                  ("offset", "OFFSET_S"), ("locked", "LOCKED_UNTIL"))


def _token_row(t: dict[str, Any]) -> dict[str, Any]:
    drift = t.get("drift") or {}
    return {**t, "offset": drift.get("offset_seconds"), "locked": _when(t.get("locked_until"))
            if t.get("locked_until") else None}


def _show(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        human(data)


def _token_detail(t: dict[str, Any]) -> None:
    for key in ("serial", "kind", "hash", "digits", "period", "t0", "user", "failures",
                "last_accepted", "next_counter"):
        if key in t:
            click.echo(f"{key:<14} {_cell(t[key])}")
    for key in ("created", "assigned_at", "last_used", "locked_until"):
        if key in t:
            click.echo(f"{key:<14} {_when(t[key])}")
    if "expires" in t:  # from its seed file's key policy; codes are refused after it
        click.echo(f"{'expires':<14} "
                   f"{'never' if t['expires'] is None else _when(t['expires'])}")
    if t.get("drift"):
        d = t["drift"]
        click.echo(f"{'drift':<14} offset {d['offset_seconds']} s, rate {d['rate_ppm']} ppm")


# -- token ---------------------------------------------------------------------------------

@validator.group()
def token() -> None:
    """Register, import, list, show, remove and unlock tokens."""


@client_command(token)
@click.argument("serial")
@click.option("--seed-b32", "secret_b32", help="The secret, base32.")
@click.option("--seed-hex", "secret_hex", help="The secret, hex.")
@click.option("--kind", type=choices.KIND, default=Kind.TOTP.label,
              show_default=True)
@click.option("--hash", "hash_", type=choices.HASH,
              default=Hash.SHA1.label, show_default=True)
@click.option("--digits", type=choices.DIGITS, default="6", show_default=True)
@click.option("--period", type=int, help="TOTP step, seconds (default 30).")
@click.option("--counter", type=int, help="HOTP initial counter (default 0).")
def add(client: ApiClient, as_json: bool, serial: str, secret_b32: str | None,
        secret_hex: str | None, kind: str, hash_: str, digits: str, period: int | None,
        counter: int | None) -> None:
    """Register one token."""
    if (secret_b32 is None) == (secret_hex is None):
        _fail("give the secret as --seed-hex HEX or --seed-b32 B32 (one of them)")
    body: dict[str, Any] = {"serial": serial, "kind": kind, "hash": hash_,
                            "digits": int(digits)}
    for key, value in (("secret_b32", secret_b32), ("secret_hex", secret_hex),
                       ("period", period), ("counter", counter)):
        if value is not None:
            body[key] = value
    data = client.create_token(body)
    _show(data, as_json, lambda t: click.echo(f"registered {t['serial']}"))


@client_command(token, "import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["pskc", "csv"]),
              help="Default: from the file's suffix (.csv is CSV, else PSKC).")
@click.option("--pskc-passphrase", "passphrase",
              help="PBKDF2 passphrase of an encrypted PSKC file.")
@click.option("--key-hex", help="Pre-shared AES key of an encrypted PSKC file.")
@click.option("--skip-duplicates", is_flag=True,
              help="Leave out serials already registered or repeated in the file.")
@click.option("--dry-run", is_flag=True,
              help="Read, decrypt and check the file; print what would be imported and "
                   "skipped; write nothing.")
def import_(client: ApiClient, as_json: bool, file: Path, fmt: str | None,
            passphrase: str | None, key_hex: str | None, skip_duplicates: bool,
            dry_run: bool) -> None:
    """Import every usable token of a PSKC or CSV seed file (all of them or none), and list
    the keys left out and why (a PIN key, another algorithm, an expired key policy...)."""
    fmt = fmt or ("csv" if file.suffix.lower() == ".csv" else "pskc")
    try:
        content = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {file}: {exc}")
    keys = _count_keys(content, fmt)
    with timed(f"{'checking' if dry_run else 'importing'} {keys:,} keys from {file.name}",
               show=keys > _PROGRESS_KEYS and wanted(as_json=as_json)):
        data = client.import_tokens(content, fmt, passphrase=passphrase, key_hex=key_hex,
                                    skip_duplicates=skip_duplicates, dry_run=dry_run)
    _show(data, as_json, _import_report)


_PROGRESS_KEYS = 300  # a file of more keys shows that it is being worked on (on a TTY)


def _count_keys(content: str, fmt: str) -> int:
    """About how many keys a file holds (for the progress line only)."""
    if fmt == "csv":
        return max(0, sum(1 for line in content.splitlines()
                          if line.strip() and not line.lstrip().startswith("#")) - 1)
    return content.count("<Key ") + content.count(":Key ") + content.count("<Secret ")


def _import_report(d: dict[str, Any]) -> None:
    verb = "would import" if d.get("dry_run") else "imported"
    skipped = d.get("skipped") or []
    click.echo(f"{verb} {d['imported']} token(s)" +
               (f", skipped {len(skipped)}:" if skipped else ""))
    if skipped:
        _table(skipped, (("serial", "SERIAL"), ("reason", "REASON"), ("detail", "DETAIL")))


@client_command(token, "list")
@click.option("--user")
@click.option("--unassigned", is_flag=True, help="Only tokens no user holds.")
@click.option("--kind", type=choices.KIND)
@page_options
def list_(client: ApiClient, as_json: bool, user: str | None, unassigned: bool,
          kind: str | None, limit: int, page: int, all_: bool, offset: int | None) -> None:
    """List tokens, by serial (a page of 100 unless --all; a note says when there is more)."""
    filters: dict[str, Any] = {"user": user, "unassigned": True if unassigned else None,
                               "kind": kind}
    data = fetch(lambda p: client.list_tokens(**filters, **p),
                 "tokens", limit=limit, page=page, all_=all_, offset=offset)

    def human(d: dict[str, Any]) -> None:
        _table([_token_row(t) for t in d["tokens"]], _TOKEN_COLUMNS)
        echo_note(d, "tokens")

    _show(data, as_json, human)


@client_command(token)
@click.argument("serial")
def show(client: ApiClient, as_json: bool, serial: str) -> None:
    """One token's metadata and state."""
    data = client.get_token(serial)
    _show(data, as_json, _token_detail)


@client_command(token)
@click.argument("serial")
def remove(client: ApiClient, as_json: bool, serial: str) -> None:
    """Remove an unassigned token."""
    client.delete_token(serial)
    _show({"removed": serial}, as_json, lambda d: click.echo(f"removed {serial}"))


@client_command(token)
@click.argument("serial")
def unlock(client: ApiClient, as_json: bool, serial: str) -> None:
    """Clear a token's failure count and lock."""
    data = client.unlock_token(serial)
    _show(data, as_json, lambda d: click.echo(f"unlocked {serial}"))


@client_command(validator, "rotate-key")
@click.option("--master", is_flag=True,
              help="Rotate the master key in the key file instead of the data key.")
def rotate_key(client: ApiClient, as_json: bool, master: bool) -> None:
    """Reseal every stored secret under a new data key, or (--master) re-wrap the data keys
    under a new master key in the key file. The daemon keeps running; crash-safe."""
    data = client.rotate_key(master=master)

    def human(d: dict[str, Any]) -> None:
        if d["scope"] == "master":
            click.echo(f"re-wrapped {d['rewrapped']} data keys under master key {d['key_id']}")
        else:
            click.echo(f"resealed {d['resealed']} secrets under data key {d['data_key_id']}")

    _show(data, as_json, human)


@client_command(validator, "reload")
def reload_(client: ApiClient, as_json: bool) -> None:
    """Make the daemon re-read its config file, API keys and TLS certificate (as `kill -HUP`
    does): new and revoked keys, [policy], [stations] and a renewed certificate apply at
    once; no connection is dropped."""
    data = client.request("POST", "/v1/admin/reload")

    def human(d: dict[str, Any]) -> None:
        click.echo(f"reloaded: {len(d['api_keys'])} API key(s); applied: "
                   f"{', '.join(d['applied']) or '-'}")
        if "tls_certificate" in d:
            cert = d["tls_certificate"]
            click.echo(f"TLS certificate: {cert['subject']}, valid until {cert['not_after']}")
        if d["restart_needed"]:
            click.echo(f"a restart is needed for: {', '.join(d['restart_needed'])}", err=True)

    _show(data, as_json, human)


# -- api-keys (offline, on the folder's keys file) ----------------------------------------

@validator.group("api-keys")
def api_keys() -> None:
    """Named API keys and their roles: create, list, revoke (on the folder's keys file;
    the daemon applies a change on reload: `foblab validator reload` or SIGHUP)."""


_DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path),
                           required=True,
                           help="The validator directory made by `foblab validator init`.")
RELOAD_HINT = ("the daemon applies it on reload: foblab validator reload --dir DIR, or "
               "kill -HUP its process")


def _keys_file(directory: Path) -> Path:
    from validator.apikeys import ApiKeyError, Role, ensure_keys_file

    try:
        settings = load(directory / CONFIG_NAME)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        ensure_keys_file(settings.keys_file, {Role.ADMIN: settings.admin_key_file,
                                              Role.VERIFIER: settings.verifier_key_file})
    except ApiKeyError as exc:
        _fail(str(exc))
    return settings.keys_file


@api_keys.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "verifier"]), required=True,
              help="admin: every operation; verifier: verify and resync only.")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def api_keys_create(name: str, role: str, directory: Path, as_json: bool) -> None:
    """Create a key named NAME; print the key (on stdout, this once: only its digest is
    kept)."""
    from validator.apikeys import ApiKeyError, Role, create_key

    path = _keys_file(directory)
    try:
        key = create_key(path, name, Role(role), now=time.time())
    except ApiKeyError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps({"name": name, "role": role, "key": key}, sort_keys=True))
    else:
        click.echo(key)
        click.echo(f"created the {role} key {name!r}; store it now, it is not shown again; "
                   f"{RELOAD_HINT}", err=True)


@api_keys.command("list")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def api_keys_list(directory: Path, as_json: bool) -> None:
    """The keys by name and role (never a key)."""
    from validator.apikeys import ApiKeyError, read_keys

    try:
        keys = read_keys(_keys_file(directory))
    except ApiKeyError as exc:
        _fail(str(exc))
    rows = [{"name": k.name, "role": k.role.value, "created": k.created} for k in keys]
    _show({"keys": rows}, as_json, lambda d: _table(
        [{**r, "created": _when(r["created"])} for r in d["keys"]],
        (("name", "NAME"), ("role", "ROLE"), ("created", "CREATED"))))


@api_keys.command("revoke")
@click.argument("name")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def api_keys_revoke(name: str, directory: Path, as_json: bool) -> None:
    """Remove the key named NAME (not the last admin key)."""
    from validator.apikeys import ApiKeyError, revoke_key

    try:
        gone = revoke_key(_keys_file(directory), name)
    except ApiKeyError as exc:
        _fail(str(exc))
    _show({"revoked": gone.name, "role": gone.role.value}, as_json,
          lambda d: click.echo(f"revoked the {gone.role.value} key {name!r}; {RELOAD_HINT}"))


# -- backup and restore (offline tools, safe beside a running daemon) ------------------------

_PASSPHRASE_OPTION = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    envvar="FOBLAB_BACKUP_PASSPHRASE_FILE",
    help="Encrypt (backup) or decrypt (restore) with the passphrase in this file's first "
         "line (env FOBLAB_BACKUP_PASSPHRASE_FILE).")


def _passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        _fail(f"cannot read the passphrase file {path}: {exc.strerror or exc}")
    if not lines or len(lines[0]) < 8:
        _fail(f"the passphrase file {path} must hold a passphrase of at least 8 bytes on "
              "its first line")
    return lines[0]


@validator.command()
@_DIR_OPTION
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_PASSPHRASE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backup(directory: Path, out: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Copy the validator in DIR into the new file OUT while it serves: a consistent copy
    of the database (its replay watermarks too), the seed key, the API keys and the files
    the config names; encrypted with --passphrase-file."""
    from validator.backup import BackupError
    from validator.backup import backup as run

    try:
        made = run(directory / CONFIG_NAME, out, passphrase=_passphrase(passphrase_file))
    except BackupError as exc:
        _fail(str(exc))
    data = {"backup": str(made.path), "encrypted": made.encrypted,
            "schema_version": made.schema_version, "files": made.files,
            "seconds": round(made.seconds, 3)}
    _show(data, as_json, lambda d: click.echo(
        f"backed up {directory} to {out} ({'encrypted' if made.encrypted else 'not encrypted'}"
        f", {len(made.files)} files, {made.seconds:.1f} s)"))


@validator.command()
@click.argument("source", metavar="BACKUP",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@_PASSPHRASE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def restore(source: Path, directory: Path, passphrase_file: Path | None,
            as_json: bool) -> None:
    """Restore BACKUP into DIR, a new or empty folder (never over a live validator), and
    check that its secrets open with the restored seed key."""
    from validator.backup import BackupError
    from validator.backup import restore as run

    try:
        data = run(source, directory, passphrase=_passphrase(passphrase_file))
    except BackupError as exc:
        _fail(str(exc))
    _show(data, as_json, lambda d: click.echo(
        f"restored {source} into {directory} (taken {_when(d['created'])}); start it with: "
        f"foblab validator serve --dir {directory}"))


@validator.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
              help="The validator directory made by `foblab validator init`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check(directory: Path, as_json: bool) -> None:
    """Open every sealed secret of a validator directory, offline and read-only (safe
    beside a running daemon); exit 1 unless every one opens."""
    from validator import keys
    from validator.daemon import describe_database
    from validator.secrets_box import KeyFileError
    from validator.store import StoreError, open_store

    try:
        settings = load(directory / CONFIG_NAME)
    except ConfigError as exc:
        _fail(str(exc))
    if settings.database_url is None and not settings.database.is_file():
        _fail(f"no database at {settings.database}")
    try:
        store = open_store(settings.store_target, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        _fail(f"cannot read database {describe_database(settings)}: {exc}")
    try:
        box = keys.open_box(store, settings.seed_key_file, settle=False)
        result = keys.check(store, box)
    except (KeyFileError, StoreError, sqlite3.Error) as exc:
        _fail(str(exc))
    finally:
        store.close()
    total = result.total_opened + result.total_failed
    data: dict[str, Any] = {
            "ok": result.ok, "opened": result.total_opened, "failed": result.total_failed,
            "total": total, "tables": {t: {"opened": n, "failed": result.failed[t]}
                                       for t, n in result.opened.items()},
            "data_keys": result.data_keys, "master_key_id": box.key_id,
            "errors": result.examples}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        tables = ", ".join(f"{t} {v['opened']}/{v['opened'] + v['failed']}"
                           for t, v in data["tables"].items())
        click.echo(f"{result.total_opened} of {total} sealed secrets open"
                   + (f" ({tables})" if tables else "")
                   + f"; {result.data_keys} data key(s) under master key {box.key_id}")
        for line in result.examples:
            click.echo(f"  {line}", err=True)
    if not result.ok:
        sys.exit(1)


# -- device --------------------------------------------------------------------------------

@validator.group()
def device() -> None:
    """Enable, list, deactivate and resync a user's devices."""


@client_command(device)
@click.argument("user")
@click.argument("serial")
@click.argument("code1")
@click.argument("code2")
def enable(client: ApiClient, as_json: bool, user: str, serial: str, code1: str,
           code2: str) -> None:
    """Assign SERIAL to USER, proven by two consecutive codes."""
    data = client.enable_device(user, serial, code1, code2)
    _show(data, as_json, lambda d: click.echo(f"enabled {serial} for {user}"))


@client_command(device, "list")
@click.argument("user")
def list_devices(client: ApiClient, as_json: bool, user: str) -> None:
    """A user's devices."""
    data = client.list_devices(user)
    _show(data, as_json, lambda d: _table([_token_row(t) for t in d["devices"]],
                                          _TOKEN_COLUMNS))


@client_command(device)
@click.argument("user")
@click.argument("serial")
def deactivate(client: ApiClient, as_json: bool, user: str, serial: str) -> None:
    """Unassign SERIAL from USER (its old codes stay dead)."""
    client.deactivate_device(user, serial)
    _show({"deactivated": serial, "user": user}, as_json,
          lambda d: click.echo(f"deactivated {serial} of {user}"))


@client_command(device)
@click.argument("user")
@click.argument("serial")
@click.argument("code1")
@click.argument("code2")
def resync(client: ApiClient, as_json: bool, user: str, serial: str, code1: str,
           code2: str) -> None:
    """Resynchronise SERIAL from two consecutive codes."""
    data = client.resync_device(user, serial, code1, code2)
    _show(data, as_json, lambda d: click.echo(
        f"resynced {serial}: offset {d['drift']['offset_seconds']} s"
        if d.get("drift") else f"resynced {serial}"))


# -- verify, audit, station ----------------------------------------------------------------

REFUSAL_HINTS = {
    "replayed": "a code is good once: this one, or a later one, was already used (enable and "
                "resync use their two codes); wait for the display to show a new code",
    "invalid_code": "not a code of the user's token near now: a typo, another token, or a "
                    "clock far off (then: foblab validator device resync)",
    "locked": "too many wrong codes; wait, or: foblab validator token unlock SERIAL",
    "no_device": "the user has no enabled token: foblab validator device enable",
}
"""Why `verify` was refused, in a person's words, after the API's reason."""


@client_command(validator)
@click.argument("user")
@click.argument("code")
@click.option("--serial", help="Only this device of the user.")
def verify(client: ApiClient, as_json: bool, user: str, code: str, serial: str | None) -> None:
    """Check USER's CODE. Exit status 0 if accepted, 1 if refused."""
    data = client.verify(user, code, serial)
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    elif data["ok"]:
        click.echo(f"accepted ({data['serial']})")
    else:
        wait = f", retry in {data['retry_after']:.0f} s" if data.get("retry_after") else ""
        hint = REFUSAL_HINTS.get(data["reason"])
        click.echo(f"refused: {data['reason']}{wait}" + (f" ({hint})" if hint else ""),
                   err=True)
    sys.exit(0 if data["ok"] else 1)


@client_command(validator, with_subcommands=True)
@click.option("--serial")
@click.option("--user")
@click.option("--action")
@click.option("--result", type=click.Choice(["ok", "refused"]))
@click.option("--request-id", help="The entries one request wrote (its X-Request-Id, the "
              "request_id of its log lines).")
@click.option("--oldest-first", is_flag=True, help="Oldest entries first.")
@page_options
def audit(client: ApiClient, as_json: bool, serial: str | None, user: str | None,
          action: str | None, result: str | None, request_id: str | None,
          oldest_first: bool, limit: int, page: int, all_: bool,
          offset: int | None) -> None:
    """The audit log, newest first (a page of 100 unless --all; a note says when there is
    more). `audit export` streams all of it as JSON lines."""
    filters: dict[str, Any] = {"serial": serial, "user": user, "action": action,
                               "result": result, "request_id": request_id,
                               "order": "oldest" if oldest_first else "newest"}
    data = fetch(lambda p: client.audit(**filters, **p),
                 "entries", limit=limit, page=page, all_=all_, offset=offset)

    def human(d: dict[str, Any]) -> None:
        _table([{**e, "time": _when(e["time"]),
                 "via": f"{e.get('via')}:{e.get('client')}" if e.get("via") else None}
                for e in d["entries"]],
               (("id", "ID"), ("time", "TIME"), ("action", "ACTION"), ("result", "RESULT"),
                ("reason", "REASON"), ("serial", "SERIAL"), ("user", "USER"), ("via", "VIA")))
        echo_note(d, "entries")

    _show(data, as_json, human)


audit_group = cast(click.Group, validator.commands["audit"])


def parse_since(text: str, now: float) -> float:
    """A point in time as Unix seconds: Unix seconds, an ISO 8601 time (UTC unless it
    names a zone), or an age before `now` (`90s`, `15m`, `24h`, `7d`). ValueError else."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    if len(text) > 1 and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _time_option(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_since(value, time.time())
    except ValueError:
        _fail(f"{name} must be Unix seconds, an ISO 8601 time or an age such as 24h or 7d, "
              f"not {value!r}")


@client_command(audit_group, "export")
@click.option("--since", help="From this time: Unix seconds, ISO 8601 (UTC unless a zone "
              "is given) or an age such as 15m, 24h, 7d (default: the first entry).")
@click.option("--until", help="Up to (not including) this time, in the same forms.")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl",
              show_default=True, help="One JSON object per line.")
@click.option("--newest-first", is_flag=True, help="Newest entries first (default: oldest "
              "first, the order a log shipper wants).")
def export(client: ApiClient, as_json: bool, since: str | None, until: str | None, fmt: str,
           newest_first: bool) -> None:
    """Stream the audit log as JSON lines, for a log system: oldest first (or
    --newest-first), each entry once even while the daemon writes and prunes."""
    out = sys.stdout.buffer
    try:
        for line in client.audit_export(since=_time_option(since, "--since"),
                                        until=_time_option(until, "--until"),
                                        order="newest" if newest_first else "oldest"):
            out.write(line)
        out.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@validator.group()
def station() -> None:
    """Enrollment stations: tokens on the daemon's configured serial ports."""


@client_command(station, "list")
def list_stations(client: ApiClient, as_json: bool) -> None:
    """The configured stations."""
    data = client.list_stations()
    _show(data, as_json, lambda d: _table(d["stations"], (("name", "NAME"), ("port", "PORT"))))


@client_command(station)
@click.argument("name")
def info(client: ApiClient, as_json: bool, name: str) -> None:
    """The INFO of the token on station NAME, read live."""
    data = client.station_info(name)
    def human(d: dict[str, Any]) -> None:
        for k, v in d["token"].items():
            click.echo(f"{k:<17} {v}")

    _show(data, as_json, human)


@client_command(station)
@click.argument("name")
@click.argument("user")
@click.option("--provision", is_flag=True, help="Seed the token if it is blank.")
@click.option("--kind", type=choices.KIND)
@click.option("--hash", "hash_", type=choices.HASH)
@click.option("--digits", type=choices.DIGITS)
@click.option("--period", type=int)
def enroll(client: ApiClient, as_json: bool, name: str, user: str, provision: bool,
           kind: str | None, hash_: str | None, digits: str | None,
           period: int | None) -> None:
    """Enroll the token on station NAME for USER (reads two codes from it)."""
    step = period or 30  # reading two consecutive codes takes up to a period
    with timed(f"station {name}: reading two codes (up to {step} s)",
               show=wanted(as_json=as_json), expected=step):
        data = client.station_enroll(name, user, provision=provision or None, kind=kind,
                                     hash=hash_, digits=None if digits is None else int(digits),
                                     period=period)
    _show(data, as_json, lambda d: click.echo(
        f"enrolled {d['serial']} for {d['user']}" +
        (" (provisioned with a fresh seed)" if d["provisioned"] else "")))

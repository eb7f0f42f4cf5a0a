"""`foblab validator migrate` and `foblab validator copy`: the database itself, offline.

A database is named by `--dir DIR` (an init'd folder: its foblab.toml, with
FOBLAB_DATABASE_URL overriding it) or directly by a SQLite path or a postgresql:// URL.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import click

from tools._args import fail as _fail
from validator.config import CONFIG_NAME, ConfigError, load


def _target(directory: Path | None, database: str | None) -> str:
    if (directory is None) == (database is None):
        _fail("give --dir DIR or --database PATH_OR_URL (one of them)")
    if database is not None:
        return database
    try:
        settings = load(directory / CONFIG_NAME)  # type: ignore[operator]
    except ConfigError as exc:
        _fail(str(exc))
    return str(settings.store_target)


def _shown(target: str) -> str:
    if "://" in target:
        from validator.store_pg import redact
        return redact(target)
    return target


@click.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              help="An init'd validator folder.")
@click.option("--database", metavar="PATH_OR_URL", help="A SQLite file or postgresql:// URL.")
@click.option("--json", "as_json", is_flag=True)
def migrate(directory: Path | None, database: str | None, as_json: bool) -> None:
    """Upgrade the database's schema to this foblab's version (daemons also do it when
    they start; run it first to upgrade a shared database before its daemons)."""
    from validator.store import SCHEMA_VERSION, StoreError, open_store

    target = _target(directory, database)
    if "://" not in target and not Path(target).is_file():
        _fail(f"no database at {target}")
    try:
        try:
            probe = open_store(target, readonly=True)
            before = probe.schema_version()  # type: ignore[attr-defined]
            probe.close()
        except (StoreError, sqlite3.Error):
            before = 0
        open_store(target).close()
    except (StoreError, sqlite3.Error) as exc:
        _fail(f"cannot migrate {_shown(target)}: {exc}")
    if as_json:
        click.echo(json.dumps({"from": before, "to": SCHEMA_VERSION}))
    elif before == SCHEMA_VERSION:
        click.echo(f"{_shown(target)}: schema version {SCHEMA_VERSION}, up to date")
    else:
        click.echo(f"{_shown(target)}: schema version {before} -> {SCHEMA_VERSION}")


@click.command()
@click.option("--from", "source", required=True, metavar="PATH_OR_URL",
              help="The validator's database now (a SQLite file or postgresql:// URL).")
@click.option("--to", "destination", required=True, metavar="PATH_OR_URL",
              help="An empty database to copy it into.")
@click.option("--json", "as_json", is_flag=True)
def copy(source: str, destination: str, as_json: bool) -> None:
    """Copy a whole validator (tokens, data keys, audit, the AWS endpoint's keys and
    sessions) into an empty database; sealed secrets are copied as they are, so the same
    seed.key opens them there. Stop the daemons first."""
    from validator.store import StoreError
    from validator.store_copy import copy_database

    try:
        counts = copy_database(source, destination)
    except (StoreError, sqlite3.Error) as exc:
        _fail(f"cannot copy: {exc}")
    if as_json:
        click.echo(json.dumps(counts, sort_keys=True))
        return
    copied = ", ".join(f"{n} {t}" for t, n in counts.items())
    click.echo(f"copied {_shown(source)} -> {_shown(destination)}: {copied}")

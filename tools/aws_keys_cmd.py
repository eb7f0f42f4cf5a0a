"""`foblab validator aws-keys create|list|delete|sessions`: the access keys of the AWS
endpoint, and the STS sessions they issued.

Works directly on the validator's database, the SQLite file (WAL lets it while the daemon
runs) or the PostgreSQL database of `database_url` (several daemons may share it): the
daemons check every request's SigV4 signature against these keys. The secret access key is
printed once, at creation; the database holds it sealed with the validator's seed key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from tools._args import fail as _fail
from validator import keys, rules
from validator.aws.endpoint import USER_NAME_MAX
from validator.aws.params import USER as USER_NAME
from validator.aws.store import AwsStore, open_aws_store
from validator.config import CONFIG_NAME, ConfigError, load
from validator.secrets_box import KeyFileError
from validator.store import StoreError, is_url, open_store


def _from_config(directory: Path) -> tuple[str | Path, Path]:
    """The database (a SQLite path or a postgresql:// URL) and seed key file named by
    DIR/foblab.toml (`foblab validator init`; FOBLAB_DATABASE_URL overrides the first)."""
    try:
        settings = load(directory / CONFIG_NAME)
    except ConfigError as exc:
        _fail(str(exc))
    return settings.store_target, settings.seed_key_file


@contextmanager
def _store(directory: Path | None, db: str | None, key_file: Path | None
           ) -> Iterator[AwsStore]:
    target: str | Path | None = db if db is None or is_url(db) else Path(db)
    if directory is not None:
        if db is not None or key_file is not None:
            _fail("--dir excludes --db/--key-file")
        target, key_file = _from_config(directory)
    if target is None or key_file is None:
        _fail("give --dir DIR (an init'd validator directory), or --db and --key-file")
    if isinstance(target, Path) and not target.exists():
        _fail(f"no database at {target}; run foblab validator init first")
    if not key_file.exists():  # never create a fresh key that would not match the db
        _fail(f"no key file at {key_file}")
    try:
        # Beside a running daemon: read the keys, change nothing (a rotation may be under
        # way). Only a database no validator of this version has opened is migrated.
        tokens = open_store(target)
    except (StoreError, OSError) as exc:
        _fail(str(exc))
    try:
        try:
            box = keys.open_box(tokens, key_file, settle=False)
            if box.data_key_id is None:
                box = keys.open_box(tokens, key_file, settle=True)
            store = open_aws_store(tokens, box)
        except (KeyFileError, StoreError, OSError) as exc:
            _fail(str(exc))
        try:
            yield store
        except StoreError as exc:  # the database stopped answering meanwhile
            _fail(str(exc))
        finally:
            store.close()
    finally:
        tokens.close()


def _where(f: Any) -> Any:
    f = click.option("--key-file", type=click.Path(path_type=Path),
                     help="The validator's seed key file (instead of --dir).")(f)
    f = click.option("--db", metavar="PATH_OR_URL",
                     help="The validator's database, a SQLite file or a postgresql:// URL "
                     "(instead of --dir).")(f)
    f = click.option("--dir", "directory", type=click.Path(path_type=Path),
                     help="The validator directory made by `foblab validator init`.")(f)
    return f


@click.group("aws-keys")
def aws_keys() -> None:
    """Access keys for the AWS-compatible endpoint (/aws)."""


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@aws_keys.command()
@_where
@click.option("--user", help="Bind the key to this one user: it may then manage only this "
              "user's MFA devices (AWS's self-service MFA policy).")
@click.option("--json", "as_json", is_flag=True, help="Print the new key as JSON.")
def create(directory: Path | None, db: str | None, key_file: Path | None,
           user: str | None, as_json: bool) -> None:
    """Create an access key; its secret is printed this once."""
    if user is not None and not USER_NAME.fullmatch(user):
        _fail(f"--user must be {rules.USER.requirement(USER_NAME_MAX)}")
    with _store(directory, db, key_file) as store:
        akid, secret = store.create_key(time.time(), user=user)
    if as_json:
        click.echo(json.dumps({"access_key_id": akid, "secret_access_key": secret,
                               "user": user}))
    else:
        click.echo(f"access key id      {akid}\nsecret access key  {secret}\n"
                   + (f"bound to user      {user}\n" if user else "")
                   + "(the secret is not shown again)")


@aws_keys.command("list")
@_where
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(directory: Path | None, db: str | None, key_file: Path | None,
          as_json: bool) -> None:
    """List access key ids (never their secrets)."""
    with _store(directory, db, key_file) as store:
        keys = store.list_keys()
    if as_json:
        click.echo(json.dumps([{"access_key_id": k.access_key_id, "created": k.created,
                                "user": k.user} for k in keys]))
        return
    for k in keys:
        bound = f"  user {k.user}" if k.user else ""
        click.echo(f"{k.access_key_id}  created {_utc(k.created)}{bound}")
    if not keys:
        click.echo("no access keys")


@aws_keys.command()
@_where
@click.argument("access_key_id")
def delete(directory: Path | None, db: str | None, key_file: Path | None,
           access_key_id: str) -> None:
    """Delete an access key and revoke the sessions it issued: requests signed with either
    are refused from now on."""
    with _store(directory, db, key_file) as store:
        revoked = store.delete_key(access_key_id)
    if revoked is None:
        _fail(f"no access key {access_key_id}")
    click.echo(f"deleted {access_key_id}; {revoked} session(s) revoked")


@aws_keys.command()
@_where
@click.option("--revoke", "revoke", multiple=True, metavar="ASIA...",
              help="Revoke this session (repeatable).")
@click.option("--revoke-key", metavar="AKIA...",
              help="Revoke every session this access key issued.")
@click.option("--revoke-all", is_flag=True, help="Revoke every session.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sessions(directory: Path | None, db: str | None, key_file: Path | None,
             revoke: tuple[str, ...], revoke_key: str | None, revoke_all: bool,
             as_json: bool) -> None:
    """List the STS sessions that have not expired (never their secrets), or revoke some:
    requests signed with a revoked session are refused from then on."""
    if sum((bool(revoke), revoke_key is not None, revoke_all)) > 1:
        _fail("give one of --revoke, --revoke-key, --revoke-all")
    with _store(directory, db, key_file) as store:
        if revoke or revoke_key is not None or revoke_all:
            n = store.revoke_sessions(list(revoke) if revoke else None, parent=revoke_key)
            if as_json:
                click.echo(json.dumps({"revoked": n}))
            else:
                click.echo(f"{n} session(s) revoked")
            return
        found = store.list_sessions(time.time())
    if as_json:
        click.echo(json.dumps([{"access_key_id": s.access_key_id, "parent": s.parent,
                                "mfa": s.mfa, "user": s.user, "serial": s.serial,
                                "created": s.created, "expires": s.expires} for s in found]))
        return
    for s in found:
        mfa = f"mfa {s.serial} ({s.user})" if s.mfa else "no mfa (no IAM action)"
        click.echo(f"{s.access_key_id}  from {s.parent or '?'}  {mfa}  "
                   f"expires {_utc(s.expires)}")
    if not found:
        click.echo("no sessions")

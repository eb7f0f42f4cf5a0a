"""Backup and restore of a validator folder, online (the daemon may be serving).

A backup is one file: a gzipped tar of the folder's config, a consistent copy of the
database, the seed key file(s), the API key files and the other files the config names
(RADIUS client secrets, TLS files), with `manifest.json` (what each file is, its SHA-256,
the database's schema version). With a passphrase, that tar is sealed with AES-256-GCM
under a key derived by scrypt (`FOBLAB-BACKUP-1` header, salt and nonce in the clear and
authenticated); without, it is a plain `.tar.gz`, as secret as the folder itself, and
written 0600 like every key file.

Consistency: the database is copied with SQLite's online backup API in one step, so the
copy is one committed state (WAL readers do not block the daemon's writers, nor it them);
the watermarks of every token (the last accepted counter or time step) are in that state,
so a validator restored from it refuses every code the original had accepted before the
backup began. Codes accepted after the copy are not in it: a restore cannot know them (for
TOTP they are dead anyway once their step has passed; an HOTP code accepted after the
backup is accepted once more by the restored validator).

The key files are read after the database, and the copy is then opened with them (as
`foblab validator check` does, on a sample of the secrets): a master-key rotation that
ran between the two reads is caught there, and the backup is taken again.

Restore refuses a folder that exists and is not empty (a live validator's folder is never
overwritten), checks every file against the manifest, writes them 0600 in a new 0700
folder, and rewrites the config's file paths to the restored files, so a restored folder
never points at the original's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import sqlite3
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from validator import keys
from validator.config import CONFIG_NAME, ConfigError, Settings, load
from validator.secrets_box import KeyFileError, fsync_dir
from validator.store import SQLiteStore, StoreError

MAGIC = b"FOBLAB-BACKUP-1\n"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MAX_BACKUP_BYTES = 4 << 30
"""The largest backup file restore reads (it is held in memory to be decrypted)."""
ATTEMPTS = 5


class BackupError(Exception):
    """A backup or restore that cannot be done; one line for the operator."""


@dataclass(frozen=True)
class Made:
    path: Path
    files: dict[str, str]  # what -> name in the backup
    encrypted: bool
    schema_version: int
    seconds: float


# -- sealing ---------------------------------------------------------------------------------

def _derive(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def seal(data: bytes, passphrase: bytes) -> bytes:
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = MAGIC + salt + nonce
    return header + AESGCM(_derive(passphrase, salt)).encrypt(nonce, data, header)


def unseal(blob: bytes, passphrase: bytes | None) -> bytes:
    if not blob.startswith(MAGIC):
        return blob
    if passphrase is None:
        raise BackupError("this backup is encrypted: give its passphrase (--passphrase-file)")
    header_len = len(MAGIC) + 16 + 12
    if len(blob) < header_len + 16:
        raise BackupError("this backup is truncated")
    header = blob[:header_len]
    salt, nonce = header[len(MAGIC):len(MAGIC) + 16], header[len(MAGIC) + 16:]
    try:
        return AESGCM(_derive(passphrase, salt)).decrypt(nonce, blob[header_len:], header)
    except InvalidTag:
        raise BackupError("wrong passphrase, or the backup was altered") from None


# -- backup ----------------------------------------------------------------------------------

def _files(settings: Settings) -> dict[str, Path]:
    """Every file the folder's config names, by what it is (the database aside)."""
    seed = settings.seed_key_file
    found: dict[str, Path] = {"seed_key_file": seed}
    for suffix in (".next", ".next.tmp"):  # a master-key rotation under way
        path = seed.with_name(seed.name + suffix)
        if path.exists():
            found[f"seed_key_file{suffix}"] = path
    for what in ("admin_key_file", "verifier_key_file", "tls_cert", "tls_key",
                 "tls_client_ca"):
        path = getattr(settings, what)
        if path is not None and path.exists():
            found[what] = path
    found["api_keys_file"] = settings.keys_file
    if settings.radius is not None:
        for client in settings.radius.clients:
            if client.secret_file is not None:
                found[f"radius:{client.name}"] = client.secret_file
    return found


def _names(files: dict[str, Path]) -> dict[str, str]:
    """A file name in the backup for each file: its own, made unique."""
    names: dict[str, str] = {}
    taken = {CONFIG_NAME, "validator.db", "manifest.json"}
    for what, path in files.items():
        name = path.name
        if what.startswith("seed_key_file"):
            name = "seed.key" + what.removeprefix("seed_key_file")
        n = 2
        while name in taken:
            name = f"{n}-{path.name}"
            n += 1
        taken.add(name)
        names[what] = name
    return names


def _copy_database(source: Path, target: Path) -> int:
    """A copy of `source` as of one committed state (SQLite's backup API, one step)."""
    src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
            row = dst.execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0]) if row else 0
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dst.close()
    finally:
        src.close()
    return version


def _opens(db: Path, seed: Path) -> str | None:
    """None when the copied database's secrets open with the copied key files."""
    try:
        store = SQLiteStore(db, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        return f"the copy of the database cannot be read: {exc}"
    try:
        box = keys.open_box(store, seed, settle=False)
        return keys.spot_check(store, box, 64)
    except KeyFileError as exc:
        return str(exc)
    finally:
        store.close()


def _write_private(path: Path, data: bytes) -> None:
    """A new file, 0600, fsynced (refuses to overwrite)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None


def backup(config: Path, out: Path, *, passphrase: bytes | None = None,
           now: float | None = None) -> Made:
    """Back up the validator whose config is `config` into the new file `out`."""
    started = time.monotonic()
    try:
        settings = load(config)
    except ConfigError as exc:
        raise BackupError(str(exc)) from None
    if not settings.database.is_file():
        raise BackupError(f"no database at {settings.database}")
    if out.exists():
        raise BackupError(f"{out} exists already; give a new file")
    if not settings.keys_file.exists():  # a folder from before named keys: make it now
        from validator.apikeys import ApiKeyError, Role, ensure_keys_file
        try:
            ensure_keys_file(settings.keys_file, {Role.ADMIN: settings.admin_key_file,
                                                  Role.VERIFIER: settings.verifier_key_file})
        except ApiKeyError as exc:
            raise BackupError(str(exc)) from None
    problem = ""
    with tempfile.TemporaryDirectory(prefix="foblab-backup-") as tmp:
        work = Path(tmp)
        for _ in range(ATTEMPTS):
            db = work / "validator.db"
            db.unlink(missing_ok=True)
            try:
                version = _copy_database(settings.database, db)
            except sqlite3.Error as exc:
                raise BackupError(f"cannot copy the database {settings.database}: {exc}"
                                  ) from None
            files = _files(settings)  # after the database: see the module's docstring
            names = _names(files)
            contents = {names[what]: _read(path) for what, path in files.items()}
            for old in list(work.iterdir()):
                if old.name.startswith("seed.key"):
                    old.unlink()
            for name, data in contents.items():
                if name.startswith("seed.key"):
                    _write_private(work / name, data)
            problem = _opens(db, work / "seed.key") or ""
            if not problem:
                break
        else:
            raise BackupError(f"no consistent copy after {ATTEMPTS} attempts: {problem}")
        contents[CONFIG_NAME] = _read(config)
        contents["validator.db"] = db.read_bytes()
    created = now if now is not None else time.time()
    listing = {"config": CONFIG_NAME, "database": "validator.db", **names}
    manifest: dict[str, Any] = {
        "format": "foblab-backup", "version": 1,
        "created": created,
        "schema_version": version,
        "files": listing,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry, data in [("manifest.json", json.dumps(manifest, indent=1).encode()),
                            *sorted(contents.items())]:
            info = tarfile.TarInfo(entry)
            info.size, info.mode, info.mtime = len(data), 0o600, int(created)
            tar.addfile(info, io.BytesIO(data))
    blob = buffer.getvalue()
    if passphrase is not None:
        blob = seal(blob, passphrase)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot create {out}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        out.unlink(missing_ok=True)
        raise BackupError(f"cannot write {out}: {exc.strerror or exc}") from None
    return Made(out, listing, passphrase is not None, version,
                time.monotonic() - started)


# -- restore ---------------------------------------------------------------------------------

def _members(blob: bytes) -> dict[str, bytes]:
    """The regular files of the backup's tar, by name; nothing else is accepted."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar:
                if not member.isfile() or "/" in member.name or member.name.startswith(".") \
                        or len(out) >= 64:
                    raise BackupError(f"not a foblab backup: unexpected entry {member.name!r}")
                handle = tar.extractfile(member)
                assert handle is not None
                out[member.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"not a foblab backup (or a damaged one): {exc}") from None
    return out


def _rewrite_config(text: str, names: dict[str, str]) -> str:
    """The config with every file it names pointing at the restored file beside it."""
    import tomli_w

    doc = tomllib.loads(text)
    main = doc.setdefault("validator", {})
    main["database"] = names["database"]
    for what in ("seed_key_file", "admin_key_file", "verifier_key_file", "api_keys_file",
                 "tls_cert", "tls_key", "tls_client_ca"):
        if what in names:
            main[what] = names[what]
    for client in doc.get("radius", {}).get("clients", []):
        name = names.get(f"radius:{client.get('name')}")
        if name is not None and "secret_file" in client:
            client["secret_file"] = name
    return str(tomli_w.dumps(doc))


def restore(source: Path, directory: Path, *, passphrase: bytes | None = None) -> dict[str, Any]:
    """Restore the backup `source` into `directory`, which must not exist or be empty."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(f"{directory} exists and is not empty: restore into a new folder "
                          "(a live validator's folder is never overwritten)")
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror or exc}") from None
    if size > MAX_BACKUP_BYTES:
        raise BackupError(f"{source} is larger than {MAX_BACKUP_BYTES} bytes")
    members = _members(unseal(_read(source), passphrase))
    try:
        manifest = json.loads(members.pop("manifest.json"))
        names: dict[str, str] = dict(manifest["files"])
        sums: dict[str, str] = dict(manifest["sha256"])
    except (KeyError, ValueError, TypeError):
        raise BackupError("not a foblab backup: no readable manifest.json") from None
    if set(sums) != set(members) or set(names.values()) != set(members):
        raise BackupError("the backup's files do not match its manifest")
    for name, data in members.items():
        if hashlib.sha256(data).hexdigest() != sums[name]:
            raise BackupError(f"the backup's {name} does not match its checksum")
    try:
        config = _rewrite_config(members[CONFIG_NAME].decode(), names)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BackupError(f"the backup's config is not valid TOML: {exc}") from None
    members[CONFIG_NAME] = config.encode()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name, data in members.items():
        _write_private(directory / name, data)
    fsync_dir(directory)
    problem = _opens(directory / names["database"], directory / names["seed_key_file"])
    if problem:
        raise BackupError(f"restored into {directory}, but its secrets do not open: {problem}")
    return {"directory": str(directory), "created": manifest.get("created"),
            "schema_version": manifest.get("schema_version"), "files": sorted(members)}

"""The AWS endpoint's own tables, beside the core's in the same SQLite file.

- `aws_access_keys`: long-term access keys issued by `foblab validator aws-keys`, each
  optionally bound to one user (`user`: it may then manage only that user's MFA devices).
- `aws_sessions`: temporary credentials from STS GetSessionToken (usable to sign requests
  until they expire, with their session token). `parent` is the access key that asked for
  them (deleting it revokes them); `serial` is the MFA device whose code was presented,
  NULL when none was (such a session may call no IAM action, as in AWS).
- `aws_virtual_mfa`: what AWS keeps about a virtual MFA device and the core does not (name,
  path, creation date); the device itself (seed, state, assignment) is a core token whose
  serial is the device's ARN.
- `aws_mfa_tags`: tags of MFA devices.

SigV4 needs the secret access key itself, so secrets are sealed with the core's seed box
(AES-GCM, the access key id bound in); session tokens are kept as SHA-256 digests only.
Tables are created IF NOT EXISTS: the core's schema migrations never see them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from validator.secrets_box import SecretBox
from validator.store import Connections, register_sealed_table

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aws_access_keys (
        access_key_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        created REAL NOT NULL,
        user TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS aws_sessions (
        access_key_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL,
        token_sha256 TEXT NOT NULL,
        user TEXT,
        serial TEXT,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        parent TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS aws_sessions_expires ON aws_sessions(expires)",
    """CREATE TABLE IF NOT EXISTS aws_virtual_mfa (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS aws_mfa_tags (
        serial TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (serial, key)
    )""",
)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _aad(kind: str, access_key_id: str) -> str:
    # Bound into the AES-GCM seal; distinct from any token serial's use of the box.
    return f"aws-{kind}-secret:{access_key_id}"


def _key_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_B32) for _ in range(16))


def _secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode("ascii")  # 40 chars, like AWS


# Columns added after the first release: (table, column, declaration). Added in place on
# an older database (sessions made before `parent` existed have no parent to revoke them
# with; `aws-keys sessions --revoke` does).
_ADDED_COLUMNS = (("aws_access_keys", "user", "TEXT"), ("aws_sessions", "parent", "TEXT"))


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key_id: str
    created: float
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A secret found for an access key id; `token_sha256`/`expires` for session keys.
    `mfa`: session credentials obtained with an MFA code (always True for a long-term key,
    which is not a session). `user`: the one user the key (or the session's parent key)
    is bound to, or None for a key that may act on every user."""

    secret: str
    token_sha256: str | None = None
    expires: float | None = None
    mfa: bool = True
    user: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as `aws-keys sessions` lists it (never its secret or token)."""

    access_key_id: str
    parent: str | None
    user: str | None
    serial: str | None
    created: float
    expires: float

    @property
    def mfa(self) -> bool:
        return self.serial is not None


@dataclass(frozen=True, slots=True)
class Session:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires: float


@dataclass(frozen=True, slots=True)
class VirtualDevice:
    serial: str
    name: str
    path: str
    created: float


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class AwsStore:
    """The AWS tables on the SQLite file at `db_path` (WAL, one connection per thread)."""

    def __init__(self, db_path: str | os.PathLike[str],
                 box: SecretBox | Callable[[], SecretBox], *,
                 busy_timeout_ms: int = 10_000) -> None:
        self.path = os.fspath(db_path)
        # A callable follows the validator's current box across a key rotation.
        self._box: Callable[[], SecretBox] = (lambda: box) if isinstance(box, SecretBox) else box
        self._db = Connections(db_path, busy_timeout_ms=busy_timeout_ms)
        with self._db.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            for table, column, declaration in _ADDED_COLUMNS:
                have = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            # so that Validator.rotate_key re-encrypts these secrets with the seeds
            register_sealed_table(conn, "aws_access_keys", "access_key_id",
                                  _aad("access-key", ""))
            register_sealed_table(conn, "aws_sessions", "access_key_id", _aad("session", ""))

    @property
    def box(self) -> SecretBox:
        return self._box()

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def close(self) -> None:
        self._db.close()

    # -- long-term access keys ---------------------------------------------------------

    def create_key(self, now: float, user: str | None = None) -> tuple[str, str]:
        """A new access key: (access key id, secret access key). The secret is shown once.
        `user`: bind the key to that one user."""
        akid, secret = _key_id("AKIA"), _secret_key()
        # Sealed inside the write transaction, so that a key rotation (whose reseal also
        # holds the write lock) sees this row, or this row is sealed under its new key.
        with self._db.transaction() as conn:
            sealed = self.box.seal(_aad("access-key", akid), secret.encode())
            conn.execute("INSERT INTO aws_access_keys (access_key_id, sealed, created, user) "
                         "VALUES (?, ?, ?, ?)", (akid, sealed, now, user))
        return akid, secret

    def list_keys(self) -> list[AccessKey]:
        rows = self._conn().execute(
            "SELECT access_key_id, created, user FROM aws_access_keys ORDER BY created, "
            "access_key_id").fetchall()
        return [AccessKey(str(a), float(c), u) for a, c, u in rows]

    def delete_key(self, access_key_id: str) -> int | None:
        """Delete a key and revoke every session it issued, in one transaction; answers how
        many sessions were revoked, or None if there was no such key."""
        with self._db.transaction() as conn:
            cur = conn.execute("DELETE FROM aws_access_keys WHERE access_key_id = ?",
                               (access_key_id,))
            if cur.rowcount != 1:
                return None
            revoked = conn.execute("DELETE FROM aws_sessions WHERE parent = ?",
                                   (access_key_id,))
        return revoked.rowcount

    def list_sessions(self, now: float) -> list[SessionInfo]:
        """The sessions that have not expired, oldest first."""
        rows = self._conn().execute(
            "SELECT access_key_id, parent, user, serial, created, expires FROM aws_sessions "
            "WHERE expires > ? ORDER BY created, access_key_id", (now,)).fetchall()
        return [SessionInfo(str(a), p, u, s, float(c), float(e)) for a, p, u, s, c, e in rows]

    def revoke_sessions(self, access_key_ids: list[str] | None = None, *,
                        parent: str | None = None) -> int:
        """Revoke the named sessions, or every session of `parent`, or (neither given)
        every session; answers how many were revoked."""
        with self._db.transaction() as conn:
            if access_key_ids is not None:
                cur = conn.executemany("DELETE FROM aws_sessions WHERE access_key_id = ?",
                                       [(a,) for a in access_key_ids])
            elif parent is not None:
                cur = conn.execute("DELETE FROM aws_sessions WHERE parent = ?", (parent,))
            else:
                cur = conn.execute("DELETE FROM aws_sessions")
        return cur.rowcount

    def credentials(self, access_key_id: str) -> Credentials | None:
        """The secret of a long-term or session access key, or None if unknown."""
        conn = self._conn()
        row = conn.execute("SELECT sealed, user FROM aws_access_keys WHERE access_key_id = ?",
                           (access_key_id,)).fetchone()
        if row is not None:
            secret = self.box.open(_aad("access-key", access_key_id), bytes(row[0]))
            return Credentials(secret.decode(), user=row[1])
        # A session whose parent key is gone is dead even if a delete raced it: the join
        # finds no parent row. Sessions from before `parent` existed have none (NULL).
        row = conn.execute(
            "SELECT s.sealed, s.token_sha256, s.expires, s.serial, s.parent, "
            "k.access_key_id, k.user FROM aws_sessions s LEFT JOIN aws_access_keys k "
            "ON k.access_key_id = s.parent WHERE s.access_key_id = ?",
            (access_key_id,)).fetchone()
        if row is None or (row[4] is not None and row[5] is None):
            return None
        secret = self.box.open(_aad("session", access_key_id), bytes(row[0]))
        return Credentials(secret.decode(), str(row[1]), float(row[2]),
                           mfa=row[3] is not None, user=row[6])

    # -- sessions (STS) ----------------------------------------------------------------

    def create_session(self, user: str | None, serial: str | None, expires: float,
                       now: float, parent: str | None = None) -> Session:
        """Session credentials: `serial` the MFA device whose code was presented (None: no
        MFA), `parent` the access key that asked (None only for the lab switch)."""
        akid, secret = _key_id("ASIA"), _secret_key()
        token = base64.b64encode(b"foblab-session\x00" + secrets.token_bytes(96)).decode()
        with self._db.transaction() as conn:  # sealed inside it: see create_key
            if parent is not None and conn.execute(
                    "SELECT 1 FROM aws_access_keys WHERE access_key_id = ?",
                    (parent,)).fetchone() is None:
                raise LookupError(f"access key {parent} was deleted")
            sealed = self.box.seal(_aad("session", akid), secret.encode())
            conn.execute("DELETE FROM aws_sessions WHERE expires < ?", (now,))
            conn.execute("INSERT INTO aws_sessions (access_key_id, sealed, token_sha256, user, "
                         "serial, created, expires, parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (akid, sealed, token_digest(token), user, serial, now, expires,
                          parent))
        return Session(akid, secret, token, expires)

    # -- virtual MFA devices -----------------------------------------------------------

    def add_virtual(self, device: VirtualDevice, tags: list[tuple[str, str]]) -> None:
        with self._db.transaction() as conn:
            conn.execute("INSERT INTO aws_virtual_mfa VALUES (?, ?, ?, ?)",
                         (device.serial, device.name, device.path, device.created))
            conn.execute("DELETE FROM aws_mfa_tags WHERE serial = ?", (device.serial,))
            conn.executemany("INSERT INTO aws_mfa_tags VALUES (?, ?, ?, ?)",
                             [(device.serial, k, v, i) for i, (k, v) in enumerate(tags)])

    def get_virtual(self, serial: str) -> VirtualDevice | None:
        row = self._conn().execute("SELECT serial, name, path, created FROM aws_virtual_mfa "
                                   "WHERE serial = ?", (serial,)).fetchone()
        return None if row is None else VirtualDevice(row[0], row[1], row[2], float(row[3]))

    def virtual_from(self, first: str | None, limit: int) -> list[VirtualDevice]:
        """Up to `limit` virtual devices in serial order, from serial `first` on."""
        rows = self._conn().execute(
            "SELECT serial, name, path, created FROM aws_virtual_mfa WHERE serial >= ? "
            "ORDER BY serial LIMIT ?", (first or "", limit)).fetchall()
        return [VirtualDevice(r[0], r[1], r[2], float(r[3])) for r in rows]

    def delete_virtual(self, serial: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM aws_virtual_mfa WHERE serial = ?", (serial,))
            conn.execute("DELETE FROM aws_mfa_tags WHERE serial = ?", (serial,))

    # -- tags --------------------------------------------------------------------------

    def tags(self, serial: str) -> list[tuple[str, str]]:
        rows = self._conn().execute("SELECT key, value FROM aws_mfa_tags WHERE serial = ? "
                                    "ORDER BY position, key", (serial,)).fetchall()
        return [(str(k), str(v)) for k, v in rows]

    def tag(self, serial: str, tags: list[tuple[str, str]], limit: int) -> bool:
        """Add or overwrite tags (keys compare case-insensitively, as IAM's do); False
        (nothing written) if the result would exceed `limit` tags."""
        with self._db.transaction() as conn:
            existing = {str(k).lower(): str(k) for (k,) in conn.execute(
                "SELECT key FROM aws_mfa_tags WHERE serial = ?", (serial,))}
            if len(existing.keys() | {k.lower() for k, _ in tags}) > limit:
                return False
            (top,) = conn.execute("SELECT coalesce(max(position), -1) FROM aws_mfa_tags "
                                  "WHERE serial = ?", (serial,)).fetchone()
            for i, (key, value) in enumerate(tags, start=int(top) + 1):
                if key.lower() in existing:
                    conn.execute("UPDATE aws_mfa_tags SET key = ?, value = ? WHERE serial = ? "
                                 "AND key = ?", (key, value, serial, existing[key.lower()]))
                else:
                    conn.execute("INSERT INTO aws_mfa_tags VALUES (?, ?, ?, ?)",
                                 (serial, key, value, i))
        return True

    def untag(self, serial: str, keys: list[str]) -> None:
        with self._db.transaction() as conn:
            conn.executemany("DELETE FROM aws_mfa_tags WHERE serial = ? AND lower(key) = ?",
                             [(serial, k.lower()) for k in keys])

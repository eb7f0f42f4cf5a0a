"""Envelope keys over any store: start-up recovery, rotations, checks.

The key file (`seed.key`) holds the master key; the store holds the data keys, wrapped by
it; secrets are sealed under the current data key (`validator.secrets_box`). Two rotations:

- **data key** (`rotate_data_key`): one store transaction inserts a new data key, reseals
  every secret under it, makes it current and drops the data keys no row uses. A crash
  anywhere leaves the transaction committed or not: nothing to recover.
- **master key** (`rotate_master_key`): the new key is written durably to `seed.key.next`
  (via `seed.key.next.tmp`, fsync, rename, directory fsync); one store transaction
  re-wraps every data key under it; then `seed.key.next` is renamed over `seed.key` and
  the directory fsynced.

After a crash, `open_box` (run once when a validator starts) looks at every key file
there is (`seed.key`, `.next`, `.next.tmp`) and tries each on the stored data keys (and on
legacy secrets, sealed directly under the key file's key before envelope keys): a key
*opens* a data key when AES-GCM authenticates it, so what decides is which key the rows
are actually sealed under, never the files' names. The key that opens the rows becomes
`seed.key` (re-wrapping first, in one transaction, any data key another file opens), and
only then are the other files removed: a key file is deleted only once no row needs it.
If some data key opens under no key file, nothing is touched and start-up is refused.

The step boundaries are named (`crash_point`), so a test can kill the process at each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from validator.secrets_box import (
    KeyFileError,
    SealError,
    SecretBox,
    crash_point,
    fsync_dir,
    new_data_key,
    read_key,
    unwrap,
    wrap,
    write_key,
    write_key_atomically,
)
from validator.store import AuditEvent, Store

# Every step boundary of the rotations and of the start-up recovery, in order.
DATA_STEPS = ("data:resealed", "data:committed")
MASTER_STEPS = ("master:half-written", "master:tmp-written", "master:next-written",
                "master:rewrapped", "master:committed", "master:swapped", "master:done")
RECOVERY_STEPS = ("recover:committed", "recover:renamed")


# What key management needs of a store is the store interface itself (its key methods:
# data_keys, data_key, legacy_samples, sealed_rows, rotate_data_key, rewrap_data_keys),
# so a PostgreSQL store gets it by implementing `Store`.
KeyStore = Store


class KeyRecoveryError(KeyFileError):
    """No key file opens some stored data key or secret; nothing was changed."""


def _next(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def _files(path: Path) -> list[Path]:
    """The key files a rotation may have left, the current one first."""
    pending = _next(path)
    return [path, pending, pending.with_name(pending.name + ".tmp")]


@dataclass
class _Found:
    """Which key file opens which stored data key and legacy master."""

    keys: dict[Path, bytes] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)
    data: dict[bytes, tuple[Path, bytes]] = field(default_factory=dict)  # id -> file, key
    current: bytes | None = None
    legacy: dict[bytes, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def used(self) -> set[Path]:
        return {p for p, _ in self.data.values()} | set(self.legacy.values())


def _survey(store: KeyStore, path: Path) -> _Found:
    found = _Found()
    for candidate in _files(path):
        if candidate.exists():
            try:
                found.keys[candidate] = read_key(candidate)
            except KeyFileError as exc:
                found.unreadable[candidate] = str(exc)
    for kid, wrapped, current in store.data_keys():
        if current:
            found.current = kid
        for candidate, master in found.keys.items():
            try:
                found.data[kid] = (candidate, unwrap(master, kid, wrapped))
                break
            except SealError:
                continue
        else:
            found.missing.append(f"data key {kid.hex()}")
    for kid, (aad, sealed) in store.legacy_samples().items():
        for candidate, master in found.keys.items():
            try:
                SecretBox(master).open(aad, sealed)
                found.legacy[kid] = candidate
                break
            except SealError:
                continue
        else:
            found.missing.append(f"secrets sealed under master key {kid.hex()}")
    return found


def _refuse(found: _Found, path: Path) -> KeyRecoveryError:
    tried = ", ".join(p.name for p in found.keys) or "none"
    bad = "".join(f"; {reason}" for reason in found.unreadable.values())
    return KeyRecoveryError(
        f"no key file opens {', '.join(found.missing[:3])} (key files tried: {tried}{bad}); "
        f"nothing was changed: restore the key file the database was sealed with to {path}")


def open_box(store: KeyStore, path: str | Path, *, settle: bool = True,
             create: bool = False, now: float | None = None) -> SecretBox:
    """The box for `store` with the master key file at `path`.

    `settle` (the process that owns the validator, at start-up): finish or undo whatever
    an interrupted rotation left, migrate legacy secrets to data keys, and leave exactly
    `path` as the key file. Without it (side tools, checks beside a running daemon) nothing
    is written: the box opens with whichever key file opens the rows. `create`: make a new
    key file when there is none and the store holds no secret yet.
    """
    path = Path(path)
    found = _survey(store, path)
    if found.missing and not found.keys and not found.unreadable:
        raise KeyFileError(f"seed key file {path} does not exist, and the database's "
                           "secrets need it; nothing was changed")
    if found.missing:
        raise _refuse(found, path)
    if path in found.unreadable:
        raise KeyFileError(found.unreadable[path])
    used = found.used
    if not found.keys:
        if not create:
            raise KeyFileError(f"seed key file {path} does not exist")
        if settle:
            master = new_data_key()[1]
            write_key(path, master)
            found.keys[path] = master
    # The target master: the key the rows are under; if two files are needed (a rotation
    # that re-wrapped only some keys cannot commit, but be safe), the newest one.
    order = _files(path)
    if used:
        target = max(used, key=order.index)
    elif found.keys:
        target = min(found.keys, key=order.index)
    else:
        raise KeyFileError(f"seed key file {path} does not exist")
    box = SecretBox(found.keys[target], path=path, fetch=store.data_key,
                    legacy=[found.keys[p] for p in set(found.legacy.values())])
    for kid, (_, data_key) in found.data.items():
        box.add_data_key(kid, data_key, current=kid == found.current)
    if not settle:
        return box
    t = time.time() if now is None else now
    stray = [kid for kid, (p, _) in found.data.items() if p != target]
    if stray:  # a master rotation committed under `target` only in part: finish it
        store.rewrap_data_keys(
            lambda kid, wrapped: wrap(box.master, kid, found.data[kid][1]) if kid in stray
            else wrapped, [AuditEvent(t, "recover_keys", "ok", "rewrapped")])
    if found.legacy or found.current is None:  # first open since envelope keys: migrate
        rotate_data_key(store, box, t, reason="migrated" if found.legacy else None)
        # (a new database gets its first data key without an audit entry)
    crash_point("recover:committed")
    if target != path:  # the rotation committed under the new key: the file follows
        target.replace(path)
        fsync_dir(path.parent)
        crash_point("recover:renamed")
    for other in _files(path)[1:]:  # opens no row now (every data key is under `target`)
        if other.exists() and other != target:
            other.unlink()
            fsync_dir(path.parent)
    return box


def rotate_data_key(store: KeyStore, box: SecretBox, now: float, *,
                    reason: str | None = "data_key") -> int:
    """A new data key; every secret resealed under it in one store transaction, audited
    as `rotate_key` with `reason` (None: not audited). The caller holds whatever lock
    keeps new secrets from being sealed meanwhile."""
    kid, data_key = new_data_key()
    box.add_data_key(kid, data_key)  # opens resealed rows as soon as they are committed
    previous = box.data_key_id

    def switch() -> None:
        # Inside the transaction, holding the store's write lock: a secret sealed by
        # another writer from now on is sealed under the new key and commits after this.
        box.use_data_key(kid)
        crash_point("data:resealed")

    try:
        count = store.rotate_data_key(
            kid, box.wrap(kid, data_key), now,
            lambda aad, sealed: _reseal(box, kid, aad, sealed),
            [] if reason is None else [AuditEvent(now, "rotate_key", "ok", reason)], switch)
    except BaseException:
        if previous is not None:
            box.use_data_key(bytes.fromhex(previous))
        raise
    crash_point("data:committed")
    return count


def follow_current(store: KeyStore, box: SecretBox) -> None:
    """Seal new secrets under the data key the store marks current (another process, a
    second worker or daemon on the same database, may have rotated it)."""
    for kid, wrapped, current in store.data_keys():
        if current:
            box.add_data_key(kid, unwrap(box.master, kid, wrapped), current=True)


def _reseal(box: SecretBox, kid: bytes, aad: str, sealed: bytes) -> bytes:
    if sealed[0] == 2 and sealed[1:9] == kid:
        return sealed
    return box.seal(aad, box.open(aad, sealed), kid)


def rotate_master_key(store: KeyStore, box: SecretBox, now: float) -> int:
    """A new master key: written durably beside the key file, every data key re-wrapped
    under it in one transaction, then swapped in. Returns how many data keys."""
    if box.path is None:
        raise KeyFileError("this box has no key file")
    path = box.path
    pending = _next(path)
    found = _survey(store, path)
    if found.missing:
        raise _refuse(found, path)
    if pending in found.used or pending.with_name(pending.name + ".tmp") in found.used:
        raise KeyRecoveryError(f"{pending} opens stored data keys: restart the validator to "
                               "finish the interrupted rotation first")
    master = new_data_key()[1]
    write_key_atomically(pending, master, step="master")
    crash_point("master:next-written")
    old = box.master
    count = store.rewrap_data_keys(
        lambda kid, wrapped: wrap(master, kid, unwrap(old, kid, wrapped)),
        [AuditEvent(now, "rotate_key", "ok", "master_key")],
        lambda: crash_point("master:rewrapped"))
    box.set_master(master)
    crash_point("master:committed")
    pending.replace(path)
    crash_point("master:swapped")
    fsync_dir(path.parent)
    crash_point("master:done")
    return count


@dataclass(frozen=True, slots=True)
class CheckResult:
    """How many sealed secrets opened, per table, and the first few that did not."""

    opened: dict[str, int]
    failed: dict[str, int]
    examples: list[str]
    data_keys: int

    @property
    def total_opened(self) -> int:
        return sum(self.opened.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def ok(self) -> bool:
        return self.total_failed == 0


def check(store: KeyStore, box: SecretBox, *, sample: int | None = None) -> CheckResult:
    """Open every sealed secret (or up to `sample` per table, spread over it)."""
    opened: dict[str, int] = {}
    failed: dict[str, int] = {}
    examples: list[str] = []
    for table, aad, sealed in store.sealed_rows(sample):
        opened.setdefault(table, 0)
        failed.setdefault(table, 0)
        try:
            box.open(aad, sealed)
            opened[table] += 1
        except SealError as exc:
            failed[table] += 1
            if len(examples) < 5:
                examples.append(f"{table}: {exc}")
    return CheckResult(opened, failed, examples, len(store.data_keys()))


def spot_check(store: KeyStore, box: SecretBox, sample: int = 32) -> str | None:
    """None when a sample of the secrets opens; else why not (for /healthz)."""
    try:
        result = check(store, box, sample=sample)
    except Exception as exc:  # noqa: BLE001 - what health reports is any failure
        return f"the sealed secrets cannot be read: {type(exc).__name__}"
    if result.ok:
        return None
    return (f"{result.total_failed} of {result.total_failed + result.total_opened} sampled "
            f"sealed secrets do not open under the key file's key")


"""The validator service: the store, the pure core and the seed box combined.

Every method takes `now` (float Unix seconds); only here does it default to `time.time()`.
Every write goes through the store's compare-and-set, so concurrent calls from a thread
pool never lose an update and an accepted code is accepted once. Every import, enable,
verify, resync, deactivate, unlock, delete and key rotation is audited (never a code or a
secret). Refusals of enable/resync and administrative errors are exceptions from
`validator.errors`; `verify` answers with a `VerifyResult` instead, since a refused code is
an ordinary outcome.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from protocol import DEFAULT_PERIOD, Hash, Kind
from validator import core, keys, rules
from validator.core import DEFAULT_POLICY, Decision, Policy, Reason, TokenState
from validator.drift import Drift
from validator.errors import (
    AlreadyAssigned,
    BadSecret,
    Conflict,
    DeleteConflict,
    DeviceLimit,
    DuplicateSerial,
    InvalidAuthenticationCode,
    InvalidParameter,
    InvalidUser,
    NotAssigned,
    SeedFileError,
    UnknownSerial,
    ValidatorError,
)
from validator.importers import (
    DEFAULT_LIMITS,
    ImportLimits,
    Progress,
    SeedRecord,
    Skipped,
    SkipReason,
    parse_csv,
    parse_pskc,
)
from validator.logs import REQUEST_ID
from validator.retention import Retention
from validator.secrets_box import SecretBox, UnknownDataKey
from validator.store import (
    AuditEntry,
    AuditEvent,
    Cas,
    Durability,
    StaleDataKey,
    StateChange,
    Store,
    StoreUnavailable,
    TokenRecord,
    is_url,
    open_store,
)

__all__ = [
    "AlreadyAssigned", "AuditEntry", "Conflict", "DeleteConflict", "DeviceLimit",
    "DuplicateSerial",
    "ImportResult", "InvalidAuthenticationCode", "InvalidParameter", "InvalidUser",
    "NotAssigned", "SeedFileError", "TokenInfo", "UnknownSerial", "Validator",
    "ValidatorError", "VerifyResult",
]

_MAX_ATTEMPTS = 64
# Every TOTP step and HOTP counter must stay inside RFC 4226's 8-byte counter, whatever a
# seed file says: one that does not fit cannot be packed, and verify would fail with an
# error instead of refusing a code. Half the range leaves the look-ahead and resync room.
MAX_COUNTER = 2**63  # the largest HOTP counter accepted, by import or API
_MAX_SECONDS = 2**40  # |T0| and |initial drift|: some 35,000 years (the API's T0 bound)
# One secret rule for every way in (API, seed files, AWS virtual devices, the station): RFC
# 4226 §4 requires 128 bits; a legacy fleet's 80-bit seeds need `min_secret_bytes = 10`.
MIN_SECRET_BYTES = 16
LOWEST_MIN_SECRET_BYTES = 10
MAX_SECRET_BYTES = 128
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's metadata and state as the API shows it. Never holds the secret."""

    serial: str
    kind: Kind
    hash: Hash
    digits: int
    period: int
    t0: int
    user: str | None
    assigned_at: float | None
    created: float
    watermark: int | None
    failures: int
    locked_until: float
    window: int | None
    offset_seconds: float  # believed token-clock offset at the time of the query (TOTP)
    rate_ppm: float  # believed clock rate error (TOTP)
    expires: float | None = None  # from the seed file's key policy; refused after it


def _accepted(t: float, serial: str, user: str, via: str | None, client: str | None,
              window: int, request_id: str | None) -> AuditEvent:
    """The audit row of an accepted code."""
    return AuditEvent(t, "verify", "ok", Reason.ACCEPTED, serial, user, via, client, window,
                      request_id)


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """One verification of `verify_many`: `verify`'s arguments."""

    user: str
    code: str
    serial: str | None = None
    via: str | None = None
    client: str | None = None
    request_id: str | None = None
    """The request's id (validator.logs) for its audit rows: a batch runs in one context,
    so each request names its own."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    accepted: bool
    reason: Reason
    serial: str | None = None
    retry_after: float = 0.0
    # A refused code was a near miss on this token (see `core.Decision.near_miss`): the
    # RADIUS door challenges for the next code. The HTTP and AWS doors never show it.
    near_miss: str | None = None
    window: int | None = None
    """The guessing surface: how many steps or counters a code would have been accepted
    at, over the devices checked (None: no device was)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import wrote (or, `dry_run`, would write) and every key it left out."""

    imported: list[str]
    skipped: list[Skipped]
    dry_run: bool = False


def _info(record: TokenRecord, now: float) -> TokenInfo:
    s = record.state
    return TokenInfo(
        serial=record.serial, kind=s.kind, hash=s.hash, digits=s.digits,
        period=s.period, t0=s.t0, user=record.user, assigned_at=record.assigned_at,
        created=record.created, watermark=s.watermark, failures=s.failures,
        locked_until=s.locked_until, window=s.window,
        offset_seconds=s.drift.predict(now) if s.kind is Kind.TOTP else 0.0,
        rate_ppm=s.drift.rate() * 1e6 if s.kind is Kind.TOTP else 0.0,
        expires=s.expires,
    )


def _committed(record: TokenRecord, state: TokenState) -> TokenRecord:
    """`record` as its compare-and-set to `state` just committed it (no need to read it
    back: the CAS wrote exactly this)."""
    return replace(record, state=state, version=record.version + 1)


class Validator:
    """The validator's operations. Thread-safe when its store is (SQLiteStore is)."""

    def __init__(self, store: Store, box: SecretBox, policy: Policy = DEFAULT_POLICY, *,
                 max_user_length: int = 64, min_secret_bytes: int = MIN_SECRET_BYTES,
                 import_limits: ImportLimits = DEFAULT_LIMITS,
                 clock: Callable[[], float] = time.time) -> None:
        if not LOWEST_MIN_SECRET_BYTES <= min_secret_bytes <= MAX_SECRET_BYTES:
            raise ValueError(f"min_secret_bytes must be {LOWEST_MIN_SECRET_BYTES} to "
                             f"{MAX_SECRET_BYTES}")
        self.store = store
        self.box = box
        self.policy = policy
        self.max_user_length = max_user_length
        self.min_secret_bytes = min_secret_bytes
        self.import_limits = import_limits
        self._clock = clock
        # Held from sealing a new secret until its row is committed, and across a whole key
        # rotation: otherwise a secret sealed under the old key just before a rotation, and
        # inserted just after it, would stay under a key the rotation then deletes.
        self.sealing = threading.RLock()
        self.key_problem: str | None = None  # set by check_keys

    @classmethod
    def open(cls, db_path: str | os.PathLike[str], key_path: str | os.PathLike[str] | None = None,
             *, policy: Policy = DEFAULT_POLICY,
             durability: Durability = Durability.NORMAL, max_user_length: int = 64,
             min_secret_bytes: int = MIN_SECRET_BYTES,
             import_limits: ImportLimits = DEFAULT_LIMITS,
             create_key: bool = True,
             clock: Callable[[], float] = time.time) -> Validator:
        """A validator on the SQLite file `db_path` (or the PostgreSQL database a
        `postgresql://` URL names), its master key at `key_path` (default: `<db_path>.key`
        for a file, required for a URL; created 0600 on first use unless not
        `create_key`). Whatever an interrupted key rotation left is settled first
        (`validator.keys.open_box`)."""
        if key_path is None and is_url(db_path):
            raise ValueError("a PostgreSQL validator needs its key file named")
        key_file = Path(key_path) if key_path is not None else Path(f"{os.fspath(db_path)}.key")
        store = open_store(db_path, durability=durability)
        try:
            box = keys.open_box(store, key_file, settle=True, create=create_key)
            return cls(store, box, policy, max_user_length=max_user_length,
                       min_secret_bytes=min_secret_bytes, import_limits=import_limits,
                       clock=clock)
        except BaseException:  # a bad key file or setting: nothing left open
            store.close()
            raise

    def view(self, **changes: Any) -> Validator:
        """A validator over the same store, box and settings with some changed (a door
        with its own user-name limit): cheap, no I/O. It shares the sealing lock, so a key
        rotation also waits for secrets sealed through it."""
        args: dict[str, Any] = {"max_user_length": self.max_user_length,
                                "min_secret_bytes": self.min_secret_bytes,
                                "import_limits": self.import_limits, "clock": self._clock}
        args.update(changes)
        view = Validator(self.store, self.box, self.policy, **args)
        view.sealing = self.sealing
        return view

    def close(self) -> None:
        self.store.close()

    def __repr__(self) -> str:
        return f"Validator({self.store!r}, {self.box!r})"

    # -- helpers -------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else float(now)

    def _check_user(self, user: str) -> None:
        if not rules.USER.matches(user, self.max_user_length):
            raise InvalidUser(rules.USER.describe("user names", self.max_user_length))

    def _record(self, serial: str) -> TokenRecord:
        record = self.store.get(serial)
        if record is None:
            raise UnknownSerial(f"no token with serial {serial!r}")
        return record

    def _retry(self, attempt: Callable[[], T | None]) -> T:
        for _ in range(_MAX_ATTEMPTS):
            result = attempt()
            if result is not None:
                return result
        raise Conflict("too many concurrent changes to the same token; try again")

    # -- registry --------------------------------------------------------------------------

    def register_token(self, serial: str, secret: bytes, *, kind: Kind | str = Kind.TOTP,
                       digits: int = 6, hash: Hash | str = Hash.SHA1,
                       period: int = DEFAULT_PERIOD,
                       t0: int = 0, counter: int = 0, drift_steps: int = 0,
                       window: int | None = None, now: float | None = None) -> TokenInfo:
        """Register one token with the given secret (from a seed file, or generated by the
        caller, as AWS CreateVirtualMFADevice does)."""
        try:
            kind = Kind.from_label(kind)
        except ValueError:
            raise InvalidParameter(f"kind must be {Kind.choices()}") from None
        try:
            hash = Hash.from_label(hash)
        except ValueError:
            raise InvalidParameter(f"{serial}: hash must be one of {Hash.labels()}") from None
        record = SeedRecord(serial=serial, secret=bytes(secret), kind=kind,
                            hash=hash, digits=digits, period=period, t0=t0,
                            counter=counter, drift_steps=drift_steps)
        t = self._now(now)
        self._insert([record], t, skip_duplicates=False, action="register", window=window)
        return _info(self._record(serial), t)

    def _state(self, r: SeedRecord, window: int | None) -> TokenState:
        if not rules.SERIAL.matches(r.serial):
            raise InvalidParameter(f"serial {r.serial[:40]!r} must be "
                                   f"{rules.SERIAL.requirement()}")
        if not self.min_secret_bytes <= len(r.secret) <= MAX_SECRET_BYTES:
            raise BadSecret(
                f"{r.serial}: the secret is {len(r.secret)} bytes; {self.min_secret_bytes} to "
                f"{MAX_SECRET_BYTES} are required (RFC 4226 asks for at least 16; "
                f"min_secret_bytes may lower this to {LOWEST_MIN_SECRET_BYTES} for a legacy "
                "fleet)")
        if not 0 <= r.counter <= MAX_COUNTER:
            raise InvalidParameter(f"{r.serial}: the counter must be 0 to 2**63")
        drift = r.drift_steps * r.period
        if abs(r.t0) > _MAX_SECONDS or abs(drift) > _MAX_SECONDS:
            raise InvalidParameter(f"{r.serial}: T0 and the time drift must be within 2**40 "
                                   "seconds")
        try:
            return TokenState(
                kind=r.kind, digits=r.digits, hash=r.hash, period=r.period,
                t0=r.t0, window=window,
                watermark=(r.counter - 1 if r.kind is Kind.HOTP and r.counter > 0 else None),
                drift=Drift(offset=float(drift)), expires=r.expires)
        except ValueError as exc:
            raise InvalidParameter(f"{r.serial}: {exc}") from None

    def _insert(self, records: list[SeedRecord], now: float, *, skip_duplicates: bool,
                action: str, window: int | None = None) -> list[str]:
        """Seal and insert `records` (unique serials) in one transaction."""
        audit = [AuditEvent(now, action, "ok", serial=r.serial) for r in records]
        with self.sealing:
            for attempt in range(3):
                rows = [TokenRecord(serial=r.serial, state=self._state(r, window),
                                    sealed=self.box.seal(r.serial, r.secret), created=now)
                        for r in records]
                try:
                    return self.store.insert_tokens(rows, audit, skip_existing=skip_duplicates)
                except StaleDataKey:
                    if attempt == 2:
                        raise
                    # another process rotated the data key: seal under its new one
                    keys.follow_current(self.store, self.box)
            raise AssertionError("unreachable")

    def import_seed_file(self, content: bytes | str, format: str = "pskc", *,
                         passphrase: str | None = None, key_hex: str | None = None,
                         skip_duplicates: bool = False, dry_run: bool = False,
                         progress: Progress | None = None, now: float | None = None
                         ) -> ImportResult:
        """Import every usable token of a PSKC or CSV file in one transaction, and report
        every key left out (`Skipped`: a PIN key, another algorithm, a key policy that
        forbids it, no secret; with `skip_duplicates`, serials repeated in the file or
        already registered). An error in a usable key, or a duplicate serial without
        `skip_duplicates`, imports nothing. `dry_run`: everything is read, decrypted and
        checked, and nothing is written (not even the audit)."""
        t = self._now(now)
        fmt = format.lower()
        try:
            if fmt == "pskc":
                parsed = parse_pskc(content, passphrase=passphrase, key_hex=key_hex, now=t,
                                    limits=self.import_limits, progress=progress)
            elif fmt == "csv":
                parsed = parse_csv(content, limits=self.import_limits, progress=progress)
            else:
                raise InvalidParameter("format must be pskc or csv")
            for r in parsed.records:
                self._state(r, None)  # validate every key before writing any
        except (SeedFileError, InvalidParameter) as exc:
            if not dry_run:
                self.store.add_audit([AuditEvent(t, "import", "refused", reason=exc.code)])
            if isinstance(exc, InvalidParameter):
                raise SeedFileError(exc.message) from None
            raise
        seen: set[str] = set()
        unique: list[SeedRecord] = []
        skipped: list[Skipped] = []
        repeated: list[str] = []
        for r in parsed.records:
            if r.serial in seen:
                repeated.append(r.serial)
                skipped.append(Skipped(r.serial, SkipReason.DUPLICATE_IN_FILE,
                                       "the serial appears more than once in the file; "
                                       "the first is imported"))
            else:
                seen.add(r.serial)
                unique.append(r)
        try:
            if repeated and not skip_duplicates:
                raise DuplicateSerial(sorted(set(repeated)), in_file=True)
            if dry_run:
                existing = [r.serial for r in unique if self.store.get(r.serial) is not None]
                if existing and not skip_duplicates:
                    raise DuplicateSerial(existing)
                taken = set(existing)
                imported = [r.serial for r in unique if r.serial not in taken]
            else:
                imported = self._insert(unique, t, skip_duplicates=skip_duplicates,
                                        action="import")
        except DuplicateSerial as exc:
            if not dry_run:
                self.store.add_audit([AuditEvent(t, "import", "refused", reason=exc.code)])
            raise
        inserted = set(imported)  # once: in the comprehension it would be rebuilt per record
        left_out = [Skipped(r.serial, SkipReason.ALREADY_REGISTERED,
                            "a token with this serial is registered already")
                    for r in unique if r.serial not in inserted]
        return ImportResult(imported, parsed.skipped + skipped + left_out, dry_run)

    def list_tokens(self, *, user: str | None = None, kind: str | None = None,
                    assigned: bool | None = None, limit: int = 100, offset: int = 0,
                    now: float | None = None) -> list[TokenInfo]:
        t = self._now(now)
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidParameter("limit must be 1-1000 and offset >= 0")
        return [_info(r, t) for r in self.store.list_tokens(
            user=user, kind=kind, assigned=assigned, limit=limit, offset=offset)]

    def count_tokens(self, *, user: str | None = None, kind: str | None = None,
                     assigned: bool | None = None) -> int:
        """How many tokens `list_tokens` pages through (for "showing N of TOTAL")."""
        return self.store.count_tokens(user=user, kind=kind, assigned=assigned)

    def gauges(self, now: float | None = None) -> dict[str, int]:
        """For /metrics: `tokens`, `devices_enabled` (assigned to a user) and
        `tokens_locked` (locked after failed codes at `now`), in one read of the store."""
        return self.store.token_gauges(self._now(now))

    def get_token(self, serial: str, now: float | None = None) -> TokenInfo:
        return _info(self._record(serial), self._now(now))

    def find_tokens(self, text: str, *, assigned: bool | None = None, limit: int = 100,
                    offset: int = 0, now: float | None = None,
                    scan_limit: int = 100_000) -> list[TokenInfo]:
        """Tokens whose serial or user contains `text` (case-insensitive), in serial order,
        paginated; a scan of at most `scan_limit` tokens (a search box, not an index)."""
        t = self._now(now)
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidParameter("limit must be 1-1000 and offset >= 0")
        needle = text.lower()
        found: list[TokenInfo] = []
        for start in range(0, scan_limit, 1000):
            page = self.store.list_tokens(assigned=assigned, limit=1000, offset=start)
            for r in page:
                if needle in r.serial.lower() or (r.user and needle in r.user.lower()):
                    found.append(_info(r, t))
                    if len(found) >= offset + limit:
                        return found[offset:]
            if len(page) < 1000:
                break
        return found[offset:]

    def users(self, *, scan_limit: int = 100_000) -> dict[str, int]:
        """Every user holding a device, with how many (users are implicit: a user exists
        while it holds a device)."""
        counts: dict[str, int] = {}
        for start in range(0, scan_limit, 1000):
            page = self.store.list_tokens(assigned=True, limit=1000, offset=start)
            for r in page:
                if r.user is not None:
                    counts[r.user] = counts.get(r.user, 0) + 1
            if len(page) < 1000:
                break
        return dict(sorted(counts.items()))

    def offset_history(self, serial: str) -> list[tuple[float, float, float]]:
        """The drift tracker's kept observations of a TOTP token, oldest first: (true time,
        lowest, highest offset in seconds the accepted code allowed). Empty for HOTP."""
        record = self._record(serial)
        if record.state.kind is not Kind.TOTP:
            return []
        return [(float(t), float(lo), float(hi)) for t, lo, hi in record.state.drift.history]

    def create_virtual(self, serial: str, now: float | None = None,
                       seed_bytes: int = Hash.SHA1.seed_bytes) -> tuple[TokenInfo, bytes]:
        """Register a virtual MFA device (an authenticator app's TOTP: SHA-1, 6 digits,
        30 s) under a new random seed; returns it with the seed, which the caller shows
        once and forgets."""
        seed = secrets.token_bytes(seed_bytes)
        info = self.register_token(serial, seed, kind=Kind.TOTP, digits=6, hash=Hash.SHA1,
                                   period=DEFAULT_PERIOD, now=now)
        return info, seed

    def delete_token(self, serial: str, now: float | None = None) -> None:
        """Delete an unassigned token (deactivate it first)."""
        t = self._now(now)

        def attempt() -> bool | None:
            record = self._record(serial)
            if record.user is not None:
                raise DeleteConflict(f"token {serial!r} is assigned; deactivate it first")
            audit = [AuditEvent(t, "delete", "ok", serial=serial)]
            return True if self.store.delete(serial, record.version, audit) is Cas.OK else None

        self._retry(attempt)

    # -- enablement ------------------------------------------------------------------------

    def enable(self, user: str, serial: str, code1: str, code2: str,
               now: float | None = None) -> TokenInfo:
        """Assign an unassigned token to `user`, proven by two consecutive codes."""
        self._check_user(user)

        def admit(record: TokenRecord) -> None:
            if record.user is not None:
                raise AlreadyAssigned(f"token {serial!r} is already assigned")
            if len(self.store.tokens_of(user)) >= self.policy.max_devices:
                raise self._device_limit(user)

        return self._prove("enable", core.check_enable, admit, user, serial, code1, code2,
                           self._now(now), assign=True)

    def _device_limit(self, user: str) -> DeviceLimit:
        return DeviceLimit(f"user {user!r} already has {self.policy.max_devices} devices")

    def _prove(self, action: str, decide: Callable[..., Decision],
               admit: Callable[[TokenRecord], None], user: str, serial: str, code1: str,
               code2: str, now: float, *, assign: bool = False, via: str | None = None,
               client: str | None = None) -> TokenInfo:
        """Enable's and resync's attempt: read the token, let `admit` refuse it, let the
        core `decide` on the code pair, then commit by compare-and-set either the refusal's
        failure count (and raise) or the new state, assigned to `user` when `assign`.
        A lost race decides again."""

        def attempt() -> TokenInfo | None:
            record = self._record(serial)
            admit(record)
            try:
                key = self.box.open(serial, record.sealed)
            except UnknownDataKey:  # resealed by a rotation elsewhere since it was read
                return None
            decision = decide(record.state, key, code1, code2, now, self.policy)
            if not decision.accepted:
                self._refuse(action, record, user, decision, now, via, client)
                return None
            audit = [AuditEvent(now, action, "ok", Reason.ACCEPTED, serial, user, via, client)]
            if assign:
                cas = self.store.compare_and_set(serial, record.version, decision.state,
                                                 user=user, assigned_at=now,
                                                 max_devices=self.policy.max_devices,
                                                 audit=audit)
                record = replace(record, user=user, assigned_at=now)
            else:
                cas = self.store.compare_and_set(serial, record.version, decision.state,
                                                 audit=audit)
            if cas is Cas.DEVICE_LIMIT:
                raise self._device_limit(user)
            if cas is Cas.CONFLICT:
                return None
            return _info(_committed(record, decision.state), now)

        return self._retry(attempt)

    def _refuse(self, action: str, record: TokenRecord, user: str, decision: Decision,
                now: float, via: str | None = None, client: str | None = None) -> None:
        """Commit a refused enable/resync's failure count, then raise; returning means the
        commit lost a race and the caller must decide again."""
        audit = [AuditEvent(now, action, "refused", decision.reason, record.serial, user,
                            via, client)]
        if decision.state is record.state:
            self.store.add_audit(audit)
        elif self.store.compare_and_set(record.serial, record.version, decision.state,
                                        audit=audit) is Cas.CONFLICT:
            return
        raise InvalidAuthenticationCode(
            f"the codes were refused: {decision.reason.value}", decision.reason.value,
            decision.retry_after)

    def deactivate(self, user: str, serial: str, now: float | None = None) -> None:
        """Unassign the token from `user`. Its watermark stays: old codes stay dead."""
        self._check_user(user)
        t = self._now(now)

        def attempt() -> bool | None:
            record = self._record(serial)
            if record.user != user:
                raise NotAssigned(f"token {serial!r} is not assigned to {user!r}")
            audit = [AuditEvent(t, "deactivate", "ok", serial=serial, user=user)]
            cas = self.store.compare_and_set(serial, record.version, record.state, user=None,
                                             audit=audit)
            return True if cas is Cas.OK else None

        self._retry(attempt)

    def list_devices(self, user: str, now: float | None = None) -> list[TokenInfo]:
        self._check_user(user)
        t = self._now(now)
        return [_info(r, t) for r in self.store.tokens_of(user)]

    # -- verification ----------------------------------------------------------------------

    def verify(self, user: str, code: str, now: float | None = None,
               serial: str | None = None, *, via: str | None = None,
               client: str | None = None) -> VerifyResult:
        """Check `code` against the user's devices (or the one named by `serial`). An
        accepted code's new state is committed before this returns. `via` and `client`
        name the door and its client in the audit row (None: the HTTP API)."""
        self._check_user(user)
        with self.store.pinned():  # its read and write on one connection
            return self._verify(user, code if isinstance(code, str) else "",
                                self._now(now), serial, via, client)

    def _verify(self, user: str, code: str, t: float, serial: str | None,
                via: str | None, client: str | None) -> VerifyResult:
        for _ in range(_MAX_ATTEMPTS):
            records = self.store.tokens_of(user)
            if serial is not None:
                records = [r for r in records if r.serial == serial]
                if not records:
                    return self._answer(user, serial, Reason.NOT_ENABLED, t, via=via,
                                        client=client)
            if not records:
                return self._answer(user, None, Reason.NO_DEVICE, t, via=via, client=client)
            try:
                decisions, window, winner = self._decide(records, code, t)
            except UnknownDataKey:  # resealed by a rotation elsewhere since it was read
                continue
            if winner is not None:
                record, decision = winner
                audit = [_accepted(t, record.serial, user, via, client, window,
                                   REQUEST_ID.get())]
                if self.store.compare_and_set(record.serial, record.version, decision.state,
                                              audit=audit) is Cas.OK:
                    return VerifyResult(True, Reason.ACCEPTED, record.serial, 0.0, None,
                                        window)
                continue
            if not self._commit_failures(decisions):
                continue
            reasons = {d.reason for _, d in decisions}
            one = records[0].serial if len(records) == 1 else serial
            if Reason.REPLAYED in reasons:
                return self._answer(user, one, Reason.REPLAYED, t, via=via, client=client,
                                    window=window)
            if Reason.INVALID_CODE in reasons:
                near = next((r.serial for r, d in decisions if d.near_miss is not None), None)
                return self._answer(user, one, Reason.INVALID_CODE, t, via=via,
                                    client=client, near_miss=near, window=window)
            if reasons == {Reason.EXPIRED}:
                return self._answer(user, one, Reason.EXPIRED, t, via=via, client=client,
                                    window=window)
            wait = min(d.retry_after for _, d in decisions if d.reason is Reason.LOCKED)
            return self._answer(user, one, Reason.LOCKED, t, wait, via=via, client=client,
                                window=window)
        raise Conflict("too many concurrent changes to the same token; try again")

    def verify_many(self, requests: Sequence[VerifyRequest], now: float | None = None
                    ) -> list[VerifyResult | Exception]:
        """`verify` of each request, each answer (or the exception `verify` would raise) in
        its place, with the same outcome as calling `verify` for each in turn. The common
        case shares its round trips: one read of every user's devices and one write of
        every accepted code (`Store.set_states`). Anything else (a refusal, a lost race, a
        second request for a user already in the batch, a seed resealed meanwhile) is
        decided again by `verify` alone, after that write. A store error in the shared read
        or write is raised for all."""
        t = self._now(now)
        if len(requests) == 1:  # nothing to share: verify's own statements are cheaper
            return [self._verify_alone(requests[0], t)]
        with self.store.pinned():  # the batch's calls on one connection
            return self._verify_many(requests, t)

    def _verify_many(self, requests: Sequence[VerifyRequest], t: float
                     ) -> list[VerifyResult | Exception]:
        results: list[VerifyResult | Exception | None] = [None] * len(requests)
        shared: list[int] = []
        users: set[str] = set()
        for i, r in enumerate(requests):
            try:
                self._check_user(r.user)
            except Exception as exc:  # noqa: BLE001 - handed back in its place
                results[i] = exc
                continue
            if r.user not in users:
                users.add(r.user)
                shared.append(i)
        devices = self.store.tokens_of_many([requests[i].user for i in shared])
        wins: list[tuple[int, StateChange, int]] = []
        for i in shared:
            r = requests[i]
            records = [d for d in devices[r.user] if r.serial in (None, d.serial)]
            try:
                _, window, winner = self._decide(
                    records, r.code if isinstance(r.code, str) else "", t)
            except UnknownDataKey:
                continue
            if winner is None:
                continue
            record, decision = winner
            wins.append((i, StateChange(record.serial, record.version, decision.state, [
                _accepted(t, record.serial, r.user, r.via, r.client, window, r.request_id)]),
                window))
        for (i, change, window), cas in zip(
                wins, self.store.set_states([c for _, c, _ in wins]), strict=True):
            if cas is Cas.OK:
                results[i] = VerifyResult(True, Reason.ACCEPTED, change.serial, 0.0, None,
                                          window)
        return [self._verify_alone(r, t) if result is None else result
                for r, result in zip(requests, results, strict=True)]

    def _verify_alone(self, r: VerifyRequest, t: float) -> VerifyResult | Exception:
        """`verify` of one request of `verify_many` (under its request id): its answer, or
        the exception it raised."""
        token = None if r.request_id is None else REQUEST_ID.set(r.request_id)
        try:
            return self.verify(r.user, r.code, t, r.serial, via=r.via, client=r.client)
        except Exception as exc:  # noqa: BLE001 - handed back in its place
            return exc
        finally:
            if token is not None:
                REQUEST_ID.reset(token)

    def _decide(self, records: list[TokenRecord], code: str, t: float
                ) -> tuple[list[tuple[TokenRecord, Decision]], int,
                           tuple[TokenRecord, Decision] | None]:
        """Each device's decision on `code` at `t`, the window they span together, and the
        first that accepts it (None: none does). UnknownDataKey if a seed was resealed
        since it was read."""
        decisions = [(r, core.verify(r.state, self.box.open(r.serial, r.sealed), code, t,
                                     self.policy)) for r in records]
        return (decisions, sum(d.window for _, d in decisions),
                next(((r, d) for r, d in decisions if d.accepted), None))

    def _commit_failures(self, decisions: list[tuple[TokenRecord, Decision]]) -> bool:
        """Commit every changed (failure-counting) state; False if any lost its CAS, so the
        request must be decided again (states already committed stay: they are correct)."""
        ok = True
        for record, decision in decisions:
            if decision.state is not record.state:
                if self.store.compare_and_set(record.serial, record.version,
                                              decision.state) is Cas.CONFLICT:
                    ok = False
        return ok

    def _answer(self, user: str, serial: str | None, reason: Reason, now: float,
                retry_after: float = 0.0, *, via: str | None = None,
                client: str | None = None, near_miss: str | None = None,
                window: int | None = None) -> VerifyResult:
        self.store.add_audit([AuditEvent(now, "verify", "refused", reason, serial, user, via,
                                         client, window)])
        return VerifyResult(False, reason, serial, retry_after, near_miss, window)

    def resync(self, user: str, serial: str, code1: str, code2: str,
               now: float | None = None, *, via: str | None = None,
               client: str | None = None) -> TokenInfo:
        """Resynchronise the user's token from two consecutive codes (AWS
        ResyncMFADevice, or RADIUS's challenge after a near miss): the drift is reset to
        what the pair shows and the very next code is accepted."""
        self._check_user(user)

        def admit(record: TokenRecord) -> None:
            if record.user != user:
                raise NotAssigned(f"token {serial!r} is not assigned to {user!r}")

        return self._prove("resync", core.resync, admit, user, serial, code1, code2,
                           self._now(now), via=via, client=client)

    def unlock(self, serial: str, now: float | None = None) -> TokenInfo:
        """Clear a token's failure count and lock (an administrator's action)."""
        t = self._now(now)

        def attempt() -> TokenInfo | None:
            record = self._record(serial)
            audit = [AuditEvent(t, "unlock", "ok", serial=serial, user=record.user)]
            state = core.unlock(record.state)
            if self.store.compare_and_set(serial, record.version, state,
                                          audit=audit) is Cas.CONFLICT:
                return None
            return _info(_committed(record, state), t)

        return self._retry(attempt)

    # -- audit and keys --------------------------------------------------------------------

    def audit(self, *, serial: str | None = None, user: str | None = None,
              action: str | None = None, result: str | None = None,
              since: float | None = None, until: float | None = None,
              limit: int = 100, offset: int = 0,
              newest_first: bool = False, request_id: str | None = None) -> list[AuditEntry]:
        """Audit entries, oldest (or newest) first, filtered and paginated (limit 1-1000)."""
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidParameter("limit must be 1-1000 and offset >= 0")
        return self.store.audit(serial=serial, user=user, action=action, result=result,
                                since=since, until=until, limit=limit, offset=offset,
                                newest_first=newest_first, request_id=request_id)

    def audit_export(self, *, since: float | None = None, until: float | None = None,
                     newest_first: bool = False, batch: int = 1000) -> Iterator[list[AuditEntry]]:
        """Every audit entry in [since, until), in batches of up to `batch` (each batch one
        query, so a caller may fetch them from different threads), oldest first (or newest
        first); keyset paging: rows pruned or added meanwhile neither repeat nor shift."""
        after: int | None = None
        while True:
            rows = self.store.audit_after(after, since=since, until=until,
                                          newest_first=newest_first, limit=batch)
            if not rows:
                return
            yield rows
            after = rows[-1].id

    def prune_audit(self, retention: Retention, now: float | None = None) -> int:
        """Enforce `retention` at `now`: delete the entries it no longer keeps; an
        `audit_prune` entry records how many (when any were). Returns that number."""
        t = self._now(now)
        before, keep = retention.limits(t)
        if before is None and keep is None:
            return 0
        deleted = self.store.prune_audit(before=before, keep=keep)
        if deleted:
            self.store.add_audit([AuditEvent(t, "audit_prune", "ok", f"{deleted} deleted")])
        return deleted

    def count_audit(self, *, serial: str | None = None, user: str | None = None,
                    action: str | None = None, result: str | None = None,
                    since: float | None = None, until: float | None = None,
                    request_id: str | None = None) -> int:
        """How many entries `audit` pages through (for "showing N of TOTAL")."""
        return self.store.count_audit(serial=serial, user=user, action=action, result=result,
                                      since=since, until=until, request_id=request_id)

    def rotate_key(self, now: float | None = None, *, master: bool = False) -> int:
        """Rotate a key (see `validator.keys`; crash-safe at every step). By default the
        data key: every stored secret resealed under a new one in one transaction; returns
        how many. `master`: a new master key in the key file, every data key re-wrapped
        under it; returns how many data keys. Either way a sample of the secrets is then
        opened again (`key_problem`)."""
        t = self._now(now)
        with self.sealing:
            try:
                if master:
                    return keys.rotate_master_key(self.store, self.box, t)
                return keys.rotate_data_key(self.store, self.box, t)
            finally:
                self.check_keys()

    def health(self) -> str | None:
        """None when the database can be read now and the last sample of the sealed secrets
        opened; else the reason, safe to show (no secret, no path)."""
        try:
            self.store.check()
        except StoreUnavailable as exc:  # its message names no host and no password
            return f"the database is unavailable: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - any failure of the database is the answer
            return f"the database cannot be read ({type(exc).__name__})"
        return self.key_problem

    def check_keys(self, sample: int = 32) -> str | None:
        """Open a sample of the stored secrets; remember and return why they do not open
        (None: they do). /healthz reports it."""
        self.key_problem = keys.spot_check(self.store, self.box, sample)
        return self.key_problem

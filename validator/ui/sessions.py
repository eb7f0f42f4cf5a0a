"""The console's server-side sessions: pure bookkeeping, the time passed in.

A session is a random id (the cookie's value; only its SHA-256 is kept, so a memory dump
or a log never holds a usable cookie), a role (None before sign-in: the sign-in form needs a
CSRF token too) and a CSRF token. Sessions expire `lifetime` seconds after they were made;
signing in makes a new session (no fixation of an id planted before sign-in).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

MAX_SESSIONS = 10_000  # a flood of anonymous visits cannot grow memory without bound


@dataclass
class Session:
    role: str | None
    csrf: str
    expires: float


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()


class Sessions:
    def __init__(self, lifetime: float) -> None:
        if lifetime <= 0:
            raise ValueError("a session lifetime must be positive")
        self.lifetime = float(lifetime)
        self._by_digest: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def create(self, role: str | None, now: float) -> tuple[str, Session]:
        """A new session: (the cookie value, the session)."""
        if len(self._by_digest) >= MAX_SESSIONS:
            self.sweep(now)
            if len(self._by_digest) >= MAX_SESSIONS:  # drop the soonest to expire
                oldest = min(self._by_digest, key=lambda d: self._by_digest[d].expires)
                del self._by_digest[oldest]
        sid = secrets.token_urlsafe(32)
        session = Session(role, secrets.token_urlsafe(32), now + self.lifetime)
        self._by_digest[_digest(sid)] = session
        return sid, session

    def get(self, sid: str | None, now: float) -> Session | None:
        """The live session of a cookie value; None for none, unknown or expired."""
        if not sid or len(sid) > 128:
            return None
        digest = _digest(sid)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if now >= session.expires:
            del self._by_digest[digest]
            return None
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._by_digest.pop(_digest(sid), None)

    def sweep(self, now: float) -> None:
        for digest in [d for d, s in self._by_digest.items() if now >= s.expires]:
            del self._by_digest[digest]


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    """Constant-time check of a form's CSRF token against its session's."""
    if session is None or not presented:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode("utf-8", "replace"))

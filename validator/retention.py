"""How long the audit log is kept: pure, `now` in, the limits to enforce out.

    Retention(max_age_days=90, max_rows=1_000_000).limits(now)  ->  (before, keep)

`before`: entries written before this Unix time go (None: no age limit); `keep`: only the
newest this many stay (None: no cap). Both may apply; 0 in the config means "no limit".
The daemon enforces them every `audit_prune_seconds` (validator.daemon), through
`Validator.prune_audit`.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Retention:
    max_age_days: float = 0.0  # 0: no age limit
    max_rows: int = 0  # 0: no row cap

    def __post_init__(self) -> None:
        if self.max_age_days < 0 or self.max_rows < 0:
            raise ValueError("max_age_days and max_rows must be >= 0 (0: no limit)")

    @property
    def active(self) -> bool:
        return self.max_age_days > 0 or self.max_rows > 0

    def limits(self, now: float) -> tuple[float | None, int | None]:
        """(before, keep) at `now`."""
        before = now - self.max_age_days * DAY if self.max_age_days > 0 else None
        keep = self.max_rows if self.max_rows > 0 else None
        return before, keep


__all__ = ["DAY", "Retention"]

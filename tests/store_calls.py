"""Counting a validator's store calls (importable by any test, unlike conftest.py)."""

from __future__ import annotations

from typing import Any


def count_calls(validator: Any, *names: str) -> dict[str, int]:
    """Count the calls of `validator.store`'s methods `names` from here on: the returned
    dict goes up as they are called (each still does its work)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(validator.store, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        setattr(validator.store, name, counted)
    return calls

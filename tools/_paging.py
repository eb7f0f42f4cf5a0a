"""Lists that never truncate silently: `--limit N`, `--page K`, `--all`, and the note
"showing 1-100 of 1,100 (--all, --limit N, --page K)" when a list shows part of its items.

Generic over the API's paged lists (`{ITEMS: [...], next_offset, total}`), so every list
command pages and words it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
MAX_PAGE = 1000  # the API's largest page


def page_options(f: F) -> F:
    """Add --limit, --page, --all (and the older --offset) to a list command."""
    f = click.option("--offset", type=click.IntRange(0), default=None, hidden=True,
                     help="Skip this many items (prefer --page).")(f)
    f = click.option("--all", "all_", is_flag=True, help="Every item, page after page.")(f)
    f = click.option("--page", type=click.IntRange(1), default=1, show_default=True,
                     help="Which page of --limit items.")(f)
    f = click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=100,
                     show_default=True, help="Items per page.")(f)
    return f


def fetch(get: Callable[[dict[str, Any]], Any], items_key: str, *, limit: int, page: int,
          all_: bool, offset: int | None) -> dict[str, Any]:
    """Call `get(params)` for one page, or for every page with `all_`; return the API's
    document with `items_key` holding everything fetched (and `offset` where it began)."""
    start = offset if offset is not None else (page - 1) * limit
    if not all_:
        doc = dict(get({"limit": limit, "offset": start}))
        return doc
    items: list[Any] = []
    next_offset: int | None = 0
    doc = {}
    while next_offset is not None:
        doc = dict(get({"limit": MAX_PAGE, "offset": next_offset}))
        items.extend(doc[items_key])
        next_offset = doc.get("next_offset")
        if not doc[items_key]:
            break
    doc.update({items_key: items, "offset": 0, "limit": len(items), "next_offset": None})
    return doc


def note(doc: dict[str, Any], items_key: str) -> str | None:
    """"showing 1-100 of 1,100 (--all, --limit N, --page K)" when the list is partial."""
    shown = len(doc[items_key])
    total = doc.get("total")
    start = int(doc.get("offset") or 0)
    if total is None or (start == 0 and shown >= total):
        return None
    if shown == 0:
        return f"nothing on this page: {total:,} in all (--page K, --limit N)"
    return (f"showing {start + 1:,}-{start + shown:,} of {total:,} "
            "(--all, --limit N, --page K)")


def echo_note(doc: dict[str, Any], items_key: str) -> None:
    """Print the note on stderr, so stdout stays the table alone."""
    text = note(doc, items_key)
    if text:
        click.echo(text, err=True)

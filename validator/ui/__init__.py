"""The web console, a door of the daemon at /ui/ (see `validator.ui.console`).

`mount()` is the application's one hook: a Starlette `Mount`, or None (with a warning) when
Jinja2, the `ui` extra, is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.routing import Mount

from validator.service import Validator

log = logging.getLogger("foblab.validator")


def mount(validator: Validator, keys: Any, settings: Any, *,
          stations: Mapping[str, Any] | None = None, aws: Any | None = None) -> Mount | None:
    """The console at /ui for `settings` (a `validator.config.Settings`)."""
    try:
        from validator.ui.console import Console
    except ModuleNotFoundError as exc:
        if exc.name != "jinja2":
            raise
        log.warning("the web console is off: install foblab[ui] (Jinja2) to serve /ui/")
        return None
    console = Console(validator, keys, stations=stations, aws=aws,
                      session_seconds=settings.ui_session_seconds,
                      max_body_bytes=settings.max_body_bytes,
                      max_import_bytes=settings.max_import_bytes)
    return Mount("/ui", app=console.app(), name="ui")

"""The roles matrix: every operation of the API's own table (`validator.http.operations`,
from which the routes and /openapi.json are made) called with every kind of key: none, a
wrong one, the verifier's and the admin's. Generated, so a route added later is covered,
and a role loosened on one route (say the verifier let into GET /v1/tokens/{serial}) fails
here."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import Daemon, init_dir, start  # noqa: E402

from validator.apikeys import Role  # noqa: E402
from validator.http.operations import operations  # noqa: E402

OPS = operations()
KEYS = ("none", "wrong", "verifier", "admin")
FILL = {"serial": "ROLES-NOPE-1", "user": "roles-nobody", "name": "nowhere"}


def _path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: FILL[m.group(1)], template)


@pytest.fixture(scope="module")
def own_daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon of its own: the admin column really rotates the seed key."""
    directory = tmp_path_factory.mktemp("roles") / "home"
    init_dir(directory, station_timeout=0.5)
    d = start(directory, "--station", "nowhere=/nonexistent/ttyUSB9")
    yield d
    d.stop()


def test_the_matrix_covers_every_published_operation(own_daemon: Daemon) -> None:
    doc = httpx.get(own_daemon.url + "/openapi.json", timeout=10).json()
    published = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert published == {(op.doc.method, op.doc.path) for op in OPS}
    assert len(OPS) >= 18


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("op", OPS, ids=[f"{o.doc.method} {o.doc.path}" for o in OPS])
def test_roles_matrix(own_daemon: Daemon, op: Any, key: str) -> None:
    d = own_daemon
    token = {"none": None, "wrong": "fob_admin_" + "x" * 40, "verifier": d.verifier,
             "admin": d.admin}[key]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kw: dict[str, Any] = {"json": {}} if op.doc.body else {}
    r = httpx.request(op.doc.method, d.url + _path(op.doc.path), headers=headers,
                      timeout=30, **kw)
    roles = set(op.doc.roles)
    if not roles:  # open to anyone: health, metrics
        assert r.status_code == 200, r.text
    elif key in ("none", "wrong"):
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        assert r.headers["www-authenticate"] == "Bearer"
    elif Role(key) not in roles:
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    else:  # let in: whatever the answer, it is not about the key
        assert r.status_code not in (401, 403), r.text
        assert r.status_code < 500 or r.status_code in op.doc.errors, r.text

"""Instructions per HTTP verification, counted by valgrind (callgrind), for several source
trees: a measure a shared, noisy machine does not move, unlike time.

Each tree prepares its own 10,000-token folder (bench.side_by_side), then runs its whole
ASGI application (`create_app`: middleware, routing, decoding, service, SQLite commit, one
access-log line to /dev/null) in process, no sockets, on fresh valid TOTP codes, under
`valgrind --tool=callgrind`, twice: with FEW and with MANY requests. The difference of the
two totals divided by the difference in requests is the cost of one verification, start-up
and imports cancelled out. uvicorn's HTTP parsing is left out (the same library in every
tree).

With `--pg` first, the same on PostgreSQL: each run's folder is copied into a fresh
database of a server started here (tests/pg.py), so a verification goes through the
HTTP door's batcher, its hop to a thread and psycopg (the client's instructions: the
server is another process, not counted).

With `--core` first, the pure core instead: `core.verify` of one TOTP token's current codes,
one every 37 s with the state carried (bench.bench_validator_core's loop), no HTTP, no
database.

With `--code CODE FEW MANY` first, any other benchmark's unit of work: CODE is Python run in
each tree with `N` bound to FEW, then to MANY; the cost of one unit is the difference over
MANY - FEW. For example the protocol's round trip, `bench.bench_protocol.round_trips`:

    --code "from bench.bench_protocol import round_trips; round_trips(N)" 200 2200

Usage: python -m bench.instructions [--core | --pg] old=/path/to/old/tree new=/path/to/new/tree
       (not part of `make bench`: needs valgrind, and takes minutes)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import bench_daemon as B
from bench.side_by_side import _prepared

FEW, MANY = 100, 1100

# Run in the tree's own interpreter path: argv = home, count, first user.
_WORKER = r"""
import asyncio, json, os, sys
from pathlib import Path
home, count, first = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, os.getcwd())
devnull = open(os.devnull, "w")
try:
    from validator.logs import configure
    configure("json", "info", devnull)
except ImportError:  # trees before validator/logs.py
    import validator.daemon as d
    sys.stderr = devnull
    d._configure_logging("info")
from validator.apikeys import KeyRing, Role
from validator.app import create_app
from validator.config import load
from validator.daemon import open_validator
settings = load(home / "foblab.toml")
v = open_validator(settings)
keys = KeyRing.from_files({Role.ADMIN: settings.admin_key_file,
                           Role.VERIFIER: settings.verifier_key_file})
app = create_app(v, keys, settings, aws=None)
key = (home / "verifier.key").read_text().strip()
import hmac, time
SECRET = SECRET_FORMAT.encode()

def body(i):
    # The token's code of the step current as the request is made (valgrind is slow: a run
    # outlasts a step).
    key = (SECRET % i)[:20].ljust(20, b"\0")
    mac = hmac.digest(key, int(time.time() // 30).to_bytes(8, "big"), "sha1")
    off = mac[-1] & 0x0F
    code = (int.from_bytes(mac[off:off + 4], "big") & 0x7FFFFFFF) % 1_000_000
    return ('{"user":"user%d","code":"%06d"}' % (i, code)).encode()

async def call(raw):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "path": "/v1/verify", "raw_path": b"/v1/verify",
             "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 8700), "client": ("127.0.0.1", 5555),
             "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode()),
                         (b"content-type", b"application/json"),
                         (b"content-length", str(len(raw)).encode())]}
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)
    out = []
    async def send(message):
        if message["type"] == "http.response.body":
            out.append(message.get("body", b""))
    await app(scope, receive, send)
    return b"".join(out)

async def main():
    ok = 0
    for i in range(first, first + count):
        ok += b'"ok":true' in await call(body(i))
    return ok

print("accepted", asyncio.run(main()), "of", count)
"""

# The pure core's loop, in the tree's own code: argv = count.
_CORE_WORKER = r"""
import os, sys
sys.path.insert(0, os.getcwd())
from validator import core
from validator.core import TokenState
from validator.otp import hotp
Kind = getattr(core, "Kind", None)
if Kind is None:
    from protocol import Kind
count = int(sys.argv[1])
key = bytes(range(20))
T = 1_700_000_000.0
times = [T + 37.0 * (i + 1) for i in range(count)]
codes = [hotp(key, int(t // 30)) for t in times]
s = int(T // 30)
state = core.check_enable(TokenState(kind=Kind.TOTP), key, hotp(key, s - 1), hotp(key, s),
                          T - 1.0).state
ok = 0
for t, c in zip(times, codes):
    decision = core.verify(state, key, c, t)
    ok += decision.accepted
    state = decision.state
print("accepted", ok, "of", count)
"""


# Any code with N bound: argv = N, code.
_CODE_WORKER = r"""
import os, sys
sys.path.insert(0, os.getcwd())
N = int(sys.argv[1])
exec(sys.argv[2])
print("accepted", N, "of", N)
"""


def _callgrind(tree: str, out_file: Path, args: list[str], count: int) -> int:
    """Instructions valgrind counted for `python -c ARGS` in `tree`, which must print
    `accepted COUNT of COUNT`."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
         sys.executable, "-c", *args],
        cwd=tree, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"})
    if f"accepted {count} of {count}" not in run.stdout:
        raise RuntimeError(f"{tree}: {run.stdout[-500:]} {run.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {run.stderr[-2000:]}")
    return int(found.group(1))


def _count(tree: str, master: Path, work: Path, count: int, first: int,
           server: Any = None) -> int:
    """Instructions of one run of `count` verifications on a fresh copy of `master` (in a
    fresh database of `server`, a tests/pg.py PostgreSQL server, if given)."""
    home = work / f"run{count}"
    shutil.copytree(master, home)
    if server is not None:
        import tomllib

        import tomli_w

        from validator.store_copy import copy_database

        url = server.new_database()
        copy_database(str(home / "validator.db"), url)
        (home / "validator.db").unlink()
        doc = tomllib.loads((home / "foblab.toml").read_text())
        doc["validator"]["database_url"] = url
        (home / "foblab.toml").write_text(tomli_w.dumps(doc))
    try:
        worker = _WORKER.replace("SECRET_FORMAT", repr(B.SECRET.decode()))
        return _callgrind(tree, work / f"callgrind.{count}",
                          [worker, str(home), str(count), str(first)], count)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str]) -> None:
    core_only = argv[:1] == ["--core"]
    on_pg = argv[:1] == ["--pg"]
    code = argv[1:4] if argv[:1] == ["--code"] else None
    trees = dict(a.split("=", 1) for a in (argv[4:] if code else argv[1:] if core_only
                                           or on_pg else argv))
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (Debian: valgrind)")
    per: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="foblab-instr-"))
        server = None
        if on_pg:
            sys.path.append(str(B.ROOT / "tests"))
            from pg import start_server, stop_server

            server = start_server()
            stack.callback(stop_server, server)
        for n, (name, tree) in enumerate(trees.items()):
            work = Path(tmp) / f"t{n}"
            work.mkdir()
            if code is not None:
                few_n, many_n = int(code[1]), int(code[2])
                few = _callgrind(tree, work / "few", [_CODE_WORKER, str(few_n), code[0]], few_n)
                many = _callgrind(tree, work / "many", [_CODE_WORKER, str(many_n), code[0]],
                                  many_n)
            elif core_only:  # 20 times as many: a core verification is cheap
                few_n, many_n = FEW * 20, MANY * 20
                few = _callgrind(tree, work / "few", [_CORE_WORKER, str(few_n)], few_n)
                many = _callgrind(tree, work / "many", [_CORE_WORKER, str(many_n)], many_n)
            else:
                few_n, many_n = FEW, MANY
                master, enabled_at = _prepared(tree, work / "master")
                while int(time.time() // 30) <= enabled_at:
                    time.sleep(0.5)
                few = _count(tree, master, work, FEW, 0, server)
                many = _count(tree, master, work, MANY, FEW, server)
            per[name] = (many - few) / (many_n - few_n)
            print(f"   {name:>6}: {per[name]:,.0f} instructions per unit "
                  f"({few:,} for {few_n}, {many:,} for {many_n})", flush=True)
    base = next(iter(trees))
    for name in trees:
        print(f"   {name:>6} / {base}: {per[name] / per[base]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

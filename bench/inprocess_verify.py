"""The whole ASGI app (create_app: middleware, routing, decoding, service, SQLite commit,
access log to /dev/null) verifying fresh HOTP codes in process, no sockets: CPU time per
verification of one source tree. Less disturbed by a loaded machine than bench.side_by_side,
since neither uvicorn nor a client shares the cores. Run it alternately on two trees:

    python bench/inprocess_verify.py old /path/to/old/tree
    python bench/inprocess_verify.py new /path/to/new/tree

(`old` configures logging the way trees before validator/logs.py did.) Not part of
`make bench`.
"""
# ruff: noqa
import asyncio, sys, time, os, json, tempfile
from pathlib import Path
which, tree = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
import pyotp
from validator.daemon import init_dir, open_validator
from validator.config import load
from validator.apikeys import KeyRing, Role
from validator.app import create_app
devnull = open(os.devnull, "w")
if which == "old":
    import validator.daemon as d
    sys.stderr = devnull
    d._configure_logging("info")
else:
    from validator.logs import configure
    configure("json", "info", devnull)
tmp = Path(tempfile.mkdtemp()) / "v"
init_dir(tmp)
settings = load(tmp / "foblab.toml")
v = open_validator(settings)
keys = KeyRing.from_files({Role.ADMIN: settings.admin_key_file, Role.VERIFIER: settings.verifier_key_file})
app = create_app(v, keys, settings, aws=None)
secret = b"12345678901234567890"
import base64
b32 = base64.b32encode(secret).decode()
admin = settings.admin_key_file.read_text().strip()
hotp = pyotp.HOTP(b32)
async def call(method, path, body, key):
    raw = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8700), "client": ("127.0.0.1", 5555),
             "headers": [(b"host", b"x"), (b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)
    out = {}
    async def send(m):
        if m["type"] == "http.response.start": out["status"] = m["status"]
        elif m["type"] == "http.response.body": out["body"] = out.get("body", b"") + m.get("body", b"")
    await app(scope, receive, send)
    return out
async def main():
    r = await call("POST", "/v1/tokens", {"serial": "B1", "secret_b32": b32, "kind": "hotp"}, admin)
    assert r["status"] == 201, r
    r = await call("POST", "/v1/users/u/devices", {"serial": "B1", "code1": hotp.at(0), "code2": hotp.at(1)}, admin)
    assert r["status"] == 201, r
    c = 2
    for _ in range(300):
        await call("POST", "/v1/verify", {"user": "u", "code": hotp.at(c)}, admin); c += 1
    n = 3000
    t = time.process_time()
    for _ in range(n):
        r = await call("POST", "/v1/verify", {"user": "u", "code": hotp.at(c)}, admin); c += 1
    el = time.process_time() - t
    assert b'"ok":true' in r["body"], r
    return el / n * 1e6
print(which, round(asyncio.run(main()), 1), "µs CPU/verify (in process)")

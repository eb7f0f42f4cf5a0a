"""What an operator watches, on a real daemon: its stderr in one format (JSON or text) with
a request id on every line of a request, the X-Request-Id header, /metrics from
prometheus-client (route templates, token gauges), audit retention enforced in the
background, and `foblab validator audit export`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import (  # noqa: E402
    PYTHON,
    ROOT,
    SECRET_B32,
    Daemon,
    enabled_token,
    init_dir,
    set_config,
)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \S")


def traffic(d: Daemon) -> dict[str, str]:
    """A few requests; their X-Request-Id by name."""
    totp = enabled_token(d, "OBS-0001", "olga")
    ids: dict[str, str] = {}
    with d.client("verifier") as ver, d.client() as adm, d.client(None) as anon:
        r = ver.post("/v1/verify", json={"user": "olga", "code": totp.at(time.time() + 30)})
        assert r.json()["ok"], r.text
        ids["verify"] = r.headers["x-request-id"]
        ids["token"] = adm.get("/v1/tokens/OBS-0001").headers["x-request-id"]
        # an unsigned AWS call: the AWS door logs its refusal during the request
        r = anon.post("/aws/", data={"Action": "GetCallerIdentity"})
        assert r.status_code >= 400
        ids["aws"] = r.headers["x-request-id"]
        assert r.headers["x-amzn-requestid"] == ids["aws"]  # one id for both doors' words
    return ids


def stopped(d: Daemon) -> list[str]:
    """Every line the daemon wrote, once it has exited (SIGTERM)."""
    assert d.stop() == 0
    time.sleep(0.2)  # the pump thread reads the last lines
    return [line.rstrip("\n") for line in d.lines if line.strip()]


def test_json_logs_one_object_per_line_and_a_request_id_per_request(tmp_path: Path,
                                                                      spawn: Any) -> None:
    init_dir(tmp_path)
    d = spawn(tmp_path)  # stderr is a pipe, not a terminal: JSON by default
    ids = traffic(d)
    assert len(set(ids.values())) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", i)
                                                for i in ids.values())
    # the audit row of the verification names its request: the same id as its log lines
    with d.client() as adm:
        rows = adm.get("/v1/audit", params={"action": "verify"}).json()["entries"]
        export = [json.loads(line) for line in adm.get("/v1/audit/export").text.splitlines()]
    assert [(r["result"], r["request_id"]) for r in rows] == [("ok", ids["verify"])]
    with d.client() as adm:  # and found by it, from the API and the command line
        by_id = adm.get("/v1/audit", params={"request_id": ids["verify"]}).json()
    assert [(e["action"], e["user"]) for e in by_id["entries"]] == [("verify", "olga")]
    assert by_id["total"] == 1
    from click.testing import CliRunner

    from tools.cli import main
    out = CliRunner().invoke(main, ["validator", "audit", "--url", d.url, "--key", d.admin,
                                    "--request-id", ids["verify"], "--json"])
    assert out.exit_code == 0, out.output
    assert [e["request_id"] for e in json.loads(out.output)["entries"]] == [ids["verify"]]
    assert ids["verify"] in {e["request_id"] for e in export}
    made = [e for e in export if e["action"] in ("register", "enable")]  # through the API
    assert len(made) == 2 and all(re.fullmatch(r"[0-9a-f]{16}", e["request_id"] or "")
                                  for e in made), export
    lines = stopped(d)
    records = [json.loads(line) for line in lines]  # every line, start-up to shutdown
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r), r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"])
    msgs = [r["msg"] for r in records]
    assert any("listening on http://127.0.0.1:" in m for m in msgs)
    assert any(m == "database closed" for m in msgs)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if "request_id" in r:
            by_id.setdefault(r["request_id"], []).append(r)
    aws = by_id[ids["aws"]]  # the application's line and the access line, one id
    assert {r["logger"] for r in aws} == {"foblab.aws", "foblab.access"}
    (verify,) = by_id[ids["verify"]]
    assert (verify["logger"], verify["route"], verify["outcome"], verify["status"]) == (
        "foblab.access", "/v1/verify", "accepted", 200)
    assert verify["remote_addr"] == "127.0.0.1" and verify["method"] == "POST"
    (token,) = by_id[ids["token"]]
    assert token["route"] == "/v1/tokens/{serial}" and token["path"] == "/v1/tokens/OBS-0001"


def test_text_logs_from_the_config_and_the_flag_overrides_it(tmp_path: Path,
                                                             spawn: Any) -> None:
    init_dir(tmp_path, log_format="text")
    d = spawn(tmp_path)
    ids = traffic(d)
    lines = stopped(d)
    for line in lines:
        assert TEXT_LINE.match(line) and not line.startswith("{"), line
    access = [line for line in lines if f"request_id={ids['verify']}" in line]
    assert len(access) == 1 and "foblab.access request" in access[0]
    assert "route=/v1/verify" in access[0] and "outcome=accepted" in access[0]
    assert sum(f"request_id={ids['aws']}" in line for line in lines) == 2

    d = spawn(tmp_path, "--log-format", "json")  # the option wins over the file
    with d.client(None) as http:
        assert http.get("/healthz").status_code == 200
    for line in stopped(d):
        assert json.loads(line)["logger"]


def _echo(d: Daemon, value: str | bytes) -> str:
    with d.client(None) as http:
        return http.get("/healthz", headers={"X-Request-Id": value}).headers["x-request-id"]


def test_an_incoming_request_id_is_kept_from_a_trusted_proxy_only(tmp_path: Path,
                                                                  spawn: Any) -> None:
    init_dir(tmp_path / "a")
    plain = spawn(tmp_path / "a")  # trusts no proxy
    assert _echo(plain, "from-the-client-1") != "from-the-client-1"
    init_dir(tmp_path / "b", trusted_proxies=["127.0.0.0/8"])
    proxied = spawn(tmp_path / "b")
    assert _echo(proxied, "lb-7f3a.42:x_y") == "lb-7f3a.42:x_y"
    for insane in ("two words", "x" * 65, "a\"b", "é".encode()):
        got = _echo(proxied, insane)
        assert got != insane and re.fullmatch(r"[0-9a-f]{16}", got)
    lines = stopped(proxied)
    assert any('"request_id":"lb-7f3a.42:x_y"' in line for line in lines)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_by_route_template_with_token_gauges(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path)
    set_config(tmp_path, "policy", max_failures=1)
    d = spawn(tmp_path)
    enabled_token(d, "GAUGE-0001", "gina")
    enabled_token(d, "GAUGE-0002", "gus")
    with d.client() as adm, d.client("verifier") as ver:
        assert adm.post("/v1/tokens", json={"serial": "GAUGE-0003",
                                            "secret_b32": SECRET_B32}).status_code == 201
        assert adm.get("/v1/tokens/GAUGE-0003").status_code == 200
        r = ver.post("/v1/verify", json={"user": "gus", "code": "000000"})
        assert r.json()["reason"] == "invalid_code"  # one failure locks (max_failures 1)
        assert adm.post("/aws/", data={"Action": "GetSessionToken"}).status_code >= 400
        assert adm.post("/aws/", data={"Action": "Nonsense\nAction"}).status_code >= 400
        text = adm.get("/metrics").text
    assert "{serial:path}" not in text and "{user:path}" not in text
    m = _samples(text)
    assert m[("foblab_tokens", ())] == 3
    assert m[("foblab_devices_enabled", ())] == 2
    assert m[("foblab_tokens_locked", ())] == 1
    assert m[("foblab_http_requests_total", (("method", "GET"), ("route", "/v1/tokens/{serial}"),
                                             ("status", "200")))] == 1
    assert m[("foblab_http_request_duration_seconds_count",
              (("method", "POST"), ("route", "/v1/users/{user}/devices")))] == 2
    assert m[("foblab_verify_total", (("reason", "invalid_code"),))] == 1
    assert m[("foblab_verify_window_steps_count", ())] == 1
    assert ("foblab_connections_open", ()) in m and ("foblab_start_time_seconds", ()) in m
    aws = {dict(labels)["action"]: value for (name, labels), value in m.items()
           if name == "foblab_aws_requests_total"}
    assert aws == {"GetSessionToken": 1, "other": 1}  # an unknown Action is no new label


def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path, spawn: Any) -> None:
    """The daemon's checkpoint thread, not the requests' commits, copies SQLite's WAL into
    the database file (validator.daemon.Checkpointer), and /metrics counts it."""
    import shutil
    import sqlite3

    def in_the_file_alone() -> int:  # the database file read without its WAL
        shutil.copy(tmp_path / "validator.db", tmp_path / "alone.db")
        alone = sqlite3.connect(tmp_path / "alone.db")
        try:
            return int(alone.execute("SELECT COUNT(*) FROM audit WHERE reason = 'no_device'"
                                     ).fetchone()[0])
        finally:
            alone.close()

    init_dir(tmp_path)
    d = spawn(tmp_path)
    with d.client("verifier") as ver, d.client() as adm:
        for _ in range(20):  # each an audit row
            assert ver.post("/v1/verify", json={"user": "nobody", "code": "123456"}
                            ).status_code == 200
        deadline = time.monotonic() + 20
        while in_the_file_alone() < 20:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        m = _samples(adm.get("/metrics").text)
    assert m[("foblab_sqlite_checkpoints_total", ())] >= 2  # at start, and since
    assert m[("foblab_sqlite_checkpoint_pages_total", ())] >= 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_audit_retention_is_enforced_in_the_background(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path, audit_max_rows=5, audit_prune_seconds=1)
    d = spawn(tmp_path)
    with d.client("verifier") as ver:
        for _ in range(12):  # each a `verify ... no_device` audit row
            assert ver.post("/v1/verify", json={"user": "nobody", "code": "123456"}
                            ).status_code == 200
    deadline = time.monotonic() + 20
    with d.client() as adm:
        while True:
            page = adm.get("/v1/audit", params={"limit": 100}).json()
            if page["total"] <= 6 and any(e["action"] == "audit_prune"
                                          for e in page["entries"]):
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
    # the newest stayed: the last verifications, oldest gone (daemon_start first of all)
    assert all(e["action"] in ("verify", "audit_prune") for e in page["entries"])
    lines = stopped(d)
    assert any(json.loads(line)["msg"].startswith("audit retention: ") and
               json.loads(line).get("deleted", 0) >= 1 for line in lines)


def test_audit_export_streams_jsonl(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path)
    d = spawn(tmp_path)
    with d.client("verifier") as ver:
        for user in ("ann", "bob", "cid"):
            ver.post("/v1/verify", json={"user": user, "code": "123456"})
    where = ("--url", d.url, "--key", d.admin)
    out = _cli("audit", "export", *where, "--since", "1h")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["action"] for r in rows] == ["daemon_start", "verify", "verify", "verify"]
    assert [r["user"] for r in rows[1:]] == ["ann", "bob", "cid"]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert set(rows[1]) >= {"ts", "time", "action", "result", "reason", "serial", "user",
                            "via", "client"}
    assert rows[1]["result"] == "refused" and rows[1]["reason"] == "no_device"
    newest = _cli("audit", "export", *where, "--newest-first")
    assert [json.loads(line)["id"] for line in newest.stdout.splitlines()] == \
        [r["id"] for r in reversed(rows)]
    later = _cli("audit", "export", *where, "--since",
                 time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600)))
    assert later.returncode == 0 and later.stdout == ""
    bad = _cli("audit", "export", *where, "--since", "last tuesday")
    assert bad.returncode != 0 and "--since must be" in bad.stderr
    table = _cli("audit", *where, "--json")  # the plain listing still works
    assert table.returncode == 0 and json.loads(table.stdout)["total"] == 4

"""Lists never truncate silently: `token list` and `audit` say "showing 1-100 of 120" and
page with --page/--limit/--all; the audit log comes newest first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import PYTHON, ROOT, Daemon, init_dir  # noqa: E402

SECRET = "3132333435363738393031323334353637383930"


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", *args, "--dir",
                           str(daemon.dir), "--url", daemon.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_lists_say_how_much_they_show_and_page(tmp_path: Path, spawn: Any) -> None:
    init_dir(tmp_path / "home")
    daemon = spawn(tmp_path / "home")
    csv = "serial,secret_hex,kind,digits,period_or_counter,hash\n" + "".join(
        f"TOK-{i:04d},{SECRET},totp,6,30,sha1\n" for i in range(120))
    with daemon.client() as http:
        r = http.post("/v1/tokens/import", json={"format": "csv", "content": csv})
        assert r.status_code == 200, r.text
        assert http.get("/v1/tokens", params={"limit": 5}).json()["total"] == 120

    first = cli(daemon, "token", "list")
    assert first.returncode == 0, first.stderr
    rows = first.stdout.splitlines()[1:]
    assert len(rows) == 100 and rows[0].startswith("TOK-0000")
    assert first.stderr.strip() == "showing 1-100 of 120 (--all, --limit N, --page K)"

    second = cli(daemon, "token", "list", "--page", "2")
    rows = second.stdout.splitlines()[1:]
    assert len(rows) == 20 and rows[0].startswith("TOK-0100")
    assert "showing 101-120 of 120" in second.stderr

    every = cli(daemon, "token", "list", "--all", "--json")
    assert len(json.loads(every.stdout)["tokens"]) == 120 and every.stderr == ""
    small = cli(daemon, "token", "list", "--unassigned", "--limit", "500")
    assert len(small.stdout.splitlines()) == 121 and small.stderr == ""  # all shown: no note

    audit = json.loads(cli(daemon, "audit", "--json").stdout)
    ids = [e["id"] for e in audit["entries"]]
    total = audit["total"]  # an entry per imported token, and the import's own
    assert ids == sorted(ids, reverse=True) and len(ids) == 100 and total > 120
    assert ids[0] == max(e["id"] for e in json.loads(
        cli(daemon, "audit", "--all", "--json").stdout)["entries"])
    table = cli(daemon, "audit", "--limit", "3")
    assert f"showing 1-3 of {total}" in table.stderr
    oldest = json.loads(cli(daemon, "audit", "--oldest-first", "--limit", "3", "--json").stdout)
    assert [e["id"] for e in oldest["entries"]] == sorted(e["id"] for e in oldest["entries"])
    assert oldest["entries"][0]["id"] < ids[-1]

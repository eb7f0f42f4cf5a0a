"""Seed files against a real daemon: a file past a parsing limit is a 400 naming the limit
and the daemon lives on (200,000 nested elements once killed it: C recursion in the copy of
the tree python-pskc made); a CSV field past csv's own 131,072 characters was a 500; per-key
outcomes and --dry-run through the API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pskc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_helpers import PYTHON, ROOT, Daemon, init_dir  # noqa: E402

PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"


def _deep(levels: int) -> str:
    """A PSKC file whose one key sits under `levels` nested elements (1.4 MB at 200,000)."""
    return (f'<KeyContainer Version="1.0" xmlns="{PSKC_NS}">' + "<a>" * levels
            + "</a>" * levels + "</KeyContainer>")


def _import(d: Daemon, content: str, fmt: str = "pskc", **extra: Any) -> Any:
    with d.client() as http:
        return http.post("/v1/tokens/import", json={"format": fmt, "content": content,
                                                    **extra})


def test_a_200000_deep_file_is_refused_and_the_daemon_lives(spawn: Any,
                                                            tmp_path: Path) -> None:
    home = tmp_path / "v"
    init_dir(home)
    d = spawn(home)
    r = _import(d, _deep(200_000))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "seed_file_limit"
    assert "deeper than 32 levels (import_max_depth)" in r.json()["message"]
    r = _import(d, "serial,secret_hex,kind,digits,period_or_counter,hash\n"
                   "BIG-1," + "31" * 100_000 + ",totp,6,30,sha1\n", "csv")
    assert r.status_code == 400, r.text
    assert "(import_max_field_chars)" in r.json()["message"]
    with d.client() as http:
        assert http.get("/healthz").status_code == 200
    assert d.proc.poll() is None


def _mixed_file() -> str:
    container = pskc.PSKC()
    container.add_key(serial="API-OK", secret=b"12345678901234567890",
                      algorithm=PSKC_NS + ":totp", time_interval=30)
    container.add_key(serial="API-OCRA", secret=b"12345678901234567890",
                      algorithm=PSKC_NS + ":OCRA-1:HOTP-SHA1-6:QN08")
    import io

    out = io.BytesIO()
    container.write(out)
    return out.getvalue().decode()


def _cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tools.cli", "validator", "token", *args,
                           "--url", d.url, "--key", d.admin], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_outcomes_and_dry_run_through_api_and_cli(daemon: Daemon, tmp_path: Path) -> None:
    r = _import(daemon, _mixed_file(), dry_run=True)
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 1, "serials": ["API-OK"], "dry_run": True, "skipped": [
        {"serial": "API-OCRA", "reason": "unsupported_algorithm",
         "detail": f"algorithm {PSKC_NS}:OCRA-1:HOTP-SHA1-6:QN08"}]}
    with daemon.client() as http:
        assert http.get("/v1/tokens/API-OK").status_code == 404
    seeds = tmp_path / "mixed.pskc"
    seeds.write_text(_mixed_file())
    out = _cli(daemon, "import", str(seeds), "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "would import 1 token(s), skipped 1:"
    assert lines[1].split() == ["SERIAL", "REASON", "DETAIL"]
    assert lines[2].split()[:3] == ["API-OCRA", "unsupported_algorithm", "algorithm"]
    out = _cli(daemon, "import", str(seeds), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["imported"] == 1 and data["dry_run"] is False
    assert [s["reason"] for s in data["skipped"]] == ["unsupported_algorithm"]
    shown = _cli(daemon, "show", "API-OK")
    assert "expires        never" in shown.stdout

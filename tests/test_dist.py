"""The operator's install: the wheel `make dist` builds, installed into a fresh virtualenv
with its runtime dependencies only, runs `foblab validator init` and `serve`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (found,) = out.glob("foblab-*.whl")
    return found


def test_the_wheel_holds_the_packages_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {"protocol", "firmware_sim", "validator", "tools"} <= tops
    assert not any(n.startswith(("tests/", "bench/", "examples/")) for n in names)
    meta = next(n for n in names if n.endswith("/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    runtime = [line for line in text.splitlines()
               if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any(dev in line for line in runtime
                   for dev in ("pytest", "ruff", "mypy", "boto3", "selenium"))
    entry = next(n for n in names if n.endswith("/entry_points.txt"))
    assert "foblab = tools.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_wheel_installs_and_serves_from_a_fresh_virtualenv(wheel: Path,
                                                               tmp_path: Path) -> None:
    venv = tmp_path / "opt-foblab"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"],
                            capture_output=True, text=True, check=True, timeout=120)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "foblab" in installed and not installed & {"pytest", "ruff", "mypy", "boto3"}
    foblab = venv / "bin" / "foblab"
    home = tmp_path / "var-lib-foblab"
    init = subprocess.run([str(foblab), "validator", "init", str(home)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    serve = subprocess.Popen([str(foblab), "validator", "serve", "--dir", str(home),
                              "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert serve.stderr is not None
        url = ""
        for line in serve.stderr:
            if "listening on " in line:
                url = re.findall(r"listening on (https?://[^\s\"]+)", line)[0]
                break
        assert url.startswith("http://127.0.0.1:"), "the daemon did not start"
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as answer:
            assert answer.status == 200
        key = (home / "verifier.key").read_text().strip()
        request = urllib.request.Request(
            f"{url}/v1/verify", data=b'{"user": "alice", "code": "123456"}', method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["ok"] is False
    finally:
        serve.terminate()
        assert serve.wait(30) == 0


def test_the_systemd_unit_runs_what_the_install_recipe_installs() -> None:
    unit = (ROOT / "docs" / "foblab-validator.service").read_text()
    ops = (ROOT / "docs" / "operations.md").read_text()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    binary = start.split("=", 1)[1].split()[0]
    venv = binary.removesuffix("/bin/foblab")
    assert f"python3 -m venv {venv}\n" in ops and f"{venv}/bin/pip install dist/" in ops

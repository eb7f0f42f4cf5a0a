"""The pytest plugin as an application's test suite uses it: the example project under
examples/mfa-app, run by pytest (in two xdist workers), and a run interrupted by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mfa-app"


def _pytest(cwd: Path, *args: str, env: dict[str, str] | None = None,
            **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                            cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_the_example_project_passes_in_two_workers(tmp_path: Path) -> None:
    proc = _pytest(EXAMPLE, "-q", "-n", "2", env={"TMPDIR": str(tmp_path)})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "6 passed" in out, out
    # every lab removed its folder; no token port or daemon outlived the run
    assert not list(tmp_path.glob("foblab-lab-*")), out


def test_a_failed_test_leaves_nothing_behind(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_fails.py").write_text(
        "def test_fails(foblab_validator, foblab_token):\n"
        "    foblab_token(port='pty')\n"
        "    foblab_token(port='tcp')\n"
        "    assert foblab_validator.verify('nobody', '123456').accepted\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = _pytest(suite, "-q", "--import-mode=importlib", env={"TMPDIR": str(temp)})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 failed" in out, out
    assert not list(temp.glob("foblab-lab-*")), out


def test_ctrl_c_during_a_test_leaves_nothing_behind(tmp_path: Path) -> None:
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "test_hang.py").write_text(
        "import time\n"
        "def test_hang(foblab_validator, foblab_token):\n"
        "    foblab_token(port='pty')\n"
        "    print('READY', flush=True)\n"
        "    time.sleep(300)\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = _pytest(tests, "-s", "-q", "--import-mode=importlib", env={"TMPDIR": str(temp)},
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "READY" in line:
            break
        assert time.monotonic() < deadline
    assert list(temp.glob("foblab-lab-*")), "the lab was not where expected"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in out, out
    assert not list(temp.glob("foblab-lab-*")), out


def test_docs_show_the_example_projects_code_line_for_line() -> None:
    """Every ```python block of docs/testing.md that starts `# examples/mfa-app/PATH` is
    that file's text, so the worked examples in the doc are the ones CI runs."""
    import re

    doc = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n# (examples/mfa-app/\S+)\n(.*?)```", doc, re.S)
    assert len(blocks) >= 7
    for path, text in blocks:
        assert (ROOT / path).read_text() == text, path
    shown = {path for path, _ in blocks}
    tests = {f"examples/mfa-app/tests/{p.name}" for p in (EXAMPLE / "tests").glob("test_*.py")}
    assert tests <= shown, tests - shown


def test_the_python_api_example_of_the_doc_runs() -> None:
    import re

    doc = (ROOT / "docs" / "testing.md").read_text()
    example = re.search(r"## Without pytest.*?```python\n(.*?)```", doc, re.S)
    assert example is not None
    exec(compile(example.group(1), "docs/testing.md", "exec"), {})


def test_the_readme_example_passes_as_a_test_of_another_project(tmp_path: Path) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## In your own tests", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    (tmp_path / "test_readme.py").write_text(code.group(1))
    proc = _pytest(tmp_path, "-q", "--import-mode=importlib")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "1 passed" in out, out

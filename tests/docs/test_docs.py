"""Documentation that runs: every shell block of README.md and docs/*.md.

The convention (also in docs/cli.md, "Examples in the docs"):

- A fenced block whose info string is `sh` holds commands a reader can paste. This harness
  runs it, in document order, in a fresh temporary directory per document, with `bash -e -o
  pipefail`, the venv's `foblab` first on PATH and HOME pointing into that directory (so
  token state files and defaults never touch the real home). It must exit 0.
- A block that cannot run has an HTML comment on the line right above its fence:
  `<!-- not runnable: REASON -->` (the reason is required). Output samples, file formats and
  other languages use their own info string (`text`, `toml`, `json`, `python`, ...) and are
  not run.
- An `sh` block may carry directives in a comment right above it (several comments may
  stack): `<!-- doc-test: KEY[=VALUE]; ... -->` with
    - `background`: the block starts a long-running process (a token, a fleet, the daemon);
      it keeps running until the document ends, then gets SIGTERM;
    - `ready=PATH` or `ready=URL`: wait until that path exists (relative to the directory)
      or that URL answers 200 before going on (background blocks need one; an https URL
      is polled without checking its certificate: readiness only, the blocks check);
    - `status=N`: the exit status the block must end with (default 0);
    - `expect=REGEX`: the block's stdout+stderr must match (Python `re.search`, repeatable);
    - `timeout=SECONDS`: default 120;
    - `xfail=REASON`: a documented command known to fail for REASON (a bug being fixed). It is
      still run; the document's test is an expected failure while it fails, and fails
      ("remove the marker") as soon as the block behaves: a strict xfail.

The harness fails on: a fence without an info string, a shell block spelt other than `sh`
(`bash`, `console`, `shell`: say `sh` if it runs, `text` if it does not), `not runnable`
without a reason, an unknown directive, a background block without `ready=`, and of course
on any runnable block that does not behave. So a block that cannot run and is not marked
makes the suite red.

Two rewrites, both so that parallel runs cannot collide: the daemon's documented default port
8700 is replaced in runnable blocks (and `ready=` URLs) by a free loopback port, and
`scenarios/` is a symlink to the repository's scenario files.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_NAMES = {"sh", "bash", "shell", "console", "zsh", "shell-session", "sh-session"}
DIRECTIVES = {"background", "ready", "status", "expect", "timeout", "xfail"}
DEFAULT_PORT = "8700"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_COMMENT = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")


class DocError(Exception):
    """The document breaks the convention (not: a block failed to run)."""


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str
    not_runnable: str | None = None
    background: bool = False
    ready: str | None = None
    status: int = 0
    expect: list[str] = field(default_factory=list)
    timeout: float = 120.0
    xfail: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.info == "sh" and self.not_runnable is None


def parse(text: str, path: Path) -> list[Block]:
    """Every fenced block of a Markdown text, with the directives above it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and not lines[i].strip().strip(fence[0])):
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            raise DocError(f"{path.name}:{start + 1}: fence never closed")
        i += 1
        block = Block(path, start + 1, info.split()[0] if info else "", "\n".join(body) + "\n")
        _directives(block, lines, start)
        blocks.append(block)
    return blocks


def _directives(block: Block, lines: list[str], start: int) -> None:
    where = block.where
    if not block.info:
        raise DocError(f"{where}: a fence without an info string: say ```sh if it runs, "
                       "```text (or the language) if it does not")
    if block.info in SHELL_NAMES and block.info != "sh":
        raise DocError(f"{where}: ```{block.info}: runnable commands are ```sh, anything "
                       "else ```text")
    j = start - 1
    comments: list[str] = []
    while j >= 0 and (m := _COMMENT.match(lines[j])):
        comments.append(m["body"])
        j -= 1
    for body in reversed(comments):
        if body.startswith("not runnable"):
            reason = body.partition(":")[2].strip()
            if not reason:
                raise DocError(f"{where}: `not runnable` needs a reason: "
                               "<!-- not runnable: REASON -->")
            block.not_runnable = reason
        elif body.startswith("doc-test:"):
            for item in body.partition(":")[2].split(";"):
                key, _, value = (s.strip() for s in item.partition("="))
                if not key:
                    continue
                if key not in DIRECTIVES:
                    raise DocError(f"{where}: unknown doc-test directive {key!r} "
                                   f"(known: {', '.join(sorted(DIRECTIVES))})")
                if key == "background":
                    block.background = True
                elif key == "ready":
                    block.ready = value
                elif key == "status":
                    block.status = int(value)
                elif key == "expect":
                    block.expect.append(value)
                elif key == "timeout":
                    block.timeout = float(value)
                elif key == "xfail":
                    if not value:
                        raise DocError(f"{where}: xfail needs a reason")
                    block.xfail = value
    if (block.background or block.ready or block.expect) and block.info != "sh":
        raise DocError(f"{where}: doc-test directives on a ```{block.info} block")
    if block.background and not block.ready:
        raise DocError(f"{where}: a background block needs ready=PATH or ready=URL")


# -- the convention's own tests --------------------------------------------------------------

def _one(md: str) -> list[Block]:
    return parse(md, Path("x.md"))


def test_untagged_fence_is_refused() -> None:
    with pytest.raises(DocError, match="without an info string"):
        _one("text\n\n```\nfoblab demo\n```\n")


def test_bash_fence_is_refused() -> None:
    with pytest.raises(DocError, match="runnable commands are ```sh"):
        _one("```bash\nls\n```\n")


def test_not_runnable_needs_a_reason() -> None:
    with pytest.raises(DocError, match="needs a reason"):
        _one("<!-- not runnable: -->\n```sh\nrm -rf /\n```\n")


def test_unknown_directive_is_refused() -> None:
    with pytest.raises(DocError, match="unknown doc-test directive 'wait'"):
        _one("<!-- doc-test: wait=3 -->\n```sh\nls\n```\n")


def test_background_needs_ready() -> None:
    with pytest.raises(DocError, match="needs ready="):
        _one("<!-- doc-test: background -->\n```sh\nsleep 9\n```\n")


def test_directives_are_read() -> None:
    md = ("<!-- not runnable: needs a USB token -->\n```sh\nfoblab token info /dev/ttyUSB0\n```\n"
          "para\n\n<!-- doc-test: status=1; expect=replayed -->\n<!-- doc-test: expect=x y -->\n"
          "```sh\nfalse\n```\n```text\n$ out\n```\n")
    a, b, c = _one(md)
    assert (a.runnable, a.not_runnable) == (False, "needs a USB token")
    assert (b.runnable, b.status, b.expect) == (True, 1, ["replayed", "x y"])
    assert (c.runnable, c.info) == (False, "text")


def test_every_document_follows_the_convention() -> None:
    for doc in DOCS:
        parse(doc.read_text(), doc)  # raises DocError naming FILE:LINE


def test_a_failing_block_fails_the_document(tmp_path: Path) -> None:
    """The runner really checks exit status and output (so a green run means something)."""
    doc = tmp_path / "x.md"
    doc.write_text("```sh\necho hello; exit 3\n```\n")
    with pytest.raises(AssertionError, match="exit status 3"):
        run_document(doc, tmp_path / "work")
    doc.write_text("<!-- doc-test: expect=goodbye -->\n```sh\necho hello\n```\n")
    with pytest.raises(AssertionError, match="goodbye"):
        run_document(doc, tmp_path / "work2")
    doc.write_text("<!-- doc-test: xfail=bug 9 -->\n```sh\nfalse\n```\n```sh\ntrue\n```\n")
    assert run_document(doc, tmp_path / "work3") == ["x.md:2: bug 9 (exit status 1 (expected 0))"]
    doc.write_text("<!-- doc-test: xfail=bug 9 -->\n```sh\ntrue\n```\n")
    with pytest.raises(AssertionError, match="remove the marker"):
        run_document(doc, tmp_path / "work4")


# -- running documents ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FOBLAB_", "XDG_")) and k not in ("COLUMNS", "LINES")}
    home = work / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    return env


def _wait_ready(block: Block, ready: str, work: Path, proc: subprocess.Popen[bytes],
                log: Path) -> None:
    deadline = time.monotonic() + block.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{block.where}: the background command exited "
                                 f"({proc.returncode}) before {ready} was ready:\n"
                                 f"{block.text}\n{log.read_text()}")
        if ready.startswith("http"):
            try:
                with urllib.request.urlopen(ready, timeout=1,
                                            context=ssl._create_unverified_context()) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
        elif (work / ready).exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"{block.where}: {ready} not ready after {block.timeout} s:\n"
                         f"{log.read_text()}")


def run_document(doc: Path, work: Path) -> list[str]:
    """Run every runnable block of `doc` in `work`; raise AssertionError at the first one
    that misbehaves (an `xfail` block that behaves counts as misbehaving). Returns the
    reasons of the `xfail` blocks that failed as expected."""
    blocks = [b for b in parse(doc.read_text(), doc) if b.runnable]
    work.mkdir(parents=True)
    (work / "scenarios").symlink_to(ROOT / "scenarios")
    env = _env(work)
    port = str(_free_port())
    background: list[tuple[subprocess.Popen[bytes], Path]] = []
    expected_failures: list[str] = []
    try:
        for n, block in enumerate(blocks):
            script = block.text.replace(DEFAULT_PORT, port)
            print(f"doc-test: {block.where}", flush=True)  # shown when a test fails
            if block.background:
                log = work / f".doc-test-bg{n}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=work, env=env,
                                            stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
                background.append((proc, log))
                assert block.ready is not None
                _wait_ready(block, block.ready.replace(DEFAULT_PORT, port), work, proc, log)
                continue
            try:
                done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work,
                                      env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=block.timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{block.where}: still running after {block.timeout} s:"
                                     f"\n{block.text}") from None
            output = done.stdout + done.stderr
            problem = None
            if done.returncode != block.status:
                problem = f"exit status {done.returncode} (expected {block.status})"
            for pattern in block.expect:
                if problem is None and not re.search(pattern, output, re.MULTILINE):
                    problem = f"output does not match {pattern!r}"
            if block.xfail is not None:
                if problem is None:
                    raise AssertionError(f"{block.where}: marked xfail ({block.xfail}) but it "
                                         "behaves now: remove the marker")
                expected_failures.append(f"{block.where}: {block.xfail} ({problem})")
            elif problem is not None:
                raise AssertionError(f"{block.where}: {problem}:\n{block.text}--- output:\n"
                                     f"{output}")
    finally:
        for proc, _ in reversed(background):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc, _ in reversed(background):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return expected_failures


@pytest.mark.timeout(600)  # a shared 2-core machine; a quiet one takes seconds
@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_document_runs(doc: Path, tmp_path: Path) -> None:
    if shutil.which("bash") is None:  # pragma: no cover - Debian always has it
        pytest.fail("bash is needed to run the documentation")
    expected_failures = run_document(doc, tmp_path / "work")
    if expected_failures:  # every other block ran and behaved
        pytest.xfail("; ".join(expected_failures))

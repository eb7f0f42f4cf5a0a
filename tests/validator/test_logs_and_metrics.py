"""The pieces behind the daemon's log and /metrics, in process: the two formatters, the
request-id rules, and one registry per application (several apps in one process)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from validator.http.metrics import (
    STALE_SECONDS,
    Metrics,
    route_template,
    shared_folder,
    sweep_shared,
)
from validator.logs import (
    REQUEST_ID,
    configure,
    incoming_request_id,
    new_request_id,
    resolve,
    timestamp,
)


def _one_record(fmt: str) -> str:
    stream = io.StringIO()
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses,
             logging.logMultiprocessing)
    configure(fmt, "info", stream)
    token = REQUEST_ID.set("r-1")
    try:
        logging.getLogger("foblab.test").warning("two\nlines %s", "here",
                                                 extra={"fields": {"user": "a b", "n": 3}})
    finally:
        REQUEST_ID.reset(token)
        logging.getLogger().handlers.clear()
        logging.captureWarnings(False)
        (logging._srcfile, logging.logThreads, logging.logProcesses,
         logging.logMultiprocessing) = saved
    return stream.getvalue()


def test_json_and_text_are_one_line_per_record_with_the_same_fields() -> None:
    (line,) = _one_record("json").splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("level", "logger", "msg", "request_id", "user", "n")} == {
        "level": "warning", "logger": "foblab.test", "msg": "two\nlines here",
        "request_id": "r-1", "user": "a b", "n": 3}
    (line,) = _one_record("text").splitlines()
    assert line.endswith(' WARNING foblab.test two\\nlines here request_id=r-1 user="a b" n=3')


def test_auto_is_json_off_a_terminal() -> None:
    assert resolve("auto", io.StringIO()) == "json"
    assert resolve("text", io.StringIO()) == "text"


def test_a_forked_worker_numbers_its_requests_with_ids_of_its_own() -> None:
    """`serve --workers` forks its workers after importing this module: each must draw
    its own prefix, or two workers hand out the same ids."""
    ours = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == len(ours) == 16
    assert child[:8] != ours[:8]  # another prefix
    assert child[8:] == "00000000"  # and its own count, from zero


def test_incoming_request_ids_are_bounded() -> None:
    assert incoming_request_id(b"abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in (b"", b"x" * 65, b"a b", b"a\nb", "é".encode(), b"a\"b", None):
        assert incoming_request_id(bad) is None
    assert timestamp(0.5) == "1970-01-01T00:00:00.500Z"


def test_route_labels_are_templates() -> None:
    assert route_template("/v1/users/{user}/devices/{serial:path}/resync") == \
        "/v1/users/{user}/devices/{serial}/resync"


def test_each_app_counts_in_its_own_registry() -> None:
    a, b = Metrics(), Metrics(gauges=lambda: {"tokens": 4, "devices_enabled": 2,
                                              "tokens_locked": 1})
    a.observe("GET", "/v1/tokens/{serial:path}", 200, 0.002)
    a.verified("accepted", 3)

    def values(m: Metrics) -> dict[str, float]:
        return {s.name + str(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(m.render().decode())
                for s in f.samples}

    va, vb = values(a), values(b)
    key = "foblab_http_requests_total[('method', 'GET'), ('route', '/v1/tokens/{serial}'), " \
          "('status', '200')]"
    assert va[key] == 1 and key not in vb
    assert va["foblab_verify_total[('reason', 'accepted')]"] == 1
    assert "foblab_tokens[]" not in va and vb["foblab_tokens[]"] == 4
    assert vb["foblab_tokens_locked[]"] == 1


def test_workers_share_their_series_and_skip_what_is_not_theirs(tmp_path: Path) -> None:
    """`Metrics.share` (serve --workers): each worker's series with its `worker` label,
    the others' read from their files, one family per name, the store's gauges once; a
    file that does not parse or is too large is left out, never an error."""
    gauges = {"tokens": 4, "devices_enabled": 2, "tokens_locked": 0}
    first, second = Metrics(gauges=lambda: gauges), Metrics(gauges=lambda: gauges)
    first.share(tmp_path, 0)
    second.share(tmp_path, 1)
    try:
        first.verified("accepted", 3)
        second.verified("accepted", 3)
        second.verified("replayed", 3)
        second.stop_sharing()  # its last counts written

        def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            text = m.render().decode()
            assert text.count("# TYPE foblab_verify_total counter") == 1
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(text) for s in f.samples}

        seen = samples(first)
        assert seen[("foblab_verify_total", (("reason", "accepted"), ("worker", "0")))] == 1
        assert seen[("foblab_verify_total", (("reason", "accepted"), ("worker", "1")))] == 1
        assert seen[("foblab_verify_total", (("reason", "replayed"), ("worker", "1")))] == 1
        assert seen[("foblab_tokens", ())] == 4
        assert not any(name == "foblab_tokens" and labels for name, labels in seen)
        (tmp_path / "worker-7.prom").write_text("not { the exposition format\n")
        (tmp_path / "worker-8.prom").write_bytes(b"# " + b"x" * (4 << 20) + b"\n")
        assert samples(first) == seen  # both left out
        first.verified("accepted", 2)  # its own series are live, not as last written
        assert samples(first)[("foblab_verify_total", (("reason", "accepted"),
                                                        ("worker", "0")))] == 2
    finally:
        first.stop_sharing()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_folders_of_dead_parents_are_swept_and_nothing_else(tmp_path: Path) -> None:
    """A `serve --workers` parent SIGKILLed leaves its metrics folder behind; the next one
    removes it, and never a live parent's folder, a fresh one, another user's file in it,
    or anything not named as ours."""
    now = time.time()
    old = now - STALE_SECONDS - 5

    def folder(name: str, *files: str, mtime: float = old) -> Path:
        path = tmp_path / name
        path.mkdir()
        for f in files:
            (path / f).write_text("# nothing\n")
            os.utime(path / f, (mtime, mtime))
        os.utime(path, (mtime, mtime))
        return path

    dead = _dead_pid()
    stale = folder(f"foblab-metrics-{dead}-ab12", "worker-0.prom", "worker-1.prom",
                   f".worker-1.prom.{dead}")
    live = folder(f"foblab-metrics-{os.getpid()}-cd34", "worker-0.prom")
    fresh = folder(f"foblab-metrics-{dead}-ef56", "worker-0.prom", mtime=now - 2)
    foreign = folder(f"foblab-metrics-{dead}-gh78", "worker-0.prom", "notes.txt")
    unnamed = folder("foblab-metrics-xyz-ij90", "worker-0.prom")
    (tmp_path / "target").mkdir()
    link = tmp_path / f"foblab-metrics-{dead}-kl12"
    link.symlink_to(tmp_path / "target")

    assert sweep_shared(tmp_path, now) == 1
    assert not stale.exists()
    assert (live / "worker-0.prom").exists() and (fresh / "worker-0.prom").exists()
    assert (foreign / "notes.txt").exists() and not (foreign / "worker-0.prom").exists()
    assert (unnamed / "worker-0.prom").exists() and link.is_symlink()
    made = shared_folder(tmp_path)
    assert made.name.startswith(f"foblab-metrics-{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700
    sweep_shared(tmp_path, now + 10 * STALE_SECONDS)  # much later
    assert not fresh.exists()  # its time came
    assert made.is_dir() and live.is_dir()  # this process lives

"""A scenario run as a readable timeline, as JSON, and as JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.scenario.engine import EventResult, RunResult


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f} s"


def header(run: RunResult) -> list[str]:
    s = run.scenario
    t = s.token
    lines = [f"scenario: {s.name}  ({s.path})",
             f"  token {run.serial} {t.model} ({t.kind}, {t.hash}, {t.digits} digits, "
             f"{t.period} s), clock {s.clock.describe()}; {run.mode}, seed {s.seed}"]
    lines += [f"  note: {n}" for n in run.notes]
    return lines


def event_line(r: EventResult) -> str:
    ev = r.event
    mark = "ok  " if r.ok else "FAIL"
    state = f"token {_seconds(r.token_offset_s):>10}  believed {_seconds(r.estimate_s):>10}"
    line = f"  {mark} {ev.when:>16}  {ev.name[:46]:<46} {r.outcome.describe()[:30]:<30} {state}"
    if not r.ok:
        line += (f"\n       event {ev.index + 1} (line {ev.line}): expected "
                 f"{ev.expect.describe()}, got {r.outcome.describe()}")
    return line.rstrip()


def footer(run: RunResult) -> list[str]:
    failed = run.failures
    held = len(run.results) - len(failed)
    verdict = "PASS" if run.passed else "FAIL"
    lines = [f"{verdict}: {held}/{len(run.results)} expectations held in {run.seconds:.2f} s"]
    for r in failed:
        ev = r.event
        lines.append(f"  failed: event {ev.index + 1} \"{ev.name}\" at {ev.when} (line "
                     f"{ev.line}): expected {ev.expect.describe()}, got "
                     f"{r.outcome.describe()}")
    return lines


def text(run: RunResult) -> str:
    return "\n".join(header(run) + [event_line(r) for r in run.results] + footer(run))


def to_json(run: RunResult) -> dict[str, Any]:
    s = run.scenario
    return {
        "scenario": s.name,
        "file": s.path,
        "mode": run.mode,
        "seed": s.seed,
        "serial": run.serial,
        "passed": run.passed,
        "seconds": round(run.seconds, 4),
        "notes": run.notes,
        "summary": {"events": len(run.results), "held": len(run.results) - len(run.failures),
                    "failed": len(run.failures)},
        "events": [
            {
                "index": r.event.index + 1,
                "name": r.event.name,
                "action": r.event.action,
                "user": r.event.user,
                "line": r.event.line,
                "at_s": r.event.at_ms / 1000,
                "when": r.event.when,
                "expected": {"status": r.event.expect.status, "reason": r.event.expect.reason},
                "actual": {"status": r.outcome.status, "reason": r.outcome.reason,
                           "detail": r.outcome.detail},
                "ok": r.ok,
                "token_offset_s": r.token_offset_s,
                "estimate_s": r.estimate_s,
            }
            for r in run.results
        ],
    }


def junit(runs: list[RunResult], invalid: Sequence[tuple[str, str]] = ()) -> bytes:
    """JUnit XML: one testsuite per scenario, one testcase per event; a file that could not
    be run (`invalid`: file, problem) is a suite with one testcase in error."""
    root = ET.Element("testsuites", {
        "name": "foblab scenarios",
        "tests": str(sum(len(r.results) for r in runs) + len(invalid)),
        "failures": str(sum(len(r.failures) for r in runs)),
        "errors": str(len(invalid)),
        "time": f"{sum(r.seconds for r in runs):.3f}",
    })
    for run in runs:
        suite = ET.SubElement(root, "testsuite", {
            "name": f"{run.scenario.name} ({run.mode})",
            "tests": str(len(run.results)),
            "failures": str(len(run.failures)),
            "errors": "0",
            "skipped": "0",
            "time": f"{run.seconds:.3f}",
        })
        props = ET.SubElement(suite, "properties")
        for key, value in (("file", run.scenario.path), ("seed", str(run.scenario.seed)),
                           ("mode", run.mode), ("serial", run.serial)):
            ET.SubElement(props, "property", {"name": key, "value": value})
        classname = f"scenario.{Path(run.scenario.path).stem}"
        for r in run.results:
            case = ET.SubElement(suite, "testcase", {
                "classname": classname,
                "name": f"{r.event.index + 1:03d} {r.event.when} {r.event.name}",
                "time": f"{r.seconds:.4f}",
            })
            if not r.ok:
                failure = ET.SubElement(case, "failure", {
                    "message": f"expected {r.event.expect.describe()}, got "
                               f"{r.outcome.describe()}",
                    "type": "ExpectationFailed",
                })
                failure.text = (f"{run.scenario.path}:{r.event.line}: event {r.event.index + 1} "
                                f"\"{r.event.name}\" at {r.event.when}\n"
                                f"token offset {_seconds(r.token_offset_s)}, validator "
                                f"believes {_seconds(r.estimate_s)}")
    for path, problem in invalid:
        suite = ET.SubElement(root, "testsuite", {
            "name": f"{path} (not run)", "tests": "1", "failures": "0", "errors": "1",
            "skipped": "0", "time": "0.000"})
        case = ET.SubElement(suite, "testcase", {
            "classname": f"scenario.{Path(path).stem}", "name": "load", "time": "0"})
        error = ET.SubElement(case, "error", {"message": problem, "type": "ScenarioError"})
        error.text = problem
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"

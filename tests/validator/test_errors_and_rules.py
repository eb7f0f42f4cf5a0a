"""One error tree (a stable code and an HTTP status on every class) and one place per
input rule, used alike by every door."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from validator import errors, rules
from validator.aws import params as aws_params
from validator.config import ConfigError, check_station

ROOT = Path(__file__).resolve().parents[2]


def test_every_refusal_has_a_unique_code_and_an_error_status() -> None:
    tree = errors.refusals()
    assert len(tree) > 20
    codes = [cls.code for cls in tree]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for cls in tree:
        assert re.fullmatch(r"[a-z_]+", cls.code), cls
        assert 400 <= cls.status < 600, cls
    assert errors.UnknownSerial.status == 404 and errors.Conflict.status == 503
    assert errors.Unauthorized("x").headers == {"WWW-Authenticate": "Bearer"}


def test_no_exception_in_the_validator_restates_status_and_code() -> None:
    """The (status, code, message) triple lives on the tree only: no other exception class
    of validator/ (outside the AWS door's own AWS errors) takes a status."""
    offenders = []
    for path in (ROOT / "validator").rglob("*.py"):
        if "aws" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name != "errors.py":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__" and \
                            any(a.arg == "status" for a in item.args.args):
                        offenders.append(f"{path.name}:{node.name}")
    assert offenders == []


@pytest.mark.parametrize("name,ok", [
    ("alice", True), ("a.b+c=d,e@f_g-h", True), ("x" * 64, True), ("x" * 65, False),
    ("", False), ("al ice", False), ("alïce", False), ("a/b", False), ("a\n", False)])
def test_the_user_rule_is_one_rule_for_api_service_aws_and_scenarios(name: str, ok: bool) -> None:
    assert rules.USER.matches(name) is ok
    assert bool(re.compile(rules.USER_PATTERN[:-1] + r"\Z").match(name)) is ok  # the schema
    if len(name) <= 64:  # AWS allows the same characters, to 128
        assert bool(aws_params.USER.fullmatch(name)) is ok


def test_station_names_are_the_same_rule_in_the_config_and_the_api() -> None:
    check_station("bench-1.a_b", "/dev/null")
    with pytest.raises(ConfigError, match="1-64 letters, digits, '_', '.', '-'"):
        check_station("bad name", "/dev/null")
    assert rules.STATION.matches("bench-1.a_b") and not rules.STATION.matches("bad name")


def test_codes() -> None:
    assert rules.well_formed_code("123456", 6)
    for bad in ("12345", "1234567", "12345a", "١٢٣٤٥٦", " 12345", "+12345"):
        assert not rules.well_formed_code(bad, 6)
    assert aws_params.CODE.fullmatch("123456") and not aws_params.CODE.fullmatch("12345")

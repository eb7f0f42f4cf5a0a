"""Fixtures for the validator tests: a real SQLite file and key file per test, fixed times."""

from __future__ import annotations

from pathlib import Path

import pytest

from validator.core import Policy
from validator.service import Validator

T0 = 1_700_000_000.0  # a fixed "now"; every call passes time explicitly


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "validator.db"


@pytest.fixture
def validator(db_path: Path):
    v = Validator.open(db_path, policy=Policy())
    yield v
    v.close()

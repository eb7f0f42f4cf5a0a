"""Fixtures for the validator tests: a real database and key file per test, fixed times.

`validator` (and `database`) run every test that uses them against both stores: a SQLite
file, and a fresh database on the session's PostgreSQL server (tests/pg.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import Database  # type: ignore[import-not-found]

from validator.core import Policy
from validator.service import Validator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # one test file's helpers in another

T0 = 1_700_000_000.0  # a fixed "now"; every call passes time explicitly


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "validator.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(tmp_path / "validator.db", tmp_path / "validator.db.key", "sqlite")
    url = request.getfixturevalue("pg_url")
    return Database(url, tmp_path / "seed.key", "postgresql")


@pytest.fixture
def validator(database: Database) -> Iterator[Validator]:
    v = database.open(policy=Policy())
    yield v
    v.close()

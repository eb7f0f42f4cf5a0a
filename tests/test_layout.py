"""The layout and the direction of dependencies.

protocol imports nothing of ours; firmware_sim and validator may import protocol but never
each other; only tools (and tests) combine them. Checked on the import statements of every
module, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "firmware_sim", "validator", "tools")
ALLOWED = {
    "protocol": set(),
    "firmware_sim": {"protocol"},
    "validator": {"protocol"},
    "tools": {"protocol", "firmware_sim", "validator"},
}


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        names.append(info.name)
    return names


def _our_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package: str) -> None:
    for name in _modules(package):
        importlib.import_module(name)


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _our_imports(path) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, offenders


def test_packages_ship_py_typed() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file(), package


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from validator import core\n")
    assert _our_imports(bad) == {"validator"}


def test_cli_group_lists_only_existing_commands() -> None:
    from click.testing import CliRunner

    from tools.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "foblab" in result.output


# A door decodes its protocol, calls validator.service and encodes the answer: it never
# reaches the store or the core itself, so every door gets the same replay, throttling,
# drift and audit behaviour by construction.
DOORS = {"validator/radius": {"validator.store", "validator.core", "validator.drift",
                              "validator.otp"}}


def _full_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_door_goes_through_the_service(door: str) -> None:
    files = sorted((ROOT / door).rglob("*.py"))
    assert files, door
    offenders = []
    for path in files:
        imported = _full_imports(path)
        bad = {name for name in imported for banned in DOORS[door]
               if name == banned or name.startswith(banned + ".")}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, offenders
    assert any("validator.service" in _full_imports(p) for p in files), door


def test_door_checker_catches_a_store_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from validator import store\n")
    assert "validator.store" in _full_imports(bad)

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
PACKAGES = ("protocol", "firmware_sim", "validator", "tools", "foblab")
ALLOWED = {
    "protocol": set(),
    "firmware_sim": {"protocol"},
    "validator": {"protocol"},
    "tools": {"protocol", "firmware_sim", "validator"},
    "foblab": {"protocol", "firmware_sim", "validator", "tools"},  # the library/pytest plugin
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


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "protocol"] + ["bench"])
def test_protocol_is_imported_through_its_front_door(package: str) -> None:
    """Outside protocol/ (tests aside), `from protocol import ...` only: the package's
    `__all__` is its public list."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and \
                node.level == 0 else [a.name for a in node.names] \
                if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.startswith("protocol.")]
    assert not offenders, offenders


def test_protocol_all_is_exactly_what_it_exports() -> None:
    import protocol

    # (not identifiers: what pytest's assertion rewriting adds to the modules of an
    # installed pytest plugin's distribution, foblab's own plugin making protocol one)
    public = {n for n in vars(protocol) if n.isidentifier() and not n.startswith("_")} - {
        "codec", "connection", "errors", "framing", "messages", "vocabulary"}
    assert public == set(protocol.__all__)


def _our_modules(path: Path) -> set[str]:
    """The full names of the modules of ours a file imports (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


# Doors and the modules of ours each may import: itself and the service, nothing else (not
# the store, not the core), so every door gets the same replay, throttling and audit.
DOORS = {
    # the console also reads the vocabulary, the input rules and the error tree (leaf modules)
    "validator/ui": {"validator.service", "validator.ui", "validator.rules", "validator.errors",
                     "protocol"},
    # the HTTP API: its own modules, the service, and the request's leaf modules (schema,
    # rules, errors, keys, config, stations), validator.batching (which calls only the
    # service's verify_many) and validator.offload (threads, nothing of ours); never the
    # store, the core or the drift tracker
    "validator/http": {"validator.service", "validator.batching", "validator.offload",
                       "validator.http",
                       "validator.api_schema",
                       "validator.rules", "validator.errors", "validator.apikeys",
                       "validator.config", "validator.station", "validator.connections",
                       "validator.logs", "protocol"},
    # RADIUS also reads its own config table and a 0600 secret file; both log through
    # validator.logs (the request id), a leaf module
    "validator/radius": {"validator.service", "validator.radius", "validator.config",
                         "validator.secrets_box.read_private_file", "validator.logs"},
    # the token panel reaches tokens through the protocol client only: no back door into
    # the emulator's state
    "firmware_sim/panel": {"protocol", "firmware_sim.panel"},
}


@pytest.mark.parametrize("door", sorted(DOORS))
def test_doors_import_only_what_they_may(door: str) -> None:
    allowed = DOORS[door]
    files = sorted((ROOT / door).rglob("*.py"))
    assert files, door
    offenders = []
    for path in files:
        for module in _our_modules(path):
            # `from X import name` lists X and X.name: X may stand when an allowed entry
            # names something in it (X.name itself is still checked)
            if not any(module == a or module.startswith(a + ".") or a.startswith(module + ".")
                       for a in allowed) and module not in {"validator", "firmware_sim"}:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, offenders


def test_the_door_checker_catches_a_store_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from validator.store import SQLiteStore\n")
    assert "validator.store" in _our_modules(bad)

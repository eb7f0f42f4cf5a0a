"""The two files an operator hands the validator's tools: a backup (restore) and the API
keys file (serve, reload, api-keys). Whatever bytes they hold, the answer is the module's
one-line error or a good result, never another exception; a refused restore writes
nothing. In process, with the real modules and real files."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from validator.apikeys import (
    ApiKey,
    ApiKeyError,
    KeyRing,
    Role,
    create_key,
    digest,
    read_keys,
    revoke_key,
    write_keys,
)
from validator.backup import MAGIC, BackupError, backup, restore, seal, unseal
from validator.daemon import init_dir

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("made")
    init_dir(root / "v")
    backup(root / "v" / "foblab.toml", root / "b")
    return (root / "b").read_bytes()


def _restore(tmp: Path, blob: bytes, passphrase: bytes | None = None) -> None:
    source = tmp / "in.backup"
    source.write_bytes(blob)
    target = tmp / "out"
    try:
        restore(source, target, passphrase=passphrase)
    except BackupError as exc:
        assert "\n" not in str(exc)
        assert not target.exists() or not any(target.iterdir()) or \
            "secrets do not open" in str(exc)
    finally:
        if target.exists():
            for p in target.iterdir():
                p.unlink()
            target.rmdir()


@FUZZ
@given(st.binary(max_size=2048))
def test_restore_any_bytes(tmp_path: Path, blob: bytes) -> None:
    _restore(tmp_path, blob)


@FUZZ
@given(st.data())
def test_restore_a_real_backup_altered(tmp_path: Path, made: bytes, data: st.DataObject) -> None:
    blob = bytearray(made)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(blob) // 2, len(blob)))
    _restore(tmp_path, bytes(blob[:cut]))


def test_restore_refuses_a_tar_with_paths_or_links(tmp_path: Path) -> None:
    for name, kind in (("../evil", tarfile.REGTYPE), ("sub/file", tarfile.REGTYPE),
                       ("link", tarfile.SYMTYPE)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(BackupError, match="unexpected entry"):
            restore(_write(tmp_path / f"{kind!r}.backup", buffer.getvalue()), tmp_path / "o")
        assert not (tmp_path / "o").exists()
    assert not (tmp_path.parent / "evil").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_seal_round_trip_and_refusals() -> None:
    sealed = seal(b"tar bytes", b"correct horse")
    assert sealed.startswith(MAGIC) and b"tar bytes" not in sealed
    assert unseal(sealed, b"correct horse") == b"tar bytes"
    with pytest.raises(BackupError, match="wrong passphrase"):
        unseal(sealed, b"incorrect horse")
    with pytest.raises(BackupError, match="encrypted"):
        unseal(sealed, None)
    with pytest.raises(BackupError, match="truncated"):
        unseal(MAGIC + b"x", b"correct horse")
    assert unseal(b"plain", None) == b"plain"


@FUZZ
@given(st.binary(max_size=1024) | st.text(max_size=400).map(str.encode))
def test_keys_file_any_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "api-keys.toml"
    path.unlink(missing_ok=True)
    path.write_bytes(raw)
    path.chmod(0o600)
    try:
        keys = read_keys(path)
    except ApiKeyError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(isinstance(k, ApiKey) for k in keys)


def test_keys_file_life(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.toml"
    write_keys(path, [ApiKey("admin", Role.ADMIN, digest("a" * 30), 1.0)])
    assert path.stat().st_mode & 0o777 == 0o600
    key = create_key(path, "gw", Role.VERIFIER, now=time.time())
    assert key not in path.read_text() and digest(key).hex() in path.read_text()
    ring = KeyRing.from_file(path)
    found = ring.lookup(key.encode())
    assert found is not None and (found.name, found.role) == ("gw", Role.VERIFIER)
    assert ring.lookup(b"a" * 30) is not None and ring.lookup(b"b" * 30) is None
    revoke_key(path, "gw")
    ring.replace(KeyRing.from_file(path))  # what a reload does
    assert ring.lookup(key.encode()) is None
    with pytest.raises(ApiKeyError, match="last admin key"):
        revoke_key(path, "admin")

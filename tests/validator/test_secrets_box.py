"""The box itself, in-process: legacy secrets still open, every refusal says what and where,
a rotated master key is the one that wraps, a fetched data key is fetched once, and the
crash hook really stops the process at the step it names. Written against the mutants
mutation testing left alive (docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from validator.secrets_box import (
    CRASH_ENV,
    KeyFileError,
    SealError,
    SecretBox,
    key_id,
    new_data_key,
    read_key,
    unwrap,
    write_key_atomically,
)

SEED = bytes.fromhex("00112233445566778899aabbccddeeff00112233")


def _legacy_sealed(master: bytes, serial: str, seed: bytes) -> bytes:
    """A seed as databases from before envelope keys hold it (format 1)."""
    nonce = os.urandom(12)
    return (b"\x01" + key_id(master) + nonce
            + AESGCM(master).encrypt(nonce, seed, b"foblab-seed-v1\x00" + serial.encode()))


def test_key_ids_are_stable_across_versions() -> None:
    """Legacy sealed secrets in old databases name their master key by this id: it must
    never change, or those rows stop opening."""
    assert key_id(bytes(32)).hex() == "46b05636abc66cca"
    assert key_id(bytes(range(32))).hex() == "774f03e5e6c5828e"


def test_legacy_secrets_open_under_the_master_or_an_old_key() -> None:
    master, old = os.urandom(32), os.urandom(32)
    assert SecretBox(master).open("TOK1", _legacy_sealed(master, "TOK1", SEED)) == SEED
    box = SecretBox(os.urandom(32), legacy=[old])
    assert box.open("TOK1", _legacy_sealed(old, "TOK1", SEED)) == SEED
    with pytest.raises(SealError, match="does not authenticate"):
        box.open("TOK2", _legacy_sealed(old, "TOK1", SEED))
    with pytest.raises(SealError, match="does not hold"):
        box.open("TOK1", _legacy_sealed(os.urandom(32), "TOK1", SEED))


def test_an_empty_secret_round_trips() -> None:
    box = SecretBox(os.urandom(32))
    box.add_data_key(*new_data_key(), current=True)
    sealed = box.seal("TOK1", b"")
    assert len(sealed) == 1 + 8 + 12 + 16 and box.open("TOK1", sealed) == b""


def test_data_keys_are_32_bytes() -> None:
    kid, key = new_data_key()
    assert len(kid) == 8 and len(key) == 32


def test_every_refusal_says_what_and_where(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as exc:
        read_key(missing)
    assert str(exc.value) == f"key file {missing} does not exist"
    with pytest.raises(KeyFileError) as exc:
        read_key(tmp_path)  # a directory: exists, cannot be read as a file
    assert str(exc.value) == f"cannot read key file {tmp_path}: Is a directory"
    loose = tmp_path / "loose.key"
    write_key_atomically(loose, os.urandom(32))
    os.chmod(loose, 0o640)
    with pytest.raises(KeyFileError) as exc:
        read_key(loose)
    assert str(exc.value) == (f"key file {loose} is readable by others (mode 640); "
                              "chmod 600 it")
    with pytest.raises(KeyFileError) as exc:
        SecretBox(bytes(16))
    assert str(exc.value) == "the master key must be 32 bytes"
    with pytest.raises(SealError) as seal_exc:
        SecretBox(os.urandom(32)).seal("TOK1", SEED)
    assert str(seal_exc.value) == "no data key to seal with"
    kid, data_key = new_data_key()
    wrapped = SecretBox(os.urandom(32)).wrap(kid, data_key)
    with pytest.raises(SealError) as seal_exc:
        unwrap(os.urandom(32), kid, wrapped)
    assert str(seal_exc.value) == f"data key {kid.hex()} does not open with this master key"


def test_after_set_master_the_new_key_wraps() -> None:
    old, new = os.urandom(32), os.urandom(32)
    box = SecretBox(old)
    box.set_master(new)
    kid, data_key = new_data_key()
    assert box.master == new and unwrap(new, kid, box.wrap(kid, data_key)) == data_key
    with pytest.raises(SealError):
        unwrap(old, kid, box.wrap(kid, data_key))


def test_a_fetched_data_key_is_fetched_once() -> None:
    master = os.urandom(32)
    maker = SecretBox(master)
    kid, data_key = new_data_key()
    maker.add_data_key(kid, data_key, current=True)
    sealed = maker.seal("TOK1", SEED)
    fetched: list[bytes] = []

    def fetch(wanted: bytes) -> bytes | None:
        fetched.append(wanted)
        return maker.wrap(kid, data_key) if wanted == kid else None

    reader = SecretBox(master, fetch=fetch)
    assert reader.open("TOK1", sealed) == SEED and reader.open("TOK1", sealed) == SEED
    assert fetched == [kid]


_CRASHER = """
import sys
from pathlib import Path
from validator.secrets_box import write_key_atomically
write_key_atomically(Path(sys.argv[1]), bytes(range(32)), step="rotate")
"""


@pytest.mark.parametrize("point", ["half-written", "tmp-written"])
def test_the_crash_hook_kills_the_process_at_its_step(tmp_path: Path, point: str) -> None:
    path = tmp_path / "seed.key"
    write_key_atomically(path, bytes(32), step="rotate")  # hook unset: no crash
    assert read_key(path) == bytes(32)
    env = {**os.environ, CRASH_ENV: f"rotate:{point}"}
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(path)], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr  # SIGKILL: no cleanup ran
    full = bytes(range(32)).hex().encode() + b"\n"
    tmp = tmp_path / "seed.key.tmp"
    assert tmp.read_bytes() == (full[: len(full) // 2] if point == "half-written" else full)
    assert read_key(path) == bytes(32)  # the key file itself untouched

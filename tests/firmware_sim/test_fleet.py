"""Fleets: many tokens on one loop, the manifest as readiness signal, the PSKC seed file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pskc
import pyotp
import pytest

from firmware_sim.background import serve_fleet
from firmware_sim.fleet import FleetSpec, Group, load_config
from protocol.connection import TokenClient
from protocol.messages import ClockRequest

Opener = Callable[..., TokenClient]


def test_fleet_manifest_and_encrypted_pskc(tmp_path: Path, open_client: Opener) -> None:
    spec = FleetSpec(directory=tmp_path, seed=7, qa=True, pskc_passphrase="s3cret",
                     groups=(Group(3, "keyfob", drift_spread=20), Group(2, "event"),
                             Group(1, "card-8")))
    with serve_fleet(spec) as fleet:
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        tokens = manifest["tokens"]
        assert len(tokens) == 6
        assert {t["model"] for t in tokens.values()} == {"keyfob", "event", "card-8"}
        container = pskc.PSKC(str(fleet.seed_file))
        container.encryption.derive_key("s3cret")
        keys = {k.serial: k for k in container.keys}
        assert set(keys) == set(tokens)
        for serial, entry in tokens.items():
            assert Path(entry["port"]).is_symlink()
            c = open_client(entry["port"])
            assert c.info().serial == serial
            key: Any = keys[serial]
            digest = {"HMAC-SHA1": "sha1", "HMAC-SHA256": "sha256"}[key.algorithm_suite]
            import base64
            import hashlib

            b32 = base64.b32encode(key.secret).decode()
            code = c.press().code
            if entry["kind"] == "hotp":
                expected = pyotp.HOTP(b32, digits=key.response_length,
                                      digest=getattr(hashlib, digest)).at(key.counter)
                assert code == expected
            else:
                t = c.clock_command(ClockRequest()).token_time_ms / 1000
                totp = pyotp.TOTP(b32, digits=key.response_length, interval=key.time_interval,
                                  digest=getattr(hashlib, digest))
                assert code in (totp.at(t), totp.at(t - 1))
        drifts = {open_client(tokens[s]["port"]).clock().drift.ppm for s in list(tokens)[:3]}
        assert len(drifts) > 1 and all(abs(d) <= 20 for d in drifts)
    assert not (tmp_path / "manifest.json").exists()
    assert not any((tmp_path / "ports").iterdir())


def test_fleet_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    serials = []
    for name in ("a", "b"):
        with serve_fleet(directory=tmp_path / name, count=4, seed=123, drift_spread=5,
                         durable=False) as fleet:
            serials.append({s: t.state.clock.drift.ppm for s, t in fleet.tokens.items()})
    assert serials[0] == serials[1]


def test_plain_pskc_and_config_file(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('seed = 5\n[[group]]\nmodel = "card"\ncount = 2\ndrift_ppm = 3.5\n')
    fields = load_config(config)
    with serve_fleet(directory=tmp_path / "f", **fields) as fleet:
        keys = pskc.PSKC(str(fleet.seed_file)).keys
        assert len(keys) == 2 and all(k.secret and len(k.secret) == 20 for k in keys)
        assert all(t.state.clock.drift.ppm == 3.5 for t in fleet.tokens.values())
        assert all(s.startswith("GACD") for s in fleet.tokens)


def test_the_seed_file_passphrase_stays_out_of_the_spec_repr(tmp_path: Path) -> None:
    spec = FleetSpec(directory=tmp_path, count=1, pskc_passphrase="s3cret-pass")
    assert "s3cret-pass" not in repr(spec) and "s3cret-pass" not in str(spec)


def test_a_second_fleet_refuses_a_running_fleets_directory(tmp_path: Path) -> None:
    """It must not overwrite seeds.pskc nor delete the running fleet's manifest."""
    from firmware_sim.fleet import FleetBusyError

    directory = tmp_path / "f"
    with serve_fleet(directory=directory, count=3, seed=1) as fleet:
        seeds = fleet.seed_file.read_bytes()
        manifest = fleet.manifest_path.read_bytes()
        with pytest.raises(FleetBusyError, match=r"in use by another fleet \(pid \d+\)"):
            with serve_fleet(directory=directory, count=2, seed=2):
                pass
        assert fleet.seed_file.read_bytes() == seeds
        assert fleet.manifest_path.read_bytes() == manifest
    with serve_fleet(directory=directory, count=2, seed=2) as again:  # free once it stopped
        assert len(again.tokens) == 2

"""Many tokens in one process, on one asyncio loop, with a manifest and a vendor seed file.

`Fleet(spec).start()` (on a running loop) creates every token (state files in
`<dir>/state`, PTY symlinks in `<dir>/ports`), writes the batch's seed file as a vendor ships
it (`<dir>/seeds.pskc`, RFC 6030, optionally PBKDF2-encrypted), and only then, atomically,
`<dir>/manifest.json`: its appearance is the readiness signal. `close()` removes the manifest
and the links and unlocks the state files (the state and the seed file stay).

A directory serves one fleet at a time: `<dir>/fleet.lock` is locked (flock) while a fleet
runs, and a second fleet on the same directory fails with `FleetBusyError` before it touches
anything (the running fleet's seed file and manifest stay as they are).

With `seed` set, serials, secrets and random drift all come from one `random.Random(seed)`,
so the same spec gives the same fleet. (Those secrets are then predictable: for tests only.)
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import resource
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.clock import Drift
from firmware_sim.models import DEFAULT_MODEL, PRESETS, SEED_BYTES, build_model
from firmware_sim.ports import PtyPort
from firmware_sim.runner import Token, open_token
from firmware_sim.storage import StorageError, atomic_write
from firmware_sim.token import TokenState

MANIFEST = "manifest.json"
SEED_FILE = "seeds.pskc"
_PSKC_URI = "urn:ietf:params:xml:ns:keyprov:pskc:"


@dataclass(frozen=True)
class Group:
    """`count` tokens of one model with one drift distribution."""

    count: int
    model: str = DEFAULT_MODEL
    drift_ppm: float = 0.0
    """Mean constant drift of the group, ppm."""
    drift_spread: float = 0.0
    """Each token's drift is drift_ppm + uniform(-spread, +spread) ppm."""
    aging_ppm_per_year: float = 0.0

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")
        if self.model not in PRESETS:
            raise ValueError(f"unknown model {self.model!r}; have: {', '.join(PRESETS)}")
        if self.drift_spread < 0:
            raise ValueError("drift spread must be >= 0")


@dataclass(frozen=True)
class FleetSpec:
    """What to start. `groups` if given, else one group of `count` x `model`."""

    directory: Path
    count: int = 0
    model: str = DEFAULT_MODEL
    drift_ppm: float = 0.0
    drift_spread: float = 0.0
    groups: tuple[Group, ...] = ()
    seed: int | None = None
    qa: bool = False
    pskc_passphrase: str | None = field(default=None, repr=False)
    durable: bool = True
    """fsync every state file (a crash-proof token); off only makes sense for benchmarks."""
    baud: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))

    def all_groups(self) -> tuple[Group, ...]:
        if self.groups:
            return self.groups
        return (Group(self.count, self.model, self.drift_ppm, self.drift_spread),)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a fleet TOML file into FleetSpec keyword arguments.

    ```toml
    seed = 42                   # optional, as --seed
    qa = true                   # optional, as --qa
    [[group]]
    model = "keyfob"
    count = 20
    drift_ppm = 0.0             # optional
    drift_spread = 15.0         # optional: uniform +-15 ppm
    aging_ppm_per_year = 1.0    # optional
    ```
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read fleet config {path}: {exc}") from exc
    out: dict[str, Any] = {}
    for key in ("seed", "qa", "pskc_passphrase"):
        if key in data:
            out[key] = data[key]
    groups = data.get("group", [])
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"{path}: needs at least one [[group]] with a count")
    try:
        out["groups"] = tuple(Group(**g) for g in groups)
    except TypeError as exc:
        raise ValueError(f"{path}: bad [[group]]: {exc}") from exc
    return out


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class FleetBusyError(StorageError):
    """Another fleet runs in this directory."""


class Fleet:
    """The running fleet: `tokens` (serial -> Token) and `ports` (serial -> PtyPort)."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.directory = spec.directory
        self.tokens: dict[str, Token] = {}
        self.ports: dict[str, PtyPort] = {}
        self._lock_fd: int | None = None

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def seed_file(self) -> Path:
        return self.directory / SEED_FILE

    async def start(self, on_token: Callable[[int], None] | None = None) -> Fleet:
        """Open every token and its port, then write the seed file and the manifest;
        `on_token(1)` after each token (for a progress bar)."""
        loop = asyncio.get_running_loop()
        spec = self.spec
        groups = spec.all_groups()
        total = sum(g.count for g in groups)
        _raise_fd_limit(3 * total + 256)  # pty master + our slave + state lock per token
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        self.manifest_path.unlink(missing_ok=True)  # not ready until we say so
        rng = random.Random(spec.seed) if spec.seed is not None else random.Random(os.urandom(32))
        state_dir = self.directory / "state"
        links = self.directory / "ports"
        try:
            for group in groups:
                model = build_model(group.model)
                for _ in range(group.count):
                    serial = model.make_serial(rng)
                    while serial in self.tokens:
                        serial = model.make_serial(rng)
                    secret = rng.randbytes(SEED_BYTES[model.hash])
                    ppm = group.drift_ppm + rng.uniform(-group.drift_spread, group.drift_spread)
                    drift = Drift(ppm=round(ppm, 3), aging_ppm_per_year=group.aging_ppm_per_year)
                    token = open_token(model, serial=serial, seed=secret, drift=drift,
                                       qa=spec.qa, state_dir=state_dir, durable=spec.durable)
                    self.tokens[serial] = token
                    self.ports[serial] = PtyPort(loop, token.session, link=links / serial,
                                                 baud=spec.baud)
                    if on_token is not None:
                        on_token(1)
            self._write_pskc()
            self._write_manifest()
        except BaseException:
            await self.close()
            raise
        return self

    def _lock(self) -> None:
        path = self.directory / "fleet.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise FleetBusyError(
                f"fleet directory {self.directory} is in use by another fleet"
                + (f" (pid {holder})" if holder.isdigit() else "")
                + ": stop it first, or use another --dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _write_pskc(self) -> None:
        write_seed_file(self.seed_file, [t.state for t in self.tokens.values()],
                        passphrase=self.spec.pskc_passphrase)

    def manifest(self) -> dict[str, Any]:
        return {
            "version": 1,
            "seed_file": str(self.seed_file),
            "seed_file_encrypted": bool(self.spec.pskc_passphrase),
            "tokens": {
                serial: {
                    "port": self.ports[serial].url,
                    "device": self.ports[serial].path,
                    "model": token.state.model,
                    "kind": token.state.kind,
                    "state_file": str(token.file.path) if token.file else None,
                }
                for serial, token in self.tokens.items()
            },
        }

    def _write_manifest(self) -> None:
        data = json.dumps(self.manifest(), indent=1).encode() + b"\n"
        atomic_write(self.manifest_path, data)

    async def close(self) -> None:
        """Remove the manifest first (no longer ready), then the ports, then unlock."""
        if self._lock_fd is None:  # never started, or another fleet holds the directory
            return
        self.manifest_path.unlink(missing_ok=True)
        for port in self.ports.values():
            port.close()
        for token in self.tokens.values():
            token.close()
        self.ports.clear()
        self.tokens.clear()
        os.close(self._lock_fd)  # drops the flock
        self._lock_fd = None


def write_seed_file(path: Path, states: Iterable[TokenState], *,
                    passphrase: str | None = None) -> None:
    """The factory's copy of the tokens' seeds, as a vendor ships it: a PSKC (RFC 6030)
    file, PBKDF2-encrypted with `passphrase` when given, written atomically. Blank tokens
    are left out."""
    import io

    import pskc

    container = pskc.PSKC()
    for st in states:
        if st.seed is None:
            continue
        extra: dict[str, Any] = (
            {"time_interval": st.period, "time_offset": 0}
            if st.kind == "totp" else {"counter": st.counter}
        )
        container.add_key(
            id=st.serial, serial=st.serial, secret=st.seed, manufacturer="foblab",
            model=st.model, algorithm=_PSKC_URI + st.kind,
            algorithm_suite="HMAC-" + st.hash.upper(), response_encoding="DECIMAL",
            response_length=st.digits, **extra,
        )
    if passphrase:
        container.encryption.setup_pbkdf2(passphrase)
    buf = io.BytesIO()
    container.write(buf)
    atomic_write(path, buf.getvalue())

"""A lab: emulated tokens and a validator daemon for one test module (or one `with` block)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_sim.clock import Crystal
from firmware_sim.runner import TokenRunner, open_token, wall_ms
from foblab._clock import LabClock
from foblab._token import PORTS, LabToken, new_seed
from foblab._validator import AwsKeys, LabValidator

if TYPE_CHECKING:
    from firmware_sim.background import LoopThread


class Lab:
    """Tokens, a validator and (optionally) a time machine, cleaned up on `close()`.

    Use `foblab.lab()` as a context manager. The validator starts on first use of
    `lab.validator`; tokens are made by `lab.token(...)`. With `time_machine=True` the
    validator and every token read `lab.clock`, which tests move by hand.
    """

    def __init__(self, directory: str | Path | None = None, *,
                 time_machine: bool = False) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="foblab-lab-")) if directory is None \
            else Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clock = LabClock() if time_machine else None
        self._validator: LabValidator | None = None
        self._tokens: list[LabToken] = []
        self._loop: LoopThread | None = None
        self._closed = False

    # -- the pieces -------------------------------------------------------------------------

    @property
    def clock(self) -> LabClock:
        """The lab's time machine (only with `foblab.lab(time_machine=True)`)."""
        if self._clock is None:
            raise RuntimeError("this lab runs on true time; start it with "
                               "foblab.lab(time_machine=True) to move its clock")
        return self._clock

    @property
    def validator(self) -> LabValidator:
        """The lab's validator daemon, started on first use."""
        if self._closed:
            raise RuntimeError("this lab is closed")
        if self._validator is None:
            self._validator = LabValidator(self.dir / "validator",
                                           None if self._clock is None else self._clock.now)
        return self._validator

    def token(self, model: str = "keyfob", *, kind: str | None = None,
              hash: str | None = None, digits: int | None = None,
              period: int | None = None, drift_ppm: float = 0.0, qa: bool = True,
              port: str = "memory", serial: str | None = None,
              seed: bytes | None = None) -> LabToken:
        """A new emulated token: a `model` preset (keyfob, card, keyfob-60, card-8, event)
        with any of `kind` (totp/hotp), `hash` (sha1/sha256/sha512), `digits` and `period`
        overridden; its crystal `drift_ppm` fast; QA commands allowed unless `qa=False`;
        `port` "memory" (in process), "pty" or "tcp" (also on a port for code under test)."""
        if self._closed:
            raise RuntimeError("this lab is closed")
        if port not in PORTS:
            raise ValueError(f"port must be one of {', '.join(PORTS)}, not {port!r}")
        now = wall_ms if self._clock is None else self._clock.now_ms
        options: dict[str, Any] = {"kind": kind, "hash": hash, "digits": digits,
                                   "period": period}
        from firmware_sim.models import build_model

        base = build_model(model, **options)
        secret = new_seed(base.hash) if seed is None else bytes(seed)
        tok = open_token(base, serial=serial, seed=secret, qa=qa,
                         crystal=Crystal(ppm=float(drift_ppm)),
                         state_dir=self.dir / "tokens", durable=False, now=now)
        runner: TokenRunner | None = None
        try:
            if port != "memory":
                if self._loop is None:
                    from firmware_sim.background import LoopThread  # only for ports

                    self._loop = LoopThread()
                runner = TokenRunner(tok, pty=port == "pty",
                                     pty_link=self.dir / "ports" / tok.serial,
                                     tcp=("127.0.0.1", 0) if port == "tcp" else None)
                self._loop.run(runner.start())
            made = LabToken(tok, seed=secret, port=port, runner=runner, loop=self._loop,
                            clock=self._clock)
        except BaseException:
            tok.close()
            raise
        self._tokens.append(made)
        return made

    def aws_keys(self) -> AwsKeys:
        """A fresh access key pair for the validator's AWS endpoint."""
        return self.validator.aws_keys()

    # -- clean-up ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the validator, close every token and port, remove the lab's folder."""
        if self._closed:
            return
        self._closed = True
        try:
            for tok in reversed(self._tokens):
                tok.close()
            self._tokens.clear()
            if self._validator is not None:
                self._validator.close()
            if self._loop is not None:
                self._loop.close()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab({self.dir}, {len(self._tokens)} token(s), validator={self._validator})"


def lab(directory: str | Path | None = None, *, time_machine: bool = False) -> Lab:
    """A lab for a `with` block:

    >>> import foblab
    >>> with foblab.lab() as lab:
    ...     tok = lab.token()
    ...     user = lab.validator.new_user()
    ...     _ = lab.validator.enroll(user, tok)
    ...     lab.validator.verify(user, tok.next_code()).reason
    'accepted'
    """
    return Lab(directory, time_machine=time_machine)

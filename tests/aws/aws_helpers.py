"""Helpers shared by the AWS endpoint tests (imported by name: conftest puts this folder
on sys.path)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyotp
import pytest


@dataclass(frozen=True)
class Otp:
    """Codes computed independently of foblab (pyotp) from a device's base32 seed."""

    seed: str

    def at(self, step: int) -> str:
        return pyotp.TOTP(self.seed).generate_otp(step)

    def wrong(self, near: int) -> str:
        """A well-formed code that no step near `near` shows."""
        taken = {self.at(s) for s in range(near - 50, near + 50)}
        return next(f"{n:06d}" for n in range(123456, 10**6) if f"{n:06d}" not in taken)


def settled_step(period: int = 30, margin: float = 4.0) -> int:
    """The current TOTP step, first waiting out the last `margin` seconds of a step so that
    a short test sequence stays inside it."""
    t = time.time()
    if t % period > period - margin:
        time.sleep(period - t % period + 0.05)
    return int(time.time() // period)


@pytest.fixture
def step() -> int:
    return settled_step()


def error_of(excinfo: pytest.ExceptionInfo) -> tuple[str, int, str]:
    """(AWS code, HTTP status, message) of a botocore ClientError."""
    err = excinfo.value.response
    return (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"],
            err["Error"].get("Message", ""))

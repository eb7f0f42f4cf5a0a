"""The command line's choices of the token vocabulary, derived from `protocol` once.

Every `--kind`, `--hash`, `--digits` and `--temp-mode` option of every `foblab` command
takes one of these, so a hash added to `protocol.Hash` is offered everywhere at once.
"""

from __future__ import annotations

import click

from protocol import TOKEN_DIGITS, Hash, Kind, TemperatureMode

KIND = click.Choice(Kind.labels())
HASH = click.Choice(Hash.labels())
DIGITS = click.Choice([str(d) for d in TOKEN_DIGITS])
"""Digits as the words typed (click hands back a str; commands convert with int())."""
TEMPERATURE_MODE = click.Choice(TemperatureMode.labels())

ALL: dict[str, click.Choice[str]] = {"kind": KIND, "hash": HASH, "digits": DIGITS,
                                     "temperature_mode": TEMPERATURE_MODE}
"""Every vocabulary choice by name (the vocabulary agreement test reads it)."""

"""The token vocabulary agrees everywhere: protocol, emulator, validator, API schema, CLI.

Every kind, hash, temperature mode and digit count of `protocol` is enumerated and pushed
through each side; each side's own list of choices must be exactly the vocabulary's. A hash
added to `protocol.Hash` that some side does not know makes this fail, naming the side.
"""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from cli_tree import commands  # type: ignore[import-not-found]

import protocol
from firmware_sim import device
from firmware_sim.clock import Crystal
from firmware_sim.models import PRESETS, build_model
from firmware_sim.otp_engine import hotp as token_hotp
from firmware_sim.token import new_token
from protocol import (
    TOKEN_DIGITS,
    Hash,
    InfoRequest,
    Kind,
    ProvisionRequest,
    TemperatureMode,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from tools import choices
from tools.cli import SUBCOMMANDS, main
from tools.scenario import spec
from validator import api_schema, core
from validator.importers import parse_csv
from validator.otp import hotp as validator_hotp

VOCABULARY: dict[str, tuple[str, ...]] = {
    "kind": Kind.labels(), "hash": Hash.labels(), "temperature_mode": TemperatureMode.labels(),
    "digits": tuple(str(d) for d in TOKEN_DIGITS)}
OPTION_VOCABULARY = {"kind": "kind", "hash_": "hash", "digits": "digits",
                     "temp_mode": "temperature_mode"}
"""The click parameter names that carry a vocabulary word, and which one."""


def test_labels_wire_values_and_seed_lengths_are_one_each() -> None:
    for enum in (Kind, Hash, TemperatureMode):
        members = list(enum)
        assert len({m.label for m in members}) == len({m.wire for m in members}) == len(members)
        for m in members:
            assert enum.from_label(m.label.upper()) is m and enum.from_wire(m.wire) is m
            assert json.loads(json.dumps(m)) == m.label
        with pytest.raises(ValueError, match="must be one of"):
            enum.from_label("no-such-thing")
        with pytest.raises(ValueError):
            enum.from_wire(250)
    for h in Hash:
        assert h.seed_bytes == __import__("hashlib").new(h.hashlib_name).digest_size
    assert Hash.from_label("HMAC-SHA256") is Hash.from_label("sha-256") is Hash.SHA256


def test_the_protocol_package_exports_the_vocabulary_and_nothing_stray() -> None:
    assert {"Kind", "Hash", "TemperatureMode", "TOKEN_DIGITS"} <= set(protocol.__all__)
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    leaked = {"dataclass", "field", "IntEnum", "Final", "annotations"} & set(dir(protocol))
    assert not leaked


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("hash_", list(Hash))
@pytest.mark.parametrize("digits", TOKEN_DIGITS)
def test_every_combination_crosses_the_wire_into_the_emulator_and_the_validator(
        kind: Kind, hash_: Hash, digits: int) -> None:
    seed = bytes(range(1, hash_.seed_bytes + 1))
    # the wire, both ways
    request = ProvisionRequest(seed=seed, kind=kind, hash=hash_, digits=digits)
    assert decode_request(*encode_request(request)) == request
    # the emulator: a blank token provisioned with it reports it back over INFO
    state = new_token(build_model("keyfob"), 0, serial="VOCAB1")
    provisioned = device.handle(state, PRESETS["keyfob"], request, 0)
    info = device.handle(provisioned.state, PRESETS["keyfob"], InfoRequest(), 0).reply
    command, payload = encode_reply(protocol.Command.INFO, info)
    info = decode_reply(command, payload, protocol.Command.INFO)
    assert (info.kind, info.hash, info.digits) == (kind, hash_, digits)
    assert info.to_json()["kind"] == kind.label and info.to_json()["hash"] == hash_.label
    # the validator: its state takes it, and its codes are the token's
    state_v = core.TokenState(kind=kind, digits=digits, hash=hash_.label)
    assert core.TokenState.from_json(json.loads(json.dumps(state_v.to_json()))) == state_v
    assert validator_hotp(seed, 7, digits, hash_) == token_hotp(seed, 7, digits=digits,
                                                                 hash=hash_)
    # the importer
    csv = (f"serial,secret_hex,kind,digits,period_or_counter,hash\n"
           f"V1,{seed.hex()},{kind.label.upper()},{digits},,{hash_.label}\n")
    record = parse_csv(csv).records[0]
    assert (record.kind, record.hash, record.digits) == (kind, hash_, digits)


def test_every_temperature_mode_crosses_the_wire_into_the_crystal() -> None:
    for mode in TemperatureMode:
        crystal = Crystal(temperature_mode=mode.label, temperature_c=20.0)
        assert crystal.temperature_mode is mode
        settings = device.drift_settings(crystal)
        request = protocol.SetDriftRequest(settings)
        assert decode_request(*encode_request(request)) == request


def test_the_api_schema_offers_exactly_the_vocabulary() -> None:
    assert tuple(api_schema.KIND["enum"]) == Kind.labels()
    assert tuple(api_schema.HASH["enum"]) == Hash.labels()
    assert tuple(api_schema.DIGITS["enum"]) == TOKEN_DIGITS
    for name in ("TokenCreate", "Enroll"):
        props = api_schema.SCHEMAS[name]["properties"]
        assert props["kind"] is api_schema.KIND and props["hash"] is api_schema.HASH


def test_every_cli_choice_of_a_vocabulary_word_is_the_vocabulary() -> None:
    ctx = click.Context(main)
    seen: dict[str, int] = {}
    for command in [c for path, c in commands().items() if path]:
        for param in command.params:
            word = OPTION_VOCABULARY.get(param.name or "")
            if word is None or not isinstance(param.type, click.Choice):
                continue
            assert tuple(param.type.choices) == VOCABULARY[word], (command.name, param.name)
            seen[word] = seen.get(word, 0) + 1
    # sim run, token provision, validator token add and station enroll at least
    assert seen["kind"] >= 4 and seen["hash"] >= 4 and seen["digits"] >= 4
    assert seen["temperature_mode"] >= 1
    assert {name: tuple(c.choices) for name, c in choices.ALL.items()} == VOCABULARY
    assert set(SUBCOMMANDS) <= set(main.list_commands(ctx))


def test_scenario_files_take_the_vocabulary() -> None:
    assert spec.TEMPERATURES == TemperatureMode.labels()
    for h in Hash:
        parsed = _scenario(f'[token]\nhash = "{h.label}"\n')
        assert parsed.token.hash is h


def _scenario(extra: str) -> Any:
    event = '[[event]]\naction = "enable"\nday = 0\nexpect = "accepted"\n'
    text = 'name = "v"\nseed = 1\n' + extra + event
    return spec.parse(text, "vocabulary.toml")


def test_every_kind_is_read_from_a_pskc_file_in_every_dialect() -> None:
    """The PSKC algorithm table is derived from `Kind`: each spelling of each kind maps to
    it, the PIN key is named apart, and nothing else is in the table."""
    for kind in Kind:
        assert protocol.PSKC_ALGORITHMS[kind.pskc_algorithm] == kind.label
        assert Kind.from_label(protocol.PSKC_ALGORITHMS["http://www.ietf.org/keyprov/pskc#"
                                                        + kind.label]) is kind
    assert set(protocol.PSKC_ALGORITHMS.values()) == {*Kind.labels(), protocol.PSKC_PIN}
    assert all(name == name.lower() for name in protocol.PSKC_ALGORITHMS)

"""The API's request schemas, the checker that enforces them, and the OpenAPI document.

The JSON Schemas below are the single source of truth: `check()` enforces exactly the
subset of JSON Schema they use (type, properties, required, additionalProperties: false,
enum, pattern, min/maxLength, minimum/maximum), and `openapi()` publishes the same dicts at
/openapi.json. A body that passes `check()` has the types the handlers expect, so bad input
is a 4xx here and never reaches the core as a surprise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from protocol import MAX_PERIOD, MIN_PERIOD, TOKEN_DIGITS, Hash, Kind
from validator import rules
from validator.errors import InvalidJson, InvalidRequest
from validator.service import MAX_COUNTER


def _text(rule: rules.Rule, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": rule.pattern, "minLength": rule.min_length,
            "maxLength": rule.max_length, **extra}


CODE = _text(rules.CODE, description="the digits on the token's display")
USER = _text(rules.USER)
SERIAL = _text(rules.SERIAL)
STATION = {"type": "string", "pattern": rules.STATION.pattern}
HASH = {"type": "string", "enum": list(Hash.labels())}
KIND = {"type": "string", "enum": list(Kind.labels())}
DIGITS = {"type": "integer", "enum": list(TOKEN_DIGITS)}
PERIOD = {"type": "integer", "minimum": MIN_PERIOD, "maximum": MAX_PERIOD}
COUNTER = {"type": "integer", "minimum": 0, "maximum": MAX_COUNTER}  # as import allows


def _obj(props: dict[str, Any], required: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False, **extra}


SCHEMAS: dict[str, dict[str, Any]] = {
    "TokenCreate": _obj({
        "serial": SERIAL,
        "secret_b32": {"type": "string", "minLength": 16, "maxLength": 208,
                       "pattern": "^[A-Za-z2-7]+=*$", "description": "RFC 4648 base32"},
        "secret_hex": {"type": "string", "minLength": 20, "maxLength": 256,
                       "pattern": "^[0-9A-Fa-f]+$"},
        "kind": KIND, "hash": HASH, "digits": DIGITS, "period": PERIOD, "counter": COUNTER,
        "t0": {"type": "integer", "minimum": 0, "maximum": 2**40},
    }, ["serial"], description="exactly one of secret_b32 and secret_hex (16-128 bytes, "
       "or from min_secret_bytes, at least 10)"),
    "TokenImport": _obj({
        "format": {"type": "string", "enum": ["pskc", "csv"]},
        "content": {"type": "string", "minLength": 1},
        "passphrase": {"type": "string", "minLength": 1, "maxLength": 1024},
        "key_hex": {"type": "string", "pattern": "^[0-9A-Fa-f]{32,64}$"},
        "skip_duplicates": {"type": "boolean"},
        "dry_run": {"type": "boolean",
                    "description": "read, decrypt and check; write nothing"},
    }, ["format", "content"]),
    "DeviceEnable": _obj({"serial": SERIAL, "code1": CODE, "code2": CODE},
                         ["serial", "code1", "code2"]),
    "CodePair": _obj({"code1": CODE, "code2": CODE}, ["code1", "code2"]),
    "Verify": _obj({"user": USER, "code": CODE, "serial": SERIAL}, ["user", "code"]),
    "Enroll": _obj({
        "user": USER,
        "provision": {"type": "boolean", "description": "allow provisioning a blank token"},
        "kind": KIND, "hash": HASH, "digits": DIGITS, "period": PERIOD,
    }, ["user"]),
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
}


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message)


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    # JSON Schema's `$` is end-of-string; Python's also matches before a final newline.
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def _name(key: object) -> str:
    text = str(key)
    return repr(text if len(text) <= 40 else text[:40] + "...")


def check(schema: Mapping[str, Any], value: Any, where: str = "body") -> None:
    """Raise InvalidRequest (400) unless `value` satisfies `schema`."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise _bad(f"{where} must be a JSON object")
        props = schema.get("properties", {})
        for key in value:
            if key not in props:
                raise _bad(f"unknown field {_name(key)} in {where}")
        for key in schema.get("required", ()):
            if key not in value:
                raise _bad(f"{where}.{key} is required")
        for key, item in value.items():
            check(props[key], item, f"{where}.{key}")
        return
    if kind == "string":
        if not isinstance(value, str):
            raise _bad(f"{where} must be a string")
        if len(value) < schema.get("minLength", 0):
            raise _bad(f"{where} is too short (at least {schema['minLength']} characters)")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise _bad(f"{where} is too long (at most {schema['maxLength']} characters)")
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            raise _bad(f"{where} has characters or a form that is not allowed")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(f"{where} must be an integer")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise _bad(f"{where} must be a finite number")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _bad(f"{where} must be true or false")
    if kind in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise _bad(f"{where} must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise _bad(f"{where} must be at most {schema['maximum']}")
    if "enum" in schema and value not in schema["enum"]:
        raise _bad(f"{where} must be one of {', '.join(map(str, schema['enum']))}")


def parse_json(raw: bytes) -> Any:
    """Strict JSON (RFC 8259), read by orjson: UTF-8 only, no NaN, Infinity or numbers too
    large for a float, no unpaired surrogate, at most 1,024 levels of nesting. An integer
    beyond 64 bits is read as a float (and then refused where an integer is wanted)."""
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        raise InvalidJson("the body is not valid JSON") from None


# -- query parameters ------------------------------------------------------------------------

_INT = re.compile(r"-?[0-9]{1,18}")


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str = ""

    def convert(self, raw: str) -> Any:
        kind = self.schema["type"]
        value: Any = raw
        if kind == "integer":
            if not _INT.fullmatch(raw):
                raise _bad(f"query parameter {self.name} must be an integer")
            value = int(raw)
        elif kind == "number":
            try:
                value = float(raw)
            except ValueError:
                raise _bad(f"query parameter {self.name} must be a number") from None
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise _bad(f"query parameter {self.name} must be true or false")
            value = raw == "true"
        check(self.schema, value, f"query parameter {self.name}")
        return value


LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
OFFSET = Param("offset", {"type": "integer", "minimum": 0, "maximum": 2**53, "default": 0})


def parse_query(params: Iterable[tuple[str, str]], allowed: Iterable[Param]) -> dict[str, Any]:
    spec = {p.name: p for p in allowed}
    out: dict[str, Any] = {}
    for name, raw in params:
        param = spec.get(name)
        if param is None:
            raise _bad(f"unknown query parameter {_name(name)}")
        if name in out:
            raise _bad(f"query parameter {name} given twice")
        out[name] = param.convert(raw)
    return out


# -- the OpenAPI document --------------------------------------------------------------------

@dataclass(frozen=True)
class OpDoc:
    """What the OpenAPI document says about one operation."""

    method: str
    path: str  # OpenAPI form: /v1/tokens/{serial}
    summary: str
    roles: tuple[str, ...]
    body: str | None = None
    query: tuple[Param, ...] = ()
    status: int = 200
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()


def openapi(ops: Iterable[OpDoc], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    error_ref = {"content": {"application/json": {"schema": {"$ref":
                                                             "#/components/schemas/Error"}}}}
    for op in ops:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in op.path_params.items()]
        parameters += [{"name": p.name, "in": "query", "required": False, "schema": p.schema,
                        **({"description": p.description} if p.description else {})}
                       for p in op.query]
        responses: dict[str, Any] = {
            str(op.status): {"description": "success",
                             **({} if op.status == 204 else
                                {"content": {"application/json": {"schema": {}}}})}}
        for status in sorted({400, 401, *op.errors} | ({403} if op.roles else set())):
            responses[str(status)] = {"description": "error", **error_ref}
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}"
                           .replace("{", "").replace("}", ""),
            "parameters": parameters, "responses": responses,
            "description": f"Roles: {', '.join(op.roles)}." if op.roles else "No key needed.",
        }
        if op.roles:
            entry["security"] = [{"bearer": []}]
        else:
            entry["security"] = []
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op.body}"}}}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.0.3",
        "info": {"title": "foblab validator", "version": version,
                 "description": "Hardware OTP token validation: tokens, devices, verify."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }

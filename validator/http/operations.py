"""The operation table: every operation of the API with its roles, body schema, query
and path parameters, route and handler. The routes and /openapi.json both come from it,
so the document cannot drift from what the server enforces."""

from __future__ import annotations

from validator import api_schema as S
from validator.api_schema import OpDoc, Param
from validator.apikeys import Role
from validator.http.decoding import PATH_SCHEMAS, Op
from validator.http.handlers import (
    audit,
    audit_export,
    create_token,
    deactivate_device,
    delete_token,
    enable_device,
    healthz,
    import_tokens,
    list_devices,
    list_stations,
    list_tokens,
    metrics,
    reload,
    resync_device,
    rotate_key,
    show_token,
    station_enroll,
    station_info,
    unlock_token,
    verify,
)

ADMIN = (Role.ADMIN,)
VERIFY = (Role.ADMIN, Role.VERIFIER)


def operations() -> list[Op]:
    u, s, n = ({k: PATH_SCHEMAS[k]} for k in ("user", "serial", "name"))
    page = (S.LIMIT, S.OFFSET)
    string = {"type": "string", "maxLength": 128}
    return [
        Op(OpDoc("GET", "/healthz", "Health: the database answers and a sample of the "
                 "sealed secrets opens", (), errors=(503,)),
           "/healthz", healthz),
        Op(OpDoc("GET", "/metrics", "Prometheus metrics", ()), "/metrics", metrics),
        Op(OpDoc("POST", "/v1/tokens/import", "Import a PSKC or CSV seed file: every "
                 "usable key or none; the others listed with why",
                 ADMIN, body="TokenImport", errors=(409, 413, 415)),
           "/v1/tokens/import", import_tokens, large_body=True),
        Op(OpDoc("POST", "/v1/tokens", "Register one token", ADMIN, body="TokenCreate",
                 status=201, errors=(409, 413, 415)), "/v1/tokens", create_token),
        Op(OpDoc("GET", "/v1/tokens", "List tokens (metadata and state, never secrets)", ADMIN,
                 query=(Param("user", S.USER), Param("unassigned", {"type": "boolean"}),
                        Param("kind", S.KIND), *page)), "/v1/tokens", list_tokens),
        Op(OpDoc("POST", "/v1/tokens/{serial}/unlock", "Clear a token's failures and lock",
                 ADMIN, path_params=s, errors=(404,)),
           "/v1/tokens/{serial:path}/unlock", unlock_token),
        Op(OpDoc("GET", "/v1/tokens/{serial}", "One token", ADMIN, path_params=s,
                 errors=(404,)), "/v1/tokens/{serial:path}", show_token),
        Op(OpDoc("DELETE", "/v1/tokens/{serial}", "Remove an unassigned token", ADMIN,
                 path_params=s, status=204, errors=(404, 409)),
           "/v1/tokens/{serial:path}", delete_token),
        Op(OpDoc("POST", "/v1/users/{user}/devices/{serial}/resync",
                 "Resynchronise with two consecutive codes", VERIFY, body="CodePair",
                 path_params={**u, **s}, errors=(404, 413, 415)),
           "/v1/users/{user}/devices/{serial:path}/resync", resync_device),
        Op(OpDoc("POST", "/v1/users/{user}/devices", "Enable a token with two consecutive "
                 "codes", ADMIN, body="DeviceEnable", path_params=u, status=201,
                 errors=(404, 409, 413, 415)), "/v1/users/{user}/devices", enable_device),
        Op(OpDoc("GET", "/v1/users/{user}/devices", "A user's devices", ADMIN, path_params=u),
           "/v1/users/{user}/devices", list_devices),
        Op(OpDoc("DELETE", "/v1/users/{user}/devices/{serial}", "Deactivate a device", ADMIN,
                 path_params={**u, **s}, status=204, errors=(404,)),
           "/v1/users/{user}/devices/{serial:path}", deactivate_device),
        Op(OpDoc("POST", "/v1/verify", "Verify a code", VERIFY, body="Verify",
                 errors=(413, 415)), "/v1/verify", verify),
        Op(OpDoc("GET", "/v1/audit", "Audit log, oldest first (order=newest: newest first)",
                 ADMIN, query=(
            Param("serial", S.SERIAL), Param("user", S.USER), Param("action", string),
            Param("result", string), Param("since", {"type": "number"}),
            Param("until", {"type": "number"}),
            Param("request_id", {"type": "string", "maxLength": 64}),
            Param("order", {"type": "string", "enum": ["oldest", "newest"]}), *page)),
           "/v1/audit", audit),
        Op(OpDoc("GET", "/v1/audit/export", "Every audit entry in [since, until) as JSON "
                 "lines (application/x-ndjson), streamed, oldest first (order=newest: newest "
                 "first)", ADMIN, query=(
            Param("since", {"type": "number"}), Param("until", {"type": "number"}),
            Param("order", {"type": "string", "enum": ["oldest", "newest"]}))),
           "/v1/audit/export", audit_export),
        Op(OpDoc("POST", "/v1/admin/rotate-key", "Reseal every stored secret under a new "
                 "data key, or (master=true) re-wrap the data keys under a new master key",
                 ADMIN, query=(Param("master", {"type": "boolean"}),)),
           "/v1/admin/rotate-key", rotate_key),
        Op(OpDoc("POST", "/v1/admin/reload", "Re-read the config file and the API keys "
                 "(as SIGHUP does); says what changed and what needs a restart", ADMIN,
                 errors=(409,)), "/v1/admin/reload", reload),
        Op(OpDoc("GET", "/v1/stations", "Configured enrollment stations", ADMIN),
           "/v1/stations", list_stations),
        Op(OpDoc("GET", "/v1/stations/{name}", "The attached token's INFO, read live", ADMIN,
                 path_params=n, errors=(404, 409, 502, 503, 504)),
           "/v1/stations/{name}", station_info),
        Op(OpDoc("POST", "/v1/stations/{name}/enroll", "Enroll the attached token for a user",
                 ADMIN, body="Enroll", path_params=n, status=201,
                 errors=(404, 409, 413, 415, 502, 503, 504)),
           "/v1/stations/{name}/enroll", station_enroll),
    ]



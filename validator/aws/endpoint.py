"""`AwsEndpoint`: the AWS query protocol (IAM 2010-05-08 and STS 2011-06-15) over the
validator, as one Starlette request handler the daemon mounts at `/aws`.

One request: read the form body, check the SigV4 signature against the access keys in the
database, find the action, run it in a worker thread (the core and the store, SQLite or
PostgreSQL, are blocking), answer AWS's XML. Every failure is an AWS error answer with a
4xx status; a 503 (`ServiceUnavailable`) while the database does not answer; a 500
(`ServiceFailure`) only for a genuine bug, since botocore retries 500s.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client.core import CounterMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

from validator import errors as core_errors
from validator.aws import actions, sigv4
from validator.aws import xml as x
from validator.aws.errors import AwsError, service_failure, service_unavailable
from validator.aws.params import Params
from validator.aws.store import Credentials, open_aws_store, token_digest
from validator.connections import discard_body
from validator.logs import REQUEST_ID
from validator.offload import Offload
from validator.secrets_box import SealError
from validator.service import Validator

log = logging.getLogger("foblab.aws")

IAM_VERSION = "2010-05-08"
STS_VERSION = "2011-06-15"
MAX_BODY = 256 * 1024
USER_NAME_MAX = 128  # IAM's limit for EnableMFADevice & co.
THREADS = 8  # requests in the store at once on SQLite (on PostgreSQL: its connections)
_ACCOUNT = re.compile(r"[0-9]{12}")
_DEFAULTS: dict[str, Any] = {"account_id": "123456789012", "allow_any_signature": False,
                             "max_skew_s": 300}


def _loggable(action: str) -> str:
    """The Action as it may go into the log: a known one as is, anything else (it arrives
    before the signature is checked) as a short ASCII repr, so no request can write a line
    break or a forged entry into the daemon's log."""
    if action in actions.IAM_ACTIONS or action in actions.STS_ACTIONS or action == "?":
        return action
    return ascii(action[:64])


def _metric_action(action: str) -> str:
    """The Action as a metric label: a known one as is, anything else "other" (labels must
    stay few whatever clients send)."""
    if action in actions.IAM_ACTIONS or action in actions.STS_ACTIONS:
        return action
    return "other"


def _invalid_token() -> AwsError:
    return AwsError("InvalidClientTokenId",
                    "The security token included in the request is invalid.", 403)


class AwsEndpoint:
    """The `/aws` endpoint. `settings` is foblab.toml's `[aws]` table (possibly empty):
    `account_id` (12 digits, default 123456789012), `allow_any_signature` (lab switch,
    default false) and `max_skew_s` (SigV4 clock-skew limit, default 300)."""

    def __init__(self, validator: Validator, settings: Mapping[str, Any],
                 *, clock: Callable[[], float] = time.time,
                 signing_clock: Callable[[], float] | None = None) -> None:
        """`clock` dates sessions and verifications; `signing_clock` (default: `clock`)
        checks SigV4's timestamps, which clients take from true time. The two differ only in
        foblab's test lab, whose time machine moves `clock`."""
        unknown = set(settings) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"[aws]: unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(_DEFAULTS))}")
        merged = {**_DEFAULTS, **settings}
        self.account_id = str(merged["account_id"])
        if not _ACCOUNT.fullmatch(self.account_id):
            raise ValueError("[aws] account_id must be 12 digits")
        if not isinstance(merged["allow_any_signature"], bool):
            raise ValueError("[aws] allow_any_signature must be true or false")
        self.allow_any_signature: bool = merged["allow_any_signature"]
        skew = merged["max_skew_s"]
        if isinstance(skew, bool) or not isinstance(skew, int | float) \
                or not math.isfinite(skew) or skew <= 0:
            raise ValueError("[aws] max_skew_s must be a positive number of seconds")
        self.max_skew = float(skew)
        self.validator = validator
        self.answered: Counter[tuple[str, str]] = Counter()  # (action, result), /metrics
        self._count_lock = threading.Lock()  # answers are counted from worker threads
        # Its tables on the validator's own database (SQLite file or PostgreSQL).
        self.store = open_aws_store(validator.store, lambda: validator.box)
        # Requests run on threads of the endpoint's own (the HTTP door's hop,
        # validator.offload); on a store across the network (PostgreSQL) at most as many at
        # once as it has connections, the rest wait their turn rather than for the pool.
        self._offload = Offload(int(getattr(validator.store, "max_connections", THREADS))
                                if getattr(validator.store, "remote", False) else THREADS,
                                name="foblab-aws")
        self._clock = clock
        self._signing_clock = clock if signing_clock is None else signing_clock
        if self.allow_any_signature:
            log.warning("AWS ENDPOINT ACCEPTS ANY SIGNATURE ([aws] allow_any_signature = "
                        "true): every request to /aws is trusted without checking its "
                        "signature or access key. For a closed lab only.")

    def close(self) -> None:
        """At shutdown: the requests under way end, then the AWS tables' store closes."""
        self._offload.close()
        self.store.close()

    def _core(self) -> Validator:
        """The daemon's validator, seen with AWS's user-name limit (128). A fresh view per
        request over the same store, box and policy (cheap, no I/O), so the daemon's own
        limit stays as configured and a rotated box is always the current one."""
        v = self.validator
        if v.max_user_length >= USER_NAME_MAX:
            return v
        return v.view(max_user_length=USER_NAME_MAX)

    def _count(self, action: str, result: str) -> None:
        with self._count_lock:
            self.answered[(_metric_action(action), result)] += 1

    def collect_metrics(self) -> Iterator[Metric]:
        """`foblab_aws_requests_total{action,result}`: answers by Action (known ones; the
        rest "other") and result ("ok" or the AWS error code)."""
        family = CounterMetricFamily("foblab_aws_requests", "AWS endpoint answers by Action "
                                     "and result (ok or the error code).",
                                     labels=("action", "result"))
        for (action, result), n in sorted(self.answered.items()):
            family.add_metric((action, result), n)
        yield family

    async def handle(self, request: Request) -> Response:
        request_id = REQUEST_ID.get() or str(uuid.uuid4())  # the daemon's log's id
        try:
            body = await self._body(request)
            return await self._offload.run(self._handle, request, body, request_id)
        except AwsError as exc:
            return self._error(exc, x.IAM_NS, request_id, "?")
        except Exception:  # a bug: never let it out as a traceback page
            log.exception("aws: internal error (request %s)", request_id)
            return self._error(service_failure(), x.IAM_NS, request_id, "?")

    async def _body(self, request: Request) -> bytes:
        too_large = AwsError("RequestEntityTooLarge", f"Request bodies are limited to "
                             f"{MAX_BODY} bytes", 413)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            # read the rest first (bounded): a client that sends it all before reading
            # must hear the 413, not a reset
            await discard_body(request.receive, int(declared))
            raise too_large
        chunks, size = [], 0
        while True:
            message = await request.receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                if message.get("more_body", False):
                    await discard_body(request.receive, None)
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _handle(self, request: Request, body: bytes, request_id: str) -> Response:
        namespace, action = x.IAM_NS, "?"
        try:
            values = self._params(request, body)
            action = values.get("Action", "?")
            if action in actions.STS_ACTIONS:
                namespace = x.STS_NS
            now = self._clock()
            caller = self._authenticate(request, body, now)
            handler, version = self._action(values)
            ctx = actions.Context(self._core(), self.store, self.account_id, now, caller)
            try:
                actions.authorize(ctx, action, Params(values))
                result = handler(ctx, Params(values))
            except core_errors.ValidatorError as exc:
                raise actions.translate(exc) from None
            log.debug("aws %s: ok", action)
            self._count(action, "ok")
            return Response(x.response(action, namespace, request_id, result),
                            media_type="text/xml",
                            headers={"x-amzn-RequestId": request_id})
        except AwsError as exc:
            return self._error(exc, namespace, request_id, action)
        except core_errors.DatabaseUnavailable:  # its message may name the server: not sent
            return self._error(service_unavailable(), namespace, request_id, action)
        except Exception:
            log.exception("aws %s: internal error (request %s)", _loggable(action),
                          request_id)
            return self._error(service_failure(), namespace, request_id, action)

    def _error(self, exc: AwsError, namespace: str, request_id: str, action: str) -> Response:
        log.info("aws %s: %s (%d)", _loggable(action), exc.code, exc.status)
        self._count(action, exc.code)
        return Response(x.error(namespace, request_id, exc.code, exc.message,
                                sender=exc.sender),
                        status_code=exc.status, media_type="text/xml",
                        headers={"x-amzn-RequestId": request_id,
                                 **({"Connection": "close"} if exc.status == 413 else {})})

    @staticmethod
    def _params(request: Request, body: bytes) -> dict[str, str]:
        try:
            pairs = parse_qsl(request.url.query, keep_blank_values=True, errors="strict",
                              max_num_fields=1000)
            if request.method == "POST":
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                   errors="strict", max_num_fields=1000)
        except (UnicodeDecodeError, ValueError):
            raise AwsError("MalformedQueryString", "The request body must be form-encoded "
                           "UTF-8 (application/x-www-form-urlencoded)", 400) from None
        return dict(pairs)

    def _action(self, values: dict[str, str]) -> tuple[actions.Handler, str]:
        action = values.get("Action")
        if not action:
            raise AwsError("MissingAction", "The request must contain the parameter "
                           "Action.", 400)
        version = values.get("Version")
        if action in actions.IAM_ACTIONS:
            handler, expected = actions.IAM_ACTIONS[action], IAM_VERSION
        elif action in actions.STS_ACTIONS:
            handler, expected = actions.STS_ACTIONS[action], STS_VERSION
        else:
            raise AwsError("InvalidAction", f"Could not find operation {action[:64]} for "
                           f"version {(version or 'NO_VERSION_SPECIFIED')[:32]}", 400)
        if version is None:
            raise AwsError("MissingParameter", "The request must contain the parameter "
                           "Version.", 400)
        if version != expected:
            raise AwsError("InvalidAction", f"Could not find operation {action} for version "
                           f"{version[:32]}", 400)
        return handler, expected

    def _authenticate(self, request: Request, body: bytes, now: float) -> actions.Caller:
        signed = sigv4.Request(
            method=request.method,
            raw_path=request.scope.get("raw_path", request.url.path.encode()).decode(
                "latin-1"),
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1"))
                     for k, v in request.scope.get("headers", [])],
            body=body)
        if self.allow_any_signature:
            return actions.Caller(None)
        found: Credentials | None = None

        def secret_for(auth: sigv4.Authorization) -> str:
            nonlocal found
            try:
                found = self.store.credentials(auth.access_key_id)
            except SealError:
                # Sealed under a seed key this box no longer holds (e.g. after a rotation).
                log.warning("aws: the secret of access key %s cannot be unsealed; create a "
                            "new key", auth.access_key_id[:32])
                raise _invalid_token() from None
            if found is None:
                raise _invalid_token()
            if found.token_sha256 is not None:
                token = signed.header("x-amz-security-token")
                if not token or not hmac.compare_digest(token_digest(token[0]),
                                                        found.token_sha256):
                    raise _invalid_token()
                if found.expires is not None and found.expires <= now:
                    raise AwsError("ExpiredToken", "The security token included in the "
                                   "request is expired", 403)
            return found.secret

        auth = sigv4.verify(signed, secret_for, self._signing_clock(), self.max_skew)
        assert found is not None
        return actions.Caller(auth.access_key_id, session=found.token_sha256 is not None,
                              mfa=found.mfa, user=found.user)

"""A lab's validator: the real daemon (the same application `foblab validator serve` runs),
on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tools.api_client import ApiClient, ApiError


class LabError(Exception):
    """The lab's validator refused a request; `status`, `error` and `message` are the API's."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


@dataclass(frozen=True)
class Verification:
    """The validator's answer to one code: `accepted`, and `reason` (ok, invalid_code,
    replayed, locked, no_device, ...) as the API names it."""

    accepted: bool
    reason: str
    serial: str | None = None
    retry_after: float = 0.0

    def __bool__(self) -> bool:
        return self.accepted


@dataclass(frozen=True)
class AwsKeys:
    """An access key pair of the lab's AWS endpoint, ready for boto3."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region_name: str = "us-east-1"

    def client_kwargs(self) -> dict[str, str]:
        """`boto3.client("iam", **keys.client_kwargs())`."""
        return {"endpoint_url": self.endpoint_url, "aws_access_key_id": self.access_key_id,
                "aws_secret_access_key": self.secret_access_key,
                "region_name": self.region_name}

    def __repr__(self) -> str:  # the secret stays out of test reports
        return f"AwsKeys({self.endpoint_url}, {self.access_key_id}, secret=***)"


@dataclass(frozen=True)
class RadiusServer:
    """The lab validator's RADIUS door: where to send Access-Requests and the shared secret
    of the client `name` (every loopback address), which sends Message-Authenticators."""

    host: str
    port: int
    secret: bytes
    name: str = "lab"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def __repr__(self) -> str:  # the secret stays out of test reports
        return f"RadiusServer({self.host}:{self.port}, client {self.name}, secret=***)"


class LabValidator:
    """The validator daemon of a lab. `url`, `admin_key`, `verifier_key`, `client` (an
    admin API client), and helpers: `enroll(user, token)`, `verify(user, code)`,
    `new_user()`."""

    def __init__(self, directory: Path, clock: Callable[[], float] | None) -> None:
        import uvicorn

        from validator.apikeys import KeyRing, Role
        from validator.app import create_app
        from validator.aws import AwsEndpoint
        from validator.config import load
        from validator.daemon import bind, init_dir, open_validator

        made = init_dir(directory)
        settings = load(Path(made["config"])).replace(access_log=False)
        keys = KeyRing.from_files({Role.ADMIN: settings.admin_key_file,
                                   Role.VERIFIER: settings.verifier_key_file})
        self.dir = directory
        self.admin_key = str(made["admin_key"])
        self.verifier_key = str(made["verifier_key"])
        self._names = itertools.count(1)
        sock = bind("127.0.0.1", 0)
        self._validator = open_validator(settings, clock=clock)
        try:
            self._aws = AwsEndpoint(self._validator, settings.aws,
                                    clock=clock or time.time, signing_clock=time.time)
            app = create_app(self._validator, keys, settings, aws=self._aws)
            host, port = sock.getsockname()[:2]
            self.url = f"http://{host}:{port}"
            config = uvicorn.Config(app, loop="asyncio", http="h11", lifespan="on",
                                    access_log=False, log_config=None, log_level="warning",
                                    server_header=False, timeout_graceful_shutdown=5)
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run,
                                            kwargs={"sockets": [sock]},
                                            name="foblab-validator", daemon=True)
            self._thread.start()
            while not self._server.started:
                if not self._thread.is_alive():
                    raise RuntimeError("the lab's validator did not start")
                self._thread.join(0.005)
        except BaseException:
            sock.close()
            if hasattr(self, "_aws"):
                self._aws.close()
            self._validator.close()
            raise
        self._sock = sock
        self._client: httpx.Client | None = None
        self._api: ApiClient | None = None
        self._clock = clock or time.time
        self._radius: tuple[RadiusServer, Any] | None = None

    @property
    def client(self) -> httpx.Client:
        """An admin API client (made on first use: an HTTP client costs some 100 ms)."""
        if self._client is None:
            self._client = self.api_client(self.admin_key)
        return self._client

    def api_client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client for the API with `key` (default: the admin key) as its Bearer."""
        key = self.admin_key if key is None else key
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {key}"})

    # -- one-call helpers -------------------------------------------------------------------

    def _call(self, call: Callable[[ApiClient], Any]) -> Any:
        """One operation through foblab's API client (tools/api_client.py: serials and
        user names quoted), its refusal as a LabError."""
        if self._api is None:
            self._api = ApiClient(self.url, self.admin_key, 30)
        try:
            return call(self._api)
        except ApiError as exc:
            raise LabError(exc.status or 0, exc.error, exc.message) from None

    def new_user(self, prefix: str = "user") -> str:
        """A user name no other test of this lab has used."""
        return f"{prefix}{next(self._names)}"

    def register(self, token: Any) -> dict[str, Any]:
        """Register `token` (a lab token) as its vendor's seed file would."""
        result: dict[str, Any] = self._call(lambda api: api.create_token(token._registration()))
        return result

    def enable(self, user: str, serial: str, code1: str, code2: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            lambda api: api.enable_device(user, serial, code1, code2))
        return result

    def enroll(self, user: str, token: Any) -> dict[str, Any]:
        """Register `token` and enable it for `user` with two consecutive codes, read from
        the token as a person would. The next code the validator accepts is the token's
        next one (`token.next_code()`): the two just used are spent."""
        self.register(token)
        if token.kind == "hotp":
            first, second = token.code(), token.code()
        else:
            first = token.code()
            second = token.next_code()
        return self.enable(user, token.serial, first, second)

    def verify(self, user: str, code: str, serial: str | None = None) -> Verification:
        doc = self._call(lambda api: api.verify(user, code, serial))
        return Verification(bool(doc["ok"]), str(doc["reason"]), doc.get("serial"),
                            float(doc.get("retry_after", 0.0)))

    def resync(self, user: str, serial: str, code1: str, code2: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            lambda api: api.resync_device(user, serial, code1, code2))
        return result

    def aws_keys(self) -> AwsKeys:
        """A fresh access key pair for the AWS endpoint at `url + "/aws"`."""
        akid, secret = self._aws.store.create_key(time.time())
        return AwsKeys(f"{self.url}/aws", akid, secret)

    def radius(self) -> RadiusServer:
        """The daemon's RADIUS door on a free loopback UDP port (started on first use), on
        the same validator (and clock) as the API, for one client: every loopback address,
        a fresh shared secret."""
        if self._radius is None:
            import ipaddress
            import secrets

            from validator.radius.server import Client, RadiusDoor, RadiusListener, bind

            secret = secrets.token_hex(16).encode()
            client = Client("lab", ipaddress.ip_network("127.0.0.0/8"), secret)
            sock = bind("127.0.0.1", 0)
            door = RadiusDoor(self._validator, [client], clock=self._clock,
                              log_requests=False)
            listener = RadiusListener(door, sock)
            listener.start()
            host, port = listener.address
            self._radius = (RadiusServer(host, port, secret), listener)
        return self._radius[0]

    def close(self) -> None:
        """Stop the daemon (in-flight requests finish) and close its database. Idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self._radius is not None:
            self._radius[1].stop()
        if self._client is not None:
            self._client.close()
        if self._api is not None:
            self._api.close()
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()
        self._aws.close()
        self._validator.close()

    def __repr__(self) -> str:
        return f"LabValidator({self.url})"

"""The one client of the validator's HTTP API v1 (sync, on httpx).

Every `foblab validator ...` client command, `foblab demo` and the live scenarios talk to
the daemon through `ApiClient`: one method per operation, path segments (serials, user
names, station names) always URL-quoted, and one error type, `ApiError`, for everything
that is not a success: the API's refusal (its `error` code, `message` and HTTP status), an
answer that is not the API's, an unreachable daemon or a bad URL.

An `https://` URL is checked against the system's trusted CAs, or only against `ca_file`
when one is given (a private CA, or a self-signed certificate); `client_cert` (a PEM file,
with its key in it or in `client_key`) is presented to a daemon that requires client
certificates. A certificate that is not trusted is the ApiError `tls`, with the way out in
its message, never a traceback.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from tools._vocab import VALIDATOR_REPLY

__all__ = ["ApiClient", "ApiError", "quote_segment"]


class ApiError(Exception):
    """A request that did not succeed.

    `status` is the HTTP status (None when no answer came), `error` the API's stable error
    code (`unknown_serial`, ...; `unreachable`, `bad_url` or `http_error` when the answer
    is not the API's own), `message` its one-line text and `data` the whole JSON body (a
    refusal may carry more, e.g. `reason` and `retry_after`). `str()` is the line a command
    prints.
    """

    def __init__(self, message: str, *, status: int | None, error: str,
                 data: Any = None, line: str | None = None) -> None:
        super().__init__(line or message)
        self.message = message
        self.status = status
        self.error = error
        self.data = data

    @property
    def refused(self) -> bool:
        """True for the API's own refusal of this request (a 4xx with an error body)."""
        return self.status is not None and 400 <= self.status < 500 and self.error not in (
            "http_error", "unreachable", "bad_url", "tls")


def quote_segment(value: str) -> str:
    """`value` as one path segment: every reserved character quoted, `/` included."""
    return quote(value, safe="")


def tls_context(ca_file: str | Path | None, client_cert: str | Path | None = None,
                client_key: str | Path | None = None) -> ssl.SSLContext | bool:
    """What httpx verifies an https:// daemon with: True (the system's CAs) unless a CA
    file or a client certificate is given. A file that cannot be used is ApiError `tls`."""
    if ca_file is None and client_cert is None:
        return True
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        if client_cert is not None:
            context.load_cert_chain(str(client_cert),
                                    None if client_key is None else str(client_key))
    except FileNotFoundError as exc:
        raise ApiError(f"no such file {exc.filename or ca_file}", status=None,
                       error="tls") from None
    except (ssl.SSLError, OSError) as exc:
        what = f"the CA file {ca_file}" if client_cert is None else \
            f"the CA file {ca_file} or the client certificate {client_cert}"
        raise ApiError(f"cannot use {what}: {getattr(exc, 'reason', None) or exc}",
                       status=None, error="tls") from None
    return context


class ApiClient:
    """The daemon at `url`, as the role of `key` (None: no key, for /healthz)."""

    def __init__(self, url: str, key: str | None = None,
                 timeout: float = VALIDATOR_REPLY.seconds, *,
                 transport: httpx.BaseTransport | None = None,
                 ca_file: str | Path | None = None, client_cert: str | Path | None = None,
                 client_key: str | Path | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        verify = tls_context(ca_file, client_cert, client_key)
        self._client_cert = client_cert is not None
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                      transport=transport, verify=verify)
        except httpx.InvalidURL as exc:  # not even a URL: say so before any request
            raise ApiError(f"bad URL {url!r}: {exc}", status=None, error="bad_url") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the one request path ------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None,
                params: Mapping[str, Any] | None = None) -> Any:
        """The decoded JSON of a 2xx answer (None when it has no body); ApiError otherwise.
        `params` left None are not sent; booleans are sent as true/false."""
        query = {k: (str(v).lower() if isinstance(v, bool) else v)
                 for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=query)
        except httpx.InvalidURL as exc:
            raise ApiError(f"bad URL {self.url!r}: {exc}", status=None,
                           error="bad_url") from None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = None
        status = response.status_code
        if 200 <= status < 300:
            return data
        if isinstance(data, dict) and "error" in data:
            message = str(data.get("message"))
            raise ApiError(message, status=status, error=str(data["error"]), data=data,
                           line=f"{message} ({data['error']}, HTTP {status})")
        raise ApiError(f"HTTP {status} from {self.url}{path}", status=status,
                       error="http_error", data=data if data is not None else response.text[:200])

    def _unreachable(self, exc: httpx.HTTPError) -> ApiError:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return ApiError(f"cannot reach {self.url}: its TLS certificate is not trusted "
                            f"({text.rsplit('certificate verify failed: ', 1)[-1][:120]}); "
                            "give the CA that signed it with --ca-file FILE (env "
                            "FOBLAB_CA_FILE)", status=None, error="tls")
        refused = "CERTIFICATE_REQUIRED" in text or "BAD_CERTIFICATE" in text or \
            "UNKNOWN_CA" in text
        # TLS 1.3: the server checks the client's certificate after the handshake, and its
        # alert reaches httpx as a connection closed before any answer
        if refused or (self.url.startswith("https://") and
                       isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)):
            why = "refused this client's certificate" if self._client_cert else \
                "closed the connection: it may require a client certificate, and this " \
                "client has none"
            return ApiError(f"cannot reach {self.url}: the daemon {why}; give one signed by "
                            "a CA it trusts with --client-cert FILE (env FOBLAB_CLIENT_CERT)",
                            status=None, error="tls")
        if self.url.startswith("http://") and isinstance(exc, httpx.RemoteProtocolError):
            text += " (does it speak https?)"
        return ApiError(f"cannot reach {self.url}: {text}", status=None, error="unreachable")

    # -- operations, one method each ---------------------------------------------------------

    def health(self) -> Any:
        return self.request("GET", "/healthz")

    def has_console(self) -> bool:
        """True when the daemon serves the web console (/ui/, needs foblab[ui])."""
        try:
            return self._http.get("/ui/login").status_code == 200
        except httpx.HTTPError:
            return False

    def create_token(self, body: Mapping[str, Any]) -> Any:
        return self.request("POST", "/v1/tokens", body=dict(body))

    def import_tokens(self, content: str, format: str, *, passphrase: str | None = None,
                      key_hex: str | None = None, skip_duplicates: bool = False,
                      dry_run: bool = False) -> Any:
        """Import a seed file; `dry_run` checks it and says what would be imported and
        skipped, writing nothing."""
        body: dict[str, Any] = {"format": format, "content": content}
        if passphrase:
            body["passphrase"] = passphrase
        if key_hex:
            body["key_hex"] = key_hex
        if skip_duplicates:
            body["skip_duplicates"] = True
        if dry_run:
            body["dry_run"] = True
        return self.request("POST", "/v1/tokens/import", body=body)

    def list_tokens(self, *, user: str | None = None, unassigned: bool | None = None,
                    kind: str | None = None, limit: int | None = None,
                    offset: int | None = None) -> Any:
        return self.request("GET", "/v1/tokens", params={
            "user": user, "unassigned": unassigned, "kind": kind, "limit": limit,
            "offset": offset})

    def get_token(self, serial: str) -> Any:
        return self.request("GET", f"/v1/tokens/{quote_segment(serial)}")

    def delete_token(self, serial: str) -> None:
        self.request("DELETE", f"/v1/tokens/{quote_segment(serial)}")

    def unlock_token(self, serial: str) -> Any:
        return self.request("POST", f"/v1/tokens/{quote_segment(serial)}/unlock")

    def rotate_key(self, *, master: bool = False) -> Any:
        """Reseal every secret under a new data key, or (`master`) re-wrap the data keys
        under a new master key."""
        return self.request("POST", "/v1/admin/rotate-key",
                            params={"master": True if master else None})

    def enable_device(self, user: str, serial: str, code1: str, code2: str) -> Any:
        return self.request("POST", f"/v1/users/{quote_segment(user)}/devices",
                            body={"serial": serial, "code1": code1, "code2": code2})

    def list_devices(self, user: str) -> Any:
        return self.request("GET", f"/v1/users/{quote_segment(user)}/devices")

    def deactivate_device(self, user: str, serial: str) -> None:
        self.request("DELETE",
                     f"/v1/users/{quote_segment(user)}/devices/{quote_segment(serial)}")

    def resync_device(self, user: str, serial: str, code1: str, code2: str) -> Any:
        return self.request(
            "POST", f"/v1/users/{quote_segment(user)}/devices/{quote_segment(serial)}/resync",
            body={"code1": code1, "code2": code2})

    def verify(self, user: str, code: str, serial: str | None = None) -> Any:
        """The verdict, accepted or not (`ok`, `reason`, ...): a refused code is an answer,
        not an ApiError."""
        body: dict[str, Any] = {"user": user, "code": code}
        if serial:
            body["serial"] = serial
        return self.request("POST", "/v1/verify", body=body)

    def audit(self, *, serial: str | None = None, user: str | None = None,
              action: str | None = None, result: str | None = None,
              order: str | None = None, limit: int | None = None,
              offset: int | None = None, request_id: str | None = None) -> Any:
        """The audit log; `order` "newest" (the API's default) or "oldest"; `request_id`:
        the entries one request wrote (its X-Request-Id, its log lines' request_id)."""
        return self.request("GET", "/v1/audit", params={
            "serial": serial, "user": user, "action": action, "result": result,
            "order": order, "limit": limit, "offset": offset, "request_id": request_id})

    def audit_export(self, *, since: float | None = None, until: float | None = None,
                     order: str | None = None) -> Iterator[bytes]:
        """The audit log as JSON lines (each ending in a newline), streamed as the daemon
        sends them; ApiError for a refusal."""
        params = {k: v for k, v in (("since", since), ("until", until), ("order", order))
                  if v is not None}
        try:
            with self._http.stream("GET", "/v1/audit/export", params=params) as response:
                if response.status_code != 200:
                    response.read()
                    try:
                        data = response.json()
                    except ValueError:
                        data = None
                    if isinstance(data, dict) and "error" in data:
                        raise ApiError(str(data.get("message")), status=response.status_code,
                                       error=str(data["error"]), data=data)
                    raise ApiError(f"HTTP {response.status_code} from {self.url}",
                                   status=response.status_code, error="http_error")
                for line in response.iter_lines():
                    if line:
                        yield line.encode() + b"\n"
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.url}: {exc}", status=None,
                           error="unreachable") from None

    def list_stations(self) -> Any:
        return self.request("GET", "/v1/stations")

    def station_info(self, name: str) -> Any:
        return self.request("GET", f"/v1/stations/{quote_segment(name)}")

    def station_enroll(self, name: str, user: str, **options: Any) -> Any:
        """Enroll the token on station `name` for `user`; `options` (provision, kind, hash,
        digits, period) left None are not sent."""
        body = {"user": user, **{k: v for k, v in options.items() if v is not None}}
        return self.request("POST", f"/v1/stations/{quote_segment(name)}/enroll", body=body)

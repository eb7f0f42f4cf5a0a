"""The web console: server-rendered pages over `validator.service.Validator`.

A door like the JSON API: it decodes forms, calls the service and renders the answer; it
never touches the store or the core. Sign-in takes the admin key (or the verifier key, which
reaches only the sign-in tester); the session lives on the server, its id in an HttpOnly,
SameSite=Strict cookie that expires. Every POST carries the session's CSRF token or is
refused with 403. Jinja2 escapes everything it prints. No page shows a seed, except the QR
code and secret of a virtual device in the answer to the POST that created it.

`stations` (name -> `validator.station.Station`) and `aws` (the AWS door, for its access
keys) are handed in by the application; both are optional.
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
import segno
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from protocol import TOKEN_DIGITS, Kind
from validator import rules
from validator.errors import (
    BodyTooLarge,
    DoorDisabled,
    Forbidden,
    InvalidRequest,
    InvalidUser,
)
from validator.service import (
    InvalidAuthenticationCode,
    TokenInfo,
    Validator,
    ValidatorError,
)
from validator.ui.plot import offset_svg
from validator.ui.sessions import Session, Sessions, csrf_ok

COOKIE = "foblab_console"
HERE = Path(__file__).resolve().parent
PAGE = 25
MAX_FORM_FIELDS = 64
ADMIN, VERIFIER = "admin", "verifier"
# the validator's input rules (validator/rules.py), with AWS's 128-character user names for
# the lookups (the service then applies its own limit) and the digits tokens show for codes
_USER = rules.USER.regex(128)
_SERIAL = rules.SERIAL.regex()
_CODE = rules.CODE.regex(max(TOKEN_DIGITS), min(TOKEN_DIGITS))
_NAME = rules.USER.regex()
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}

# What each verification outcome means, in plain words.
REASONS = {
    "accepted": "Accepted: the code is the one the user's device shows, and it was not used "
                "before.",
    "invalid_code": "Refused: the code is wrong, or the device's clock is too far off for "
                    "it (resynchronize the device).",
    "replayed": "Refused: this code was already used. Wait for the device's next code.",
    "locked": "Refused: too many wrong codes; the device is locked for a while.",
    "no_device": "Refused: this user has no MFA device.",
    "not_enabled": "Refused: that device is not enabled for this user.",
    "code_required": "Refused: an MFA code is required.",
    "expired": "Refused: the device's key has expired (its seed file's policy says so); "
               "issue a new device.",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _when(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _qr_data_uri(text: str) -> str:
    png = io.BytesIO()
    segno.make(text, error="m", micro=False).save(png, kind="png", scale=6, border=4)
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")


class Console:
    def __init__(self, validator: Validator, keys: Any, *,
                 stations: Mapping[str, Any] | None = None, aws: Any | None = None,
                 session_seconds: float = 3600.0, max_body_bytes: int = 16 * 1024,
                 max_import_bytes: int = 16 * 1024 * 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self.validator = validator
        self.keys = keys
        self.stations = dict(stations or {})
        self.aws = aws
        self.sessions = Sessions(session_seconds)
        self.max_body = max_body_bytes
        self.max_import = max_import_bytes
        self.clock = clock
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.globals["Kind"] = Kind  # templates compare kinds with Kind.TOTP, as code does
        self.env.filters["when"] = _when
        self.env.filters["q"] = lambda v: quote(str(v), safe="")

    # -- plumbing ------------------------------------------------------------------------

    def app(self) -> Starlette:
        r = self._route
        routes = [
            Route("/", r(self.home, None)),
            Route("/static/{name}", self.static),
            Route("/login", r(self.login_form, None, public=True)),
            Route("/login", r(self.login, None, public=True), methods=["POST"]),
            Route("/logout", r(self.logout, None, public=True), methods=["POST"]),
            Route("/tokens", r(self.tokens, ADMIN)),
            Route("/tokens/import", r(self.import_seeds, ADMIN, large=True), methods=["POST"]),
            Route("/token", r(self.token, ADMIN)),
            Route("/token/unlock", r(self.unlock, ADMIN), methods=["POST"]),
            Route("/users", r(self.users, ADMIN)),
            Route("/user", r(self.user, ADMIN)),
            Route("/user/mfa", r(self.mfa_choose, ADMIN)),
            Route("/user/mfa/virtual", r(self.mfa_virtual, ADMIN), methods=["POST"]),
            Route("/user/mfa/hardware", r(self.mfa_hardware, ADMIN)),
            Route("/user/mfa/enable", r(self.mfa_enable, ADMIN), methods=["POST"]),
            Route("/user/resync", r(self.resync_form, ADMIN)),
            Route("/user/resync", r(self.resync, ADMIN), methods=["POST"]),
            Route("/user/deactivate", r(self.deactivate_form, ADMIN)),
            Route("/user/deactivate", r(self.deactivate, ADMIN), methods=["POST"]),
            Route("/audit", r(self.audit, ADMIN)),
            Route("/stations", r(self.stations_page, ADMIN)),
            Route("/stations/info", r(self.station_info, ADMIN)),
            Route("/stations/enroll", r(self.enroll, ADMIN), methods=["POST"]),
            Route("/aws-keys", r(self.aws_keys, ADMIN)),
            Route("/aws-keys/create", r(self.aws_key_create, ADMIN), methods=["POST"]),
            Route("/aws-keys/delete", r(self.aws_key_delete, ADMIN), methods=["POST"]),
            Route("/tester", r(self.tester, VERIFIER)),
            Route("/tester", r(self.tester_check, VERIFIER), methods=["POST"]),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return self._page(request, None, "error.html", status=exc.status_code,
                              title="Not found" if exc.status_code == 404 else "Not allowed",
                              message="There is no such page." if exc.status_code == 404
                              else "That method is not allowed here.")

        return Starlette(routes=routes, exception_handlers={HTTPException: not_found})

    def _route(self, handler: Callable[..., Awaitable[Response]], role: str | None, *,
               public: bool = False, large: bool = False
               ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            now = self.clock()
            sid = request.cookies.get(COOKIE)
            session = self.sessions.get(sid, now)
            try:
                form: dict[str, str] = {}
                if request.method == "POST":
                    form = await self._form(request, self.max_import if large
                                            else self.max_body)
                    if not csrf_ok(session, form.get("csrf")):
                        raise Forbidden("This form has expired or did not come from this "
                                        "console. Reload the page and try again.")
                if not public:
                    if session is None or session.role is None:
                        if request.method == "GET":
                            target = request.url.path + (
                                f"?{request.url.query}" if request.url.query else "")
                            return RedirectResponse(
                                f"{self._base(request)}/login?{urlencode({'next': target})}",
                                303)
                        raise Forbidden("Sign in first.")
                    if role == ADMIN and session.role != ADMIN:
                        raise Forbidden("The verifier key may use only the sign-in tester.")
                request.state.session = session
                request.state.sid = sid
                return await handler(request, session, form)
            except Forbidden as exc:
                return self._page(request, session, "error.html", status=403,
                                  title="Forbidden", message=exc.message)
            except ValidatorError as exc:  # a refusal of the request: its status, its words
                return self._page(request, session, "error.html", status=exc.status,
                                  title="Bad request", message=exc.message)
        return endpoint

    async def _form(self, request: Request, limit: int) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise Forbidden("Forms are sent as application/x-www-form-urlencoded.")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise BodyTooLarge(f"The form may be at most {limit} bytes.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(f"The form may be at most {limit} bytes.")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                              max_num_fields=MAX_FORM_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("The form could not be read.") from None
        return {k: v for k, v in pairs}

    @staticmethod
    def _base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _page(self, request: Request, session: Session | None, template: str, *,
              status: int = 200, **context: Any) -> HTMLResponse:
        base = self._base(request)
        html = self.env.get_template(template).render(
            base=base, session=session, csrf=session.csrf if session else "",
            path=request.url.path, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def _redirect(self, request: Request, to: str) -> Response:
        return RedirectResponse(self._base(request) + to, 303)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404)
        return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                            headers={"Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff"})

    # -- sign-in ---------------------------------------------------------------------------

    async def home(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        return self._redirect(request, "/tokens" if session.role == ADMIN else "/tester")

    async def login_form(self, request: Request, session: Session | None,
                         form: dict[str, str], *, error: str = "", status: int = 200,
                         next_: str | None = None) -> Response:
        cookie = None
        if session is None:  # the sign-in form needs a CSRF token too: an anonymous session
            cookie, session = self.sessions.create(None, self.clock())
        response = self._page(request, session, "login.html", status=status, error=error,
                              next=next_ if next_ is not None
                              else request.query_params.get("next", ""))
        if cookie is not None:
            self._set_cookie(request, response, cookie)
        return response

    def _set_cookie(self, request: Request, response: Response, sid: str) -> None:
        response.set_cookie(COOKIE, sid, max_age=int(self.sessions.lifetime),
                            path=self._base(request) + "/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    async def login(self, request: Request, session: Session | None,
                    form: dict[str, str]) -> Response:
        key = form.get("key", "").strip()
        role = self.keys.role_of(key.encode("utf-8", "replace")) if 0 < len(key) <= 512 \
            else None
        target = form.get("next", "")
        if role is None:
            return await self.login_form(request, session, form, status=401, next_=target,
                                         error="That key is neither the admin key nor the "
                                               "verifier key.")
        self.sessions.end(request.state.sid)
        sid, _ = self.sessions.create(str(role.value if hasattr(role, "value") else role),
                                      self.clock())
        base = self._base(request)
        safe = target if target.startswith(base + "/") and "//" not in target[1:] \
            and "\\" not in target else base + "/"
        response = RedirectResponse(safe, 303)
        self._set_cookie(request, response, sid)
        return response

    async def logout(self, request: Request, session: Session | None,
                     form: dict[str, str]) -> Response:
        self.sessions.end(request.state.sid)
        response = self._redirect(request, "/login")
        response.delete_cookie(COOKIE, path=self._base(request) + "/", httponly=True,
                               samesite="strict")
        return response

    # -- tokens ----------------------------------------------------------------------------

    async def tokens(self, request: Request, session: Session, form: dict[str, str], *,
                     imported: Any = None, import_error: str = "", status: int = 200
                     ) -> Response:
        q = request.query_params
        search = q.get("q", "")[:256]
        assigned_word = q.get("assigned", "")
        assigned = {"yes": True, "no": False}.get(assigned_word)
        offset = _int(q.get("offset"), 0)
        if search:
            tokens = self.validator.find_tokens(search, assigned=assigned, limit=PAGE + 1,
                                                offset=offset)
        else:
            tokens = self.validator.list_tokens(assigned=assigned, limit=PAGE + 1,
                                                offset=offset)
        more = len(tokens) > PAGE
        params = {"q": search, "assigned": assigned_word}
        return self._page(
            request, session, "tokens.html", status=status, tokens=tokens[:PAGE],
            search=search, assigned=assigned_word, offset=offset,
            prev_url=_page_url(params, offset - PAGE) if offset > 0 else None,
            next_url=_page_url(params, offset + PAGE) if more else None,
            imported=imported, import_error=import_error)

    async def import_seeds(self, request: Request, session: Session,
                           form: dict[str, str]) -> Response:
        content = form.get("content", "")
        fmt = form.get("format", "pskc")
        passphrase = form.get("passphrase") or None
        if not content.strip():
            return await self.tokens(request, session, form, status=400,
                                     import_error="Choose a seed file (or paste it).")
        try:
            result = await run_in_threadpool(
                self.validator.import_seed_file, content, fmt if fmt in ("pskc", "csv")
                else "pskc", passphrase=passphrase, skip_duplicates=True)
        except ValidatorError as exc:
            return await self.tokens(request, session, form, status=400,
                                     import_error=exc.message)
        return await self.tokens(request, session, form, imported=result)

    def _token_or_404(self, request: Request, session: Session, serial: str
                      ) -> TokenInfo | Response:
        try:
            return self.validator.get_token(serial)
        except ValidatorError:
            return self._page(request, session, "error.html", status=404,
                              title="No such token", message=f"There is no token {serial}.")

    async def token(self, request: Request, session: Session, form: dict[str, str], *,
                    notice: str = "") -> Response:
        serial = request.query_params.get("serial", "")
        info = self._token_or_404(request, session, serial)
        if isinstance(info, Response):
            return info
        now = self.clock()
        plot = None
        if info.kind is Kind.TOTP:
            plot = offset_svg(self.validator.offset_history(serial), now, info.offset_seconds)
        return self._page(request, session, "token.html", t=info, plot=plot, notice=notice,
                          locked=info.locked_until > now,
                          lock_left=max(0, round(info.locked_until - now)))

    async def unlock(self, request: Request, session: Session, form: dict[str, str]
                     ) -> Response:
        serial = form.get("serial", "")
        try:
            self.validator.unlock(serial)
        except ValidatorError as exc:
            return self._page(request, session, "error.html", status=404,
                              title="Cannot unlock", message=exc.message)
        return self._redirect(request, f"/token?serial={quote(serial, safe='')}")

    # -- users and the MFA wizard ----------------------------------------------------------

    async def users(self, request: Request, session: Session, form: dict[str, str]
                    ) -> Response:
        name = request.query_params.get("open", "")
        error = ""
        if name:
            if _USER.fullmatch(name):
                return self._redirect(request, f"/user?name={quote(name, safe='')}")
            error = "User names are 1-64 letters, digits and +=,.@_-"
        return self._page(request, session, "users.html", users=self.validator.users(),
                          error=error, typed=name)

    def _user_name(self, value: str) -> str:
        if not _USER.fullmatch(value):
            raise InvalidUser("User names are 1-64 letters, digits and +=,.@_-")
        return value

    async def user(self, request: Request, session: Session, form: dict[str, str], *,
                   notice: str = "") -> Response:
        name = self._user_name(request.query_params.get("name", ""))
        try:
            devices = self.validator.list_devices(name)
        except ValidatorError as exc:
            raise InvalidRequest(exc.message) from None
        return self._page(request, session, "user.html", user=name, devices=devices,
                          notice=notice or _NOTICES.get(request.query_params.get("done", ""),
                                                        ""))

    async def mfa_choose(self, request: Request, session: Session, form: dict[str, str],
                         *, errors: dict[str, str] | None = None, device_name: str = "",
                         status: int = 200) -> Response:
        name = self._user_name(request.query_params.get("name", "") or form.get("user", ""))
        return self._page(request, session, "mfa_choose.html", user=name,
                          errors=errors or {}, device_name=device_name, status=status)

    async def mfa_virtual(self, request: Request, session: Session, form: dict[str, str]
                          ) -> Response:
        user = self._user_name(form.get("user", ""))
        device = form.get("device_name", "").strip()
        if not _NAME.fullmatch(device):
            return await self.mfa_choose(request, session, form, device_name=device,
                                         status=400, errors={
                                             "device_name": "A device name is 1-64 letters, "
                                                            "digits and +=,.@_-"})
        serial = f"mfa/{device}"
        try:
            info, seed = self.validator.create_virtual(serial)
        except ValidatorError as exc:
            message = exc.message if exc.code != "duplicate_serial" else \
                f"A device named {device} exists already; choose another name."
            return await self.mfa_choose(request, session, form, device_name=device,
                                         status=409, errors={"device_name": message})
        secret = base64.b32encode(seed).decode("ascii").rstrip("=")
        uri = f"otpauth://totp/{quote(device, safe='')}?secret={secret}&issuer=foblab"
        return self._page(request, session, "mfa_enable.html", user=user, mode="virtual",
                          serial=info.serial, qr=_qr_data_uri(uri), secret=secret,
                          errors={}, values={})

    async def mfa_hardware(self, request: Request, session: Session, form: dict[str, str]
                           ) -> Response:
        user = self._user_name(request.query_params.get("name", ""))
        return self._page(request, session, "mfa_enable.html", user=user, mode="hardware",
                          serial="", qr=None, secret=None, errors={}, values={})

    async def mfa_enable(self, request: Request, session: Session, form: dict[str, str]
                         ) -> Response:
        user = self._user_name(form.get("user", ""))
        mode = "virtual" if form.get("mode") == "virtual" else "hardware"
        serial = form.get("serial", "").strip()
        code1, code2 = form.get("code1", "").strip(), form.get("code2", "").strip()
        errors = _code_errors(code1, code2)
        if not _SERIAL.fullmatch(serial):
            errors["serial"] = "Type the serial printed on the back of the token."
        if not errors:
            try:
                self.validator.enable(user, serial, code1, code2)
            except InvalidAuthenticationCode as exc:
                errors["code1"] = _pair_refusal(exc)
            except ValidatorError as exc:
                field = "serial" if exc.code in ("unknown_serial", "already_assigned",
                                                 "invalid_parameter") else "form"
                errors[field] = exc.message
        if errors:
            # the seed is never shown again: a failed try gets the form without the QR code
            return self._page(request, session, "mfa_enable.html", status=400, user=user,
                              mode=mode, serial=serial, qr=None, secret=None, errors=errors,
                              values={"code1": code1, "code2": code2})
        return self._redirect(request, f"/user?name={quote(user, safe='')}&done=enabled")

    def _device_args(self, request: Request, form: dict[str, str]) -> tuple[str, str]:
        user = self._user_name(form.get("user", "") or request.query_params.get("name", ""))
        serial = form.get("serial", "") or request.query_params.get("serial", "")
        if not _SERIAL.fullmatch(serial):
            raise InvalidRequest("That is not a serial.")
        return user, serial

    async def resync_form(self, request: Request, session: Session, form: dict[str, str],
                          *, errors: dict[str, str] | None = None,
                          values: dict[str, str] | None = None, status: int = 200
                          ) -> Response:
        user, serial = self._device_args(request, form)
        return self._page(request, session, "resync.html", status=status, user=user,
                          serial=serial, errors=errors or {}, values=values or {})

    async def resync(self, request: Request, session: Session, form: dict[str, str]
                     ) -> Response:
        user, serial = self._device_args(request, form)
        code1, code2 = form.get("code1", "").strip(), form.get("code2", "").strip()
        errors = _code_errors(code1, code2)
        if not errors:
            try:
                self.validator.resync(user, serial, code1, code2)
            except InvalidAuthenticationCode as exc:
                errors["code1"] = _pair_refusal(exc)
            except ValidatorError as exc:
                errors["form"] = exc.message
        if errors:
            return await self.resync_form(request, session, form, errors=errors, status=400,
                                          values={"code1": code1, "code2": code2})
        return self._redirect(request, f"/user?name={quote(user, safe='')}&done=resynced")

    async def deactivate_form(self, request: Request, session: Session,
                              form: dict[str, str]) -> Response:
        user, serial = self._device_args(request, form)
        return self._page(request, session, "deactivate.html", user=user, serial=serial,
                          error="")

    async def deactivate(self, request: Request, session: Session, form: dict[str, str]
                         ) -> Response:
        user, serial = self._device_args(request, form)
        if form.get("confirm") != serial:
            return self._page(request, session, "deactivate.html", status=400, user=user,
                              serial=serial, error="Type the serial to confirm.")
        try:
            self.validator.deactivate(user, serial)
        except ValidatorError as exc:
            return self._page(request, session, "deactivate.html", status=400, user=user,
                              serial=serial, error=exc.message)
        return self._redirect(request, f"/user?name={quote(user, safe='')}&done=deactivated")

    # -- audit, stations, AWS keys ---------------------------------------------------------

    async def audit(self, request: Request, session: Session, form: dict[str, str]
                    ) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "")[:256] for k in ("user", "serial", "action", "result",
                                                    "request_id")}
        offset = _int(q.get("offset"), 0)
        entries = self.validator.audit(
            user=filters["user"] or None, serial=filters["serial"] or None,
            action=filters["action"] or None, result=filters["result"] or None,
            request_id=filters["request_id"] or None,
            limit=PAGE + 1, offset=offset, newest_first=True)
        more = len(entries) > PAGE
        return self._page(request, session, "audit.html", entries=entries[:PAGE],
                          filters=filters, offset=offset,
                          prev_url=_page_url(filters, offset - PAGE) if offset > 0 else None,
                          next_url=_page_url(filters, offset + PAGE) if more else None)

    async def _read_station(self, name: str) -> dict[str, Any]:
        station = self.stations.get(name)
        if station is None:
            return {"error": f"no station named {name}"}

        def read() -> Any:
            with station.lock:
                return station.info()

        try:
            return {"token": await run_in_threadpool(read)}
        except Exception as exc:  # a station's failure is shown, never fatal
            return {"error": getattr(exc, "message", None) or type(exc).__name__}

    async def stations_page(self, request: Request, session: Session, form: dict[str, str],
                            *, result: dict[str, Any] | None = None, status: int = 200
                            ) -> Response:
        rows = [(name, station.url, await self._read_station(name))
                for name, station in self.stations.items()]
        return self._page(request, session, "stations.html", status=status, rows=rows,
                          result=result or {})

    async def station_info(self, request: Request, session: Session, form: dict[str, str]
                           ) -> Response:
        name = request.query_params.get("name", "")
        return self._page(request, session, "station_info.html",
                          info=await self._read_station(name), name=name)

    async def enroll(self, request: Request, session: Session, form: dict[str, str]
                     ) -> Response:
        name, user = form.get("station", ""), form.get("user", "").strip()
        station = self.stations.get(name)
        result: dict[str, Any] = {"station": name, "user": user}
        if station is None:
            result["error"] = "No such station."
        elif not _USER.fullmatch(user):
            result["user_error"] = "User names are 1-64 letters, digits and +=,.@_-"
        else:
            validator = self.validator

            def run() -> Any:
                with station.lock:
                    return station.enroll(validator, user, provision=form.get("provision")
                                          == "on")

            try:
                enrolled = await run_in_threadpool(run)
                result["serial"] = enrolled.serial
            except Exception as exc:  # StationError or a ValidatorError: shown by the form
                result["error"] = getattr(exc, "message", None) or type(exc).__name__
        return await self.stations_page(request, session, form, result=result,
                                        status=400 if ("error" in result or "user_error"
                                                       in result) else 200)

    def _aws_store(self) -> Any:
        return getattr(self.aws, "store", None)

    async def aws_keys(self, request: Request, session: Session, form: dict[str, str], *,
                       created: tuple[str, str] | None = None, notice: str = "") -> Response:
        store = self._aws_store()
        # in a thread: the store may wait on the network (PostgreSQL)
        keys = await run_in_threadpool(store.list_keys) if store is not None else None
        return self._page(request, session, "aws_keys.html", keys=keys, created=created,
                          notice=notice)

    async def aws_key_create(self, request: Request, session: Session, form: dict[str, str]
                             ) -> Response:
        store = self._aws_store()
        if store is None:
            raise DoorDisabled("The AWS endpoint is not running.")
        created = await run_in_threadpool(store.create_key, self.clock())
        return await self.aws_keys(request, session, form, created=created)

    async def aws_key_delete(self, request: Request, session: Session, form: dict[str, str]
                             ) -> Response:
        store = self._aws_store()
        if store is None:
            raise DoorDisabled("The AWS endpoint is not running.")
        key_id = form.get("access_key_id", "")[:128]
        deleted = await run_in_threadpool(store.delete_key, key_id)
        notice = f"Deleted {key_id}." if deleted is not None else \
            f"There is no access key {key_id}."
        return await self.aws_keys(request, session, form, notice=notice)

    # -- the sign-in tester ----------------------------------------------------------------

    async def tester(self, request: Request, session: Session, form: dict[str, str], *,
                     outcome: dict[str, Any] | None = None, errors: dict[str, str] | None
                     = None, values: dict[str, str] | None = None, status: int = 200
                     ) -> Response:
        return self._page(request, session, "tester.html", status=status, outcome=outcome,
                          errors=errors or {}, values=values or {})

    async def tester_check(self, request: Request, session: Session, form: dict[str, str]
                           ) -> Response:
        user, code = form.get("user", "").strip(), form.get("code", "").strip()
        values = {"user": user}
        if not _USER.fullmatch(user):
            return await self.tester(request, session, form, status=400, values=values,
                                     errors={"user": "User names are 1-64 letters, digits "
                                                     "and +=,.@_-"})
        if not code:
            reason = "code_required"
        else:
            try:
                result = self.validator.verify(user, code)
            except ValidatorError as exc:
                return await self.tester(request, session, form, status=400, values=values,
                                         errors={"user": exc.message})
            reason = str(result.reason.value)
        return await self.tester(request, session, form, values=values, outcome={
            "accepted": reason == "accepted", "reason": reason, "words": REASONS[reason],
            "user": user})


_NOTICES = {"enabled": "The MFA device is enabled.",
            "resynced": "The device is resynchronized.",
            "deactivated": "The device is deactivated."}


def _int(value: str | None, default: int) -> int:
    try:
        return max(0, min(int(value or default), 10**9))
    except ValueError:
        return default


def _page_url(params: Mapping[str, str], offset: int) -> str:
    return "?" + urlencode({**{k: v for k, v in params.items() if v},
                            "offset": max(0, offset)})


def _code_errors(code1: str, code2: str) -> dict[str, str]:
    errors = {}
    for name, code in (("code1", code1), ("code2", code2)):
        if not code:
            errors[name] = "Type the code the device shows."
        elif not _CODE.fullmatch(code):
            errors[name] = "A code is 6 or 8 digits."
    return errors


def _pair_refusal(exc: InvalidAuthenticationCode) -> str:
    if exc.reason == "locked":
        return (f"The device is locked after repeated failures; try again in "
                f"{max(1, round(exc.retry_after))} s.")
    if exc.reason == "replayed":
        return "These codes were already used; wait for the device's next two codes."
    return ("These are not two consecutive codes of this device. Type the code shown, wait "
            "for the next one, and type that.")

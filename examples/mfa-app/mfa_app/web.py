"""A login page whose second factor is checked by a foblab validator (`POST /v1/verify`).

`create_app(validator_url, verifier_key)`: GET / shows the form; POST / answers 200
"welcome USER" when the validator accepts the code, 401 with the reason otherwise.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

FORM = """<form method="post"><input name="user"><input name="code"><button>Sign in</button>
</form>"""


def create_app(validator_url: str, verifier_key: str) -> Starlette:
    client = httpx.AsyncClient(base_url=validator_url, timeout=10,
                               headers={"Authorization": f"Bearer {verifier_key}"})

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(FORM)

    async def login(request: Request) -> HTMLResponse:
        form = parse_qs((await request.body()).decode(errors="replace"))
        user, code = form.get("user", [""])[0], form.get("code", [""])[0]
        if not code:
            return HTMLResponse("an MFA code is required", status_code=401)
        answer = await client.post("/v1/verify", json={"user": user, "code": code})
        if answer.status_code == 200 and answer.json()["ok"]:
            return HTMLResponse(f"welcome {html.escape(user)}")
        reason = answer.json().get("reason") or answer.json().get("error", "refused")
        return HTMLResponse(f"refused: {html.escape(str(reason))}", status_code=401)

    return Starlette(routes=[Route("/", page, methods=["GET"]),
                             Route("/", login, methods=["POST"])])

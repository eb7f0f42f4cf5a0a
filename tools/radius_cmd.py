"""`foblab validator radius test USER CODE`: one real Access-Request, like `radtest`.

The request is PAP with a Message-Authenticator; the answer is accepted only when its
Response Authenticator and Message-Authenticator check out with the shared secret. Exit
status: 0 Access-Accept, 1 Access-Reject (or no valid answer: one error line), 2
Access-Challenge (answer it with `--state HEX` and the next code).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import click

from tools._args import fail as _fail
from tools._args import parse_hex, parse_host_port
from tools._vocab import RADIUS_REPLY, timeout_option


@dataclass(frozen=True)
class Answer:
    code: str  # Access-Accept, Access-Reject, Access-Challenge
    message: str | None
    state: bytes | None

    @property
    def accepted(self) -> bool:
        return self.code == "Access-Accept"

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "accepted": self.accepted, "message": self.message,
                "state": None if self.state is None else self.state.hex()}


class NoAnswer(Exception):
    """No valid answer came back (timeout, wrong secret, or the request was dropped)."""


def exchange(server: tuple[str, int], user: str, code: str, secret: bytes, *,
             state: bytes | None = None, timeout: float = RADIUS_REPLY.seconds,
             retries: int = 3) -> Answer:
    """Send one PAP Access-Request to `server` and read its answer; a lost datagram is
    sent again unchanged (same Identifier and authenticator: a retransmission)."""
    from validator.radius import codec

    request = codec.access_request(user, code, secret, state=state)
    data = request.RequestPacket()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(server)
        for _ in range(max(1, retries)):
            sock.send(data)
            try:
                while True:
                    raw = sock.recv(codec.MAX_PACKET)
                    reply = codec.read_reply(request, raw)
                    if reply is not None:
                        return Answer(codec.CODE_NAMES.get(reply.code, str(reply.code)),
                                      reply.message, reply.state)
            except (TimeoutError, ConnectionRefusedError):
                continue
    raise NoAnswer(f"no valid answer from {server[0]}:{server[1]} after {retries} "
                   "tries (wrong shared secret, unknown client address, or not listening)")


def _read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}")
    if not secret:
        _fail(f"{path} is empty")
    return secret


@click.group()
def radius() -> None:
    """Talk to the validator's RADIUS door (docs/radius.md)."""


@radius.command("test")
@click.argument("user")
@click.argument("code")
@click.option("--server", default="127.0.0.1:1812", show_default=True, metavar="HOST:PORT")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True,
              help="The client's shared secret (one line).")
@click.option("--state", "state_hex", metavar="HEX",
              help="Answer an Access-Challenge: the State it carried.")
@timeout_option("radius", type_=click.FloatRange(0.05, 60))
@click.option("--retries", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def test(user: str, code: str, server: str, secret_file: Path, state_hex: str | None,
         timeout: float, retries: int, as_json: bool) -> None:
    """Send USER's CODE in one Access-Request and print the answer."""
    try:
        address = parse_host_port(server)
        state = None if state_hex is None else parse_hex(state_hex)
    except ValueError as exc:
        _fail(str(exc))
    try:
        answer = exchange(address, user, code, _read_secret(secret_file), state=state,
                          timeout=timeout, retries=retries)
    except NoAnswer as exc:
        _fail(str(exc))
    except (OSError, ValueError) as exc:
        _fail(f"cannot send to {server}: {exc}")
    if as_json:
        click.echo(json.dumps(answer.to_json(), sort_keys=True))
    else:
        click.echo(f"Received {answer.code}: {answer.message or ''}".rstrip())
        if answer.state is not None:
            click.echo(f"  State {answer.state.hex()} (answer with --state)")
    raise SystemExit({"Access-Accept": 0, "Access-Challenge": 2}.get(answer.code, 1))

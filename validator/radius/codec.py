"""RADIUS packets through pyrad: decode an Access-Request, encode the answer.

Only this module touches pyrad. A request is decoded with the client's secret, its
Message-Authenticator (RFC 3579 §3.2) checked, its User-Password un-hidden; an answer always
carries a Message-Authenticator as its first attribute (the BlastRADIUS countermeasure,
CVE-2024-3596), copies the request's Proxy-State and is signed with the Response
Authenticator. Nothing here logs, and no error message holds a secret or a password.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from pyrad import packet as _packet
from pyrad.dictionary import Dictionary

ACCESS_REQUEST = _packet.AccessRequest
ACCESS_ACCEPT = _packet.AccessAccept
ACCESS_REJECT = _packet.AccessReject
ACCESS_CHALLENGE = _packet.AccessChallenge
STATUS_SERVER = _packet.StatusServer
MAX_PACKET = 4096  # RFC 2865 §3: the largest packet
_MIN_PACKET = 20
_USER_NAME, _USER_PASSWORD, _CHAP_PASSWORD, _STATE, _MESSAGE_AUTHENTICATOR = 1, 2, 3, 24, 80

DICTIONARY = Dictionary(str(Path(__file__).with_name("dictionary")))


class Malformed(Exception):
    """The datagram is not a RADIUS packet we can decode: dropped, never answered."""


@dataclass
class Request:
    """A decoded Access-Request (or Status-Server). `password` is the PAP password, None
    when the request has none; `signed` whether it carried a Message-Authenticator,
    `authentic` whether that was valid for the client's secret."""

    code: int
    ident: int
    authenticator: bytes
    user: str | None
    password: str | None = field(repr=False)
    state: bytes | None
    chap: bool
    signed: bool
    authentic: bool
    packet: _packet.AuthPacket = field(repr=False)


def _one(pkt: _packet.AuthPacket, code: int) -> bytes | None:
    values = OrderedDict.get(pkt, code)
    if not values:
        return None
    if len(values) != 1:
        raise Malformed(f"attribute {code} appears {len(values)} times")
    value = values[0]
    return value if isinstance(value, bytes) else bytes(value)


def peek_code(data: bytes) -> int | None:
    return data[0] if len(data) >= _MIN_PACKET else None


def decode(data: bytes, secret: bytes) -> Request:
    """Decode one datagram from a client whose shared secret is `secret`."""
    if not _MIN_PACKET <= len(data) <= MAX_PACKET:
        raise Malformed(f"a RADIUS packet is 20-4096 bytes, not {len(data)}")
    try:
        pkt = _packet.AuthPacket(secret=secret, dict=DICTIONARY, packet=data)
    except (_packet.PacketError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise Malformed(f"undecodable packet: {type(exc).__name__}") from None
    if pkt.code not in (ACCESS_REQUEST, STATUS_SERVER):
        raise Malformed(f"packet code {pkt.code} is not an Access-Request")
    signed = OrderedDict.__contains__(pkt, _MESSAGE_AUTHENTICATOR)
    authentic = False
    if signed:
        ma = _one(pkt, _MESSAGE_AUTHENTICATOR)
        try:
            authentic = ma is not None and len(ma) == 16 and \
                bool(pkt.verify_message_authenticator())
        except Exception:  # pyrad raises bare Exception on an unusable attribute
            authentic = False
    raw_user = _one(pkt, _USER_NAME)
    raw_password = _one(pkt, _USER_PASSWORD)
    state = _one(pkt, _STATE)
    password = None
    if raw_password is not None:
        if not raw_password or len(raw_password) % 16 or len(raw_password) > 128:
            raise Malformed("User-Password must be 16-128 bytes, a multiple of 16")
        password = pkt.PwDecrypt(raw_password)
    user = None
    if raw_user is not None:
        try:
            user = raw_user.decode("utf-8")
        except UnicodeDecodeError:
            user = ""  # not a foblab user name: refused as a wrong name or code
    return Request(pkt.code, pkt.id, pkt.authenticator, user, password, state,
                   OrderedDict.__contains__(pkt, _CHAP_PASSWORD), signed, authentic, pkt)


def answer(request: Request, code: int, message: str | None = None,
           state: bytes | None = None) -> bytes:
    """The signed answer to `request`: Message-Authenticator first, then Reply-Message
    and State when given, then the request's Proxy-State."""
    reply = request.packet.CreateReply()
    reply.code = code
    reply.message_authenticator = True  # pyrad puts it first and computes it on encoding
    if message is not None:
        reply.AddAttribute("Reply-Message", message)
    if state is not None:
        reply.AddAttribute("State", state)
    # Proxy-State was copied by CreateReply before the attributes above; RFC 2865 wants
    # it kept, not first, so move it to the end behind ours.
    if OrderedDict.__contains__(reply, 33):
        reply.move_to_end(33)
    data: bytes = reply.ReplyPacket()
    return data


class Replies:
    """`answer`, faster for the common case: an answer without State to a request without
    Proxy-State reuses one pyrad reply per (code, Reply-Message), only its Identifier,
    authenticator and secret changed before pyrad encodes and signs it again. That halves
    the cost of an answer (docs/benchmarks.md). Not thread-safe: one per listener."""

    def __init__(self) -> None:
        self._templates: dict[tuple[int, str | None], _packet.AuthPacket] = {}

    def answer(self, request: Request, code: int, message: str | None = None,
               state: bytes | None = None) -> bytes:
        if state is not None or OrderedDict.__contains__(request.packet, 33):
            return answer(request, code, message, state)
        template = self._templates.get((code, message))
        if template is None:
            template = _packet.AuthPacket(code=code, secret=b"", authenticator=bytes(16),
                                          dict=DICTIONARY)
            template.message_authenticator = True
            template._request_code = ACCESS_REQUEST  # how pyrad's CreateReply marks a reply
            if message is not None:
                template.AddAttribute("Reply-Message", message)
            if len(self._templates) < 256:
                self._templates[(code, message)] = template
        template.id = request.ident
        template.authenticator = request.authenticator
        template.secret = request.packet.secret
        data: bytes = template.ReplyPacket()
        return data


def access_request(user: str, password: str, secret: bytes, *, state: bytes | None = None,
                   message_authenticator: bool = True,
                   nas_identifier: str = "foblab") -> _packet.AuthPacket:
    """A PAP Access-Request, as `foblab validator radius test` and the tests send it."""
    pkt = _packet.AuthPacket(code=ACCESS_REQUEST, secret=secret, dict=DICTIONARY)
    if message_authenticator:
        pkt.add_message_authenticator()
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    pkt["NAS-Identifier"] = nas_identifier
    if state is not None:
        pkt["State"] = state
    return pkt


@dataclass(frozen=True)
class Reply:
    code: int
    message: str | None
    state: bytes | None
    first_attribute: int | None


def read_reply(request: _packet.AuthPacket, data: bytes) -> Reply | None:
    """The reply to `request` in `data`, None unless it is authentic (Response
    Authenticator, and Message-Authenticator required)."""
    try:
        reply = request.CreateReply(packet=data)
    except (_packet.PacketError, ValueError, KeyError, IndexError, TypeError):
        return None
    if not request.VerifyReply(reply, data, enforce_ma=True):
        return None
    raw = reply.get("Reply-Message")
    message = None if not raw else (raw[0] if isinstance(raw[0], str)
                                     else raw[0].decode("utf-8", "replace"))
    state = _one(reply, _STATE)
    first = data[20] if len(data) > 21 else None
    return Reply(reply.code, message, state, first)


CODE_NAMES = {ACCESS_ACCEPT: "Access-Accept", ACCESS_REJECT: "Access-Reject",
              ACCESS_CHALLENGE: "Access-Challenge"}

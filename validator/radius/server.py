"""The RADIUS door: Access-Request in, the validator service asked, the answer out.

`RadiusDoor.handle(datagram, address, now)` is the whole exchange without a socket (the
tests and the fuzzer drive it directly); `RadiusListener` is the thin UDP loop around it,
on its own thread inside the daemon process, so a verification waiting on SQLite never
holds up the HTTP event loop (see docs/radius.md). The datagrams that wait while one is
answered are read together and answered by `RadiusDoor.handle_many`: their verifications
share one read and one write of the store (`Validator.verify_many`), which on PostgreSQL
saves two round trips for each request but the first.

What a request goes through, in order:
1. the source address must belong to a configured client, else the datagram is dropped;
2. it must decode (pyrad) as an Access-Request or Status-Server, else dropped;
3. its Message-Authenticator must be present (unless the client is `legacy`) and valid,
   else dropped (RFC 3579 §3.2; BlastRADIUS, CVE-2024-3596);
4. a duplicate (same client, source port, Identifier and Request Authenticator within
   `DUPLICATE_SECONDS`, RFC 5080 §2.2.2) gets the answer cached for the first copy;
5. PAP: `User-Name` is the foblab user, `User-Password` the code. A `State` from an
   earlier Access-Challenge completes that challenge; otherwise the code is verified.
Every drop is counted by reason for /metrics; nothing a client sends can stop the loop.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
import select
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from validator.config import ConfigError, RadiusClientConfig, RadiusConfig
from validator.logs import REQUEST_ID, new_request_id
from validator.radius import codec
from validator.secrets_box import read_private_file
from validator.service import (
    InvalidAuthenticationCode,
    InvalidUser,
    Validator,
    ValidatorError,
    VerifyRequest,
    VerifyResult,
)

_T = TypeVar("_T")
log = logging.getLogger("foblab.radius")
access_log = logging.getLogger("foblab.access")

DUPLICATE_SECONDS = 5.0  # RFC 5080 §2.2.2: "a few seconds"
CHALLENGE_SECONDS = 60.0  # a State is good for this long, and once
MAX_CACHED = 65_536  # answers kept for duplicate detection
MAX_CHALLENGES = 10_000  # open challenges; the oldest goes first beyond this
MAX_BATCH = 32  # datagrams read and answered together at most (validator.batching's)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
VIA = "radius"

ACCEPTED = "Accepted"
WRONG = "Wrong user name or code"
REPLAYED = "That code was used already; wait for the next one"
CHALLENGE = "Enter the next code from your token"
STALE = "The challenge has expired or was used; log in again"
NOT_PAP = "Only PAP is supported: send the code as the password"
LOCKED = "Too many wrong codes; try again in {} s"
TRY_AGAIN = "The validator is busy; try again"


@dataclass(frozen=True)
class Client:
    """A RADIUS client (NAS) with its shared secret."""

    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes = field(repr=False)
    legacy: bool = False


def load_clients(config: RadiusConfig) -> list[Client]:
    """The configured clients with their secrets read (a secret file must be 0600)."""
    out = []
    for c in config.clients:
        out.append(Client(c.name, c.network, _secret(c), c.legacy))
    return out


def _secret(c: RadiusClientConfig) -> bytes:
    if c.secret_file is not None:
        raw = read_private_file(c.secret_file, f"radius client {c.name!r} secret file",
                                ConfigError)
        secret = raw.strip()
    else:
        secret = (c.secret or "").encode()
    if not secret:
        raise ConfigError(f"radius client {c.name!r} has an empty shared secret")
    return secret


@dataclass
class _Challenge:
    user: str
    client: str
    serial: str
    code: str = field(repr=False)
    expires: float


@dataclass(slots=True)
class _Step:
    """A datagram that passed its checks, to be answered once its batch is verified."""

    key: tuple[Any, ...]
    client: Client
    request: codec.Request
    address: tuple[Any, ...]
    started: float
    request_id: str  # the datagram's, in its log lines
    verify: int | None = None  # its place in the batch's verifications, if it has one
    duplicate_of: int | None = None  # a retransmission: the first copy's place


class RadiusDoor:
    """The exchange, socket-free. Thread-safe for one caller thread at a time (the
    listener is one thread); `handle` never raises for anything in the datagram."""

    def __init__(self, validator: Validator, clients: Sequence[Client], *,
                 clock: Callable[[], float] = time.time, log_requests: bool = True,
                 max_cached: int = MAX_CACHED, max_challenges: int = MAX_CHALLENGES) -> None:
        self.validator = validator
        self.clients = list(clients)
        self._clock = clock
        self.log_requests = log_requests
        self.max_cached = max_cached
        self.max_challenges = max_challenges
        self.dropped: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.duplicates = 0
        self._by_address: dict[str, Client | None] = {}
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, bytes]] = OrderedDict()
        self._challenges: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._replies = codec.Replies()
        # verifications per batch (index: size; the last, MAX_BATCH or more), and their
        # sum, counted by the listener thread alone
        self.batches = [0] * (MAX_BATCH + 1)
        self.batched = 0

    # -- the exchange ----------------------------------------------------------------------

    def handle(self, data: bytes, address: tuple[Any, ...],
               now: float | None = None) -> bytes | None:
        """The answer to one datagram from `address`, or None to drop it."""
        return self.handle_many([(data, address)], now)[0]

    def handle_many(self, datagrams: Sequence[tuple[bytes, tuple[Any, ...]]],
                    now: float | None = None) -> list[bytes | None]:
        """The answers to datagrams read together (each its answer or None, in order), the
        same as `handle` of each in turn would give. Their verifications go to the store
        together (`Validator.verify_many`); a retransmission of a request in the same
        batch gets that request's answer."""
        t = self._clock() if now is None else now
        self._expire(t)
        steps: list[_Step | bytes | None] = []
        verifies: list[VerifyRequest] = []
        firsts: dict[tuple[Any, ...], int] = {}  # a request's key -> its datagram's place
        for data, address in datagrams:
            step: _Step | bytes | None = self._guarded(
                new_request_id(), self._check, data, address, t, verifies, firsts,
                len(steps))
            steps.append(step)
        if verifies:
            self.batches[min(len(verifies), MAX_BATCH)] += 1
            self.batched += len(verifies)
        results: list[VerifyResult | Exception] = []
        if verifies:  # one alone is verify's own work, under its request id (verify_many)
            try:
                results = self.validator.verify_many(verifies, t)
            except Exception as exc:  # noqa: BLE001 - each request's answer, as alone
                results = [exc] * len(verifies)
        answers: list[bytes | None] = []
        for checked in steps:
            if isinstance(checked, _Step):
                answers.append(self._guarded(checked.request_id, self._answer, checked,
                                             results, answers, t))
            else:
                answers.append(checked)
        return answers

    def _guarded(self, request_id: str, fn: Callable[..., _T], *args: Any) -> _T | None:
        """`fn(*args)` for one datagram, under its request id; a bug costs that one
        answer, never the listener."""
        token = REQUEST_ID.set(request_id)
        try:
            return fn(*args)
        except Exception:
            log.exception("radius request failed")
            self.dropped["error"] += 1
            return None
        finally:
            REQUEST_ID.reset(token)

    def _client(self, host: str) -> Client | None:
        try:
            return self._by_address[host]
        except KeyError:
            pass
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            found = None
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found = next((c for c in self.clients if ip in c.network), None)
        if len(self._by_address) < 4096:
            self._by_address[host] = found
        return found

    def _check(self, data: bytes, address: tuple[Any, ...], now: float,
               verifies: list[VerifyRequest], firsts: dict[tuple[Any, ...], int],
               place: int) -> bytes | _Step | None:
        """One datagram through its checks: None to drop it, the answer when one is ready
        (Status-Server, a cached duplicate), else the step to answer once the batch's
        verifications are done (its verification appended to `verifies`)."""
        client = self._client(str(address[0]))
        if client is None:
            self.dropped["unknown_client"] += 1
            return None
        try:
            request = codec.decode(bytes(data), client.secret)
        except codec.Malformed:
            self.dropped["malformed"] += 1
            return None
        if request.signed and not request.authentic:
            self.dropped["bad_authenticator"] += 1
            return None
        if not request.signed and (not client.legacy or request.code == codec.STATUS_SERVER):
            self.dropped["no_message_authenticator"] += 1
            return None
        key = (client.name, address[0], address[1], request.ident, request.authenticator)
        cached = self._cache.get(key)
        if cached is not None:
            self.duplicates += 1
            return cached[1]
        request_id = REQUEST_ID.get() or new_request_id()  # set by handle_many
        if key in firsts:  # a retransmission within the batch: the first copy's answer
            return _Step(key, client, request, address, time.perf_counter(), request_id,
                         duplicate_of=firsts[key])
        firsts[key] = place
        step = _Step(key, client, request, address, time.perf_counter(), request_id)
        if request.code == codec.STATUS_SERVER:
            return step
        if request.password is not None and request.user and request.state is None:
            step.verify = len(verifies)
            verifies.append(VerifyRequest(request.user, request.password, via=VIA,
                                          client=client.name, request_id=request_id))
        return step

    def _answer(self, step: _Step, results: list[VerifyResult | Exception],
                answers: list[bytes | None], now: float) -> bytes | None:
        """The answer to a checked datagram, cached for its retransmissions."""
        request, client = step.request, step.client
        if step.duplicate_of is not None:
            self.duplicates += 1
            return answers[step.duplicate_of]
        if request.code == codec.STATUS_SERVER:  # RFC 5997: alive
            out = self._replies.answer(request, codec.ACCESS_ACCEPT)
            self.answered["status"] += 1
        else:
            result = None if step.verify is None else results[step.verify]
            code, message, state, outcome = self._decide(request, client, now, result)
            out = self._replies.answer(request, code, message, state)
            self.answered[outcome] += 1
            if self.log_requests:
                access_log.info("radius request", extra={"fields": {
                    "via": VIA, "client": client.name, "user": request.user,
                    "outcome": outcome,
                    "ms": round((time.perf_counter() - step.started) * 1e3, 3),
                    "remote_addr": str(step.address[0])}})
        self._cache[step.key] = (now + DUPLICATE_SECONDS, out)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return out

    def _expire(self, now: float) -> None:
        cache = self._cache
        while cache:
            first = next(iter(cache.values()))
            if first[0] > now:
                break
            cache.popitem(last=False)

    def _decide(self, request: codec.Request, client: Client, now: float,
                result: VerifyResult | Exception | None
                ) -> tuple[int, str, bytes | None, str]:
        """(packet code, Reply-Message, State, outcome for metrics and the log); `result`
        is the verification of the request's code when it needed one."""
        reject = codec.ACCESS_REJECT
        if request.password is None:
            return reject, NOT_PAP, None, "not_pap"
        user, code = request.user, request.password
        if not user:
            return reject, WRONG, None, "invalid_code"
        if request.state is not None:
            return self._complete(request.state, user, code, client, now)
        if isinstance(result, InvalidUser):
            return reject, WRONG, None, "invalid_code"
        if isinstance(result, ValidatorError):
            return reject, TRY_AGAIN, None, "conflict"
        if not isinstance(result, VerifyResult):  # a store down or a bug: logged, dropped
            raise result if isinstance(result, Exception) else AssertionError(result)
        return self._verdict(result, user, code, client, now)

    def _verdict(self, result: VerifyResult, user: str, code: str, client: Client,
                 now: float) -> tuple[int, str, bytes | None, str]:
        reason = result.reason.value
        if result.accepted:
            return codec.ACCESS_ACCEPT, ACCEPTED, None, reason
        if result.near_miss is not None:
            state = self._open_challenge(user, client.name, result.near_miss, code, now)
            return codec.ACCESS_CHALLENGE, CHALLENGE, state, "challenge"
        if reason == "replayed":
            return codec.ACCESS_REJECT, REPLAYED, None, reason
        if reason == "locked":
            wait = max(1, math.ceil(result.retry_after))
            return codec.ACCESS_REJECT, LOCKED.format(wait), None, reason
        # invalid_code, no_device, not_enabled: the same words, so a client cannot tell
        # whether the user exists.
        return codec.ACCESS_REJECT, WRONG, None, "invalid_code"

    def _open_challenge(self, user: str, client: str, serial: str, code: str,
                        now: float) -> bytes:
        table = self._challenges
        while table:
            first = next(iter(table.values()))
            if first.expires > now and len(table) < self.max_challenges:
                break
            table.popitem(last=False)
        state = secrets.token_bytes(16)
        table[state] = _Challenge(user, client, serial, code, now + CHALLENGE_SECONDS)
        return state

    def _complete(self, state: bytes, user: str, code: str, client: Client,
                  now: float) -> tuple[int, str, bytes | None, str]:
        """The answer to a challenge: the near-missed code and this one must be the
        token's consecutive codes; then the token is resynchronised (RFC 4226 §7.4)."""
        challenge = self._challenges.pop(state, None)  # single use, whatever the outcome
        if challenge is None or challenge.expires <= now or challenge.user != user or \
                challenge.client != client.name:
            return codec.ACCESS_REJECT, STALE, None, "stale_state"
        try:
            self.validator.resync(user, challenge.serial, challenge.code, code, now, via=VIA,
                                  client=client.name)
        except InvalidAuthenticationCode as exc:
            if exc.reason == "locked":
                wait = max(1, math.ceil(exc.retry_after))
                return codec.ACCESS_REJECT, LOCKED.format(wait), None, "locked"
            return codec.ACCESS_REJECT, WRONG, None, "invalid_code"
        except ValidatorError:
            return codec.ACCESS_REJECT, WRONG, None, "invalid_code"
        return codec.ACCESS_ACCEPT, ACCEPTED, None, "resynced"

    # -- metrics ---------------------------------------------------------------------------

    def collect_metrics(self) -> Iterator[Metric]:
        """The door's counters as Prometheus families (validator.http.metrics collects
        them at every scrape)."""
        answered = CounterMetricFamily("foblab_radius_requests", "RADIUS requests answered, "
                                       "by outcome.", labels=("outcome",))
        for outcome, n in sorted(self.answered.items()):
            answered.add_metric((outcome,), n)
        yield answered
        dropped = CounterMetricFamily("foblab_radius_dropped", "RADIUS datagrams dropped, by "
                                      "reason.", labels=("reason",))
        for reason in ("unknown_client", "malformed", "bad_authenticator",
                       "no_message_authenticator", "error"):
            dropped.add_metric((reason,), self.dropped[reason])
        yield dropped
        yield CounterMetricFamily("foblab_radius_duplicates", "Retransmissions answered from "
                                  "the cache (RFC 5080).", value=self.duplicates)
        counts = list(self.batches)  # one copy: the listener thread goes on counting
        batches = HistogramMetricFamily("foblab_radius_batch_size", "Access-Requests whose "
                                        "verifications shared one read and one write.")
        batches.add_metric((), [(str(float(b)), sum(counts[:b + 1])) for b in BATCH_BUCKETS]
                           + [("+Inf", sum(counts))],
                           self.batched)
        yield batches


def bind(host: str, port: int) -> socket.socket:
    """The listener's UDP socket; ConfigError (one line) when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for RADIUS on udp {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    return sock


class RadiusListener:
    """The UDP loop: one thread reading datagrams and answering them through the door.
    Whatever has arrived by the time it reads (up to `MAX_BATCH` datagrams) is answered
    together: while one batch waits on the store, the next gathers in the socket's
    buffer, so the busier the door, the more its requests share the store's round trips
    (one datagram alone is `handle` as before)."""

    def __init__(self, door: RadiusDoor, sock: socket.socket) -> None:
        self.door = door
        self.sock = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="radius", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.sock.setblocking(False)  # read until empty; poll() waits
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        sock, handle_many = self.sock, self.door.handle_many
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(200):  # ms: how often the loop looks at the stop flag
                    continue
            except OSError:
                continue
            batch = self._read(sock)
            if not batch:
                continue
            try:
                answers = handle_many(batch)
            except Exception:  # handle_many answers for each datagram; this is a last resort
                log.exception("radius batch failed")
                self.door.dropped["error"] += len(batch)
                continue
            for (_, address), out in zip(batch, answers, strict=True):
                if out is not None:
                    try:
                        sock.sendto(out, address)
                    except OSError:
                        pass

    def _read(self, sock: socket.socket) -> list[tuple[bytes, tuple[Any, ...]]]:
        """The datagrams waiting in the socket, at most MAX_BATCH."""
        batch: list[tuple[bytes, tuple[Any, ...]]] = []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(sock.recvfrom(codec.MAX_PACKET + 1))
            except OSError:  # BlockingIOError: none left; or an ICMP error, or closed
                break
        return batch

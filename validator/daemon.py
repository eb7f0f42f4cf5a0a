"""Running the validator as a daemon: `init_dir` makes a home for it, `serve` runs it.

    from validator.config import load
    from validator.daemon import serve
    serve(load("/var/lib/foblab/foblab.toml"))   # blocks until SIGTERM/SIGINT; returns 0

Start-up checks everything an operator can get wrong before it serves a request (key files,
the database, the port) and raises `StartupError` with a one-line reason. The listening
socket is bound here, before uvicorn starts, so "port in use" is such a reason too and
`port = 0` picks a free port (reported through `on_ready`).

With a `[radius]` table the same process also answers RADIUS over UDP (validator.radius):
its socket is bound and its clients' secrets read here too, before anything is served; the
listener runs on its own thread on the same validator, and stops before the database closes.

TLS: with `tls_cert` and `tls_key` (`serve --tls-cert/--tls-key`) the same socket speaks
HTTPS only; with `tls_client_ca` too, a client must present a certificate signed by one of
those CAs or its handshake fails. The files are loaded once here (a bad one is a
StartupError) and again by uvicorn.

Reload: SIGHUP, or POST /v1/admin/reload, re-reads the config file and the API keys file
(`Reloader`) in the event loop's thread, between requests; no socket is touched, so no
connection is dropped. The API keys, [policy] and [stations] take effect at once; any other
change is reported as needing a restart and left as it was. A config or keys file with a
problem changes nothing (the old settings stay; the reason is logged and answered).

Shutdown: SIGTERM or SIGINT makes uvicorn stop accepting, let in-flight requests finish,
run the lifespan shutdown (which closes the database) and return; `serve` then returns 0.
uvicorn re-raises the signal it caught once it is done, to exit "by the signal"; we install
no-op handlers first so that re-raise lands on them and the exit status stays 0.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from validator import logs
from validator.apikeys import (
    ApiKey,
    ApiKeyError,
    KeyRing,
    Role,
    digest,
    ensure_keys_file,
    new_key,
    write_key_file,
    write_keys,
)
from validator.config import CONFIG_NAME, ConfigError, Settings, default_document, load
from validator.connections import ConnectionGuard, guarded_protocol, raise_fd_limit
from validator.errors import ReloadFailed
from validator.retention import Retention
from validator.secrets_box import KeyFileError
from validator.service import Validator
from validator.store import AuditEvent, SQLiteStore, StoreError

log = logging.getLogger("foblab.validator")


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the operator."""


# -- init ----------------------------------------------------------------------------------

def init_dir(directory: Path, *, host: str = "127.0.0.1", port: int = 8700,
             force: bool = False, database_url: str | None = None) -> dict[str, Path | str]:
    """Create `directory` with foblab.toml, the seed key, the database, the two first API
    keys (`admin.key`, `verifier.key`) and the keys file naming them (every secret file
    0600). Refuses to touch an existing config unless `force` (and even then never
    overwrites a key or the database). Returns the paths and the two keys.
    `database_url`: keep the data in that PostgreSQL database (its tables are created; a
    database another daemon set up already needs that daemon's seed key file here first)."""
    import tomli_w

    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    config = directory / CONFIG_NAME
    if config.exists() and not force:
        raise StartupError(f"{config} exists already; this folder is initialised")
    doc = default_document(host, port)
    if database_url is not None:
        doc["validator"]["database_url"] = database_url
    files = {key: directory / doc["validator"][key] for key in
             ("database", "seed_key_file", "admin_key_file", "verifier_key_file",
              "api_keys_file")}
    for key in ("admin_key_file", "verifier_key_file", "api_keys_file", "database",
                "seed_key_file"):
        if database_url is not None and key == "seed_key_file":
            continue  # may be the shared key of the database's other daemons, copied here
        if files[key].exists():
            raise StartupError(f"{files[key]} exists already; remove it or pick another folder")
    keys = {Role.ADMIN: new_key(Role.ADMIN), Role.VERIFIER: new_key(Role.VERIFIER)}
    try:
        write_key_file(files["admin_key_file"], keys[Role.ADMIN])
        write_key_file(files["verifier_key_file"], keys[Role.VERIFIER])
        now = time.time()
        write_keys(files["api_keys_file"], [ApiKey(role.value, role, digest(key), now)
                                            for role, key in keys.items()])
        validator = Validator.open(database_url or files["database"], files["seed_key_file"])
        validator.close()
        if database_url is None:
            os.chmod(files["database"], 0o600)
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_bytes(tomli_w.dumps(doc).encode())
        os.replace(tmp, config)
    except (OSError, sqlite3.Error, KeyFileError, StoreError) as exc:
        raise StartupError(f"cannot initialise {directory}: {exc}") from None
    if database_url is not None:
        del files["database"]
    return {"config": config, **files, "admin_key": keys[Role.ADMIN],
            "verifier_key": keys[Role.VERIFIER]}


# -- start-up checks -------------------------------------------------------------------------

def describe_database(settings: Settings) -> str:
    """The configured database for messages (a URL without its password)."""
    if settings.database_url is None:
        return str(settings.database)
    from validator.store_pg import redact
    return redact(settings.database_url)


def open_validator(settings: Settings, *,
                   clock: Callable[[], float] | None = None) -> Validator:
    """The validator on the configured database and seed key; neither is ever created
    here (a typo in a path must not start an empty validator with a fresh key).

    `clock` is for foblab's own test lab (`foblab.lab(time_machine=True)`) only: `serve`
    never passes one, so a daemon run by `foblab validator serve` always reads true time."""
    where = describe_database(settings)
    if settings.database_url is None and not settings.database.is_file():
        raise StartupError(f"database {settings.database} does not exist (run foblab "
                           "validator init)")
    if settings.database_url is None and (
            not os.access(settings.database, os.R_OK | os.W_OK)
            or not os.access(settings.database.parent, os.W_OK | os.X_OK)):
        raise StartupError(f"database {settings.database} (and its folder, for the WAL) "
                           "must be writable")
    try:
        validator = Validator.open(settings.store_target, settings.seed_key_file,
                                   policy=settings.policy, durability=settings.durability,
                                   min_secret_bytes=settings.min_secret_bytes,
                                   import_limits=settings.import_limits(), create_key=False,
                                   clock=clock or time.time)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None
    except (sqlite3.Error, StoreError, OSError) as exc:
        raise StartupError(f"cannot open database {where}: {exc}") from None
    try:  # a write, so a read-only database is found now, not at the first verify
        validator.store.add_audit([AuditEvent(time.time(), "daemon_start", "ok")])
    except (sqlite3.Error, OSError, StoreError) as exc:
        validator.close()
        raise StartupError(f"cannot write database {where}: {exc}") from None
    problem = validator.check_keys()  # /healthz answers 503 with it until a rotation fixes it
    if problem:
        log.error("%s", problem)
    return validator


def load_keys(settings: Settings) -> KeyRing:
    """The named API keys; a folder made before them gets its keys file first, from its
    admin.key and verifier.key (named `admin` and `verifier`)."""
    if ensure_keys_file(settings.keys_file, {Role.ADMIN: settings.admin_key_file,
                                             Role.VERIFIER: settings.verifier_key_file}):
        log.info("made %s from the admin and verifier key files (named admin and verifier)",
                 settings.keys_file)
    return KeyRing.from_file(settings.keys_file)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context as uvicorn will make it, to find a bad file before serving."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except FileNotFoundError as exc:
        raise StartupError(f"TLS: no such file {exc.filename or settings.tls_cert}") from None
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"TLS: cannot load the certificate {settings.tls_cert} with the "
                           f"key {settings.tls_key}: {getattr(exc, 'reason', None) or exc}"
                           ) from None
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except FileNotFoundError:
            raise StartupError(f"TLS: no such file {settings.tls_client_ca}") from None
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(f"TLS: cannot load the client CAs {settings.tls_client_ca}: "
                               f"{getattr(exc, 'reason', None) or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


LIVE = frozenset({"policy", "stations", "api_keys_file", "trusted_proxies"})
"""The settings a reload applies at once; a change to any other needs a restart. (TLS: the
certificate and key are read again by every reload, new paths too: `ServedCertificate`.)"""


class ServedCertificate:
    """The TLS context the listening socket hands to each new connection, and what its
    certificate says. `reload` loads a renewed certificate and key into that very context,
    so connections made from then on get the new certificate, open ones keep theirs, and
    nothing is dropped (certbot, an ACME client or a CA's renewal, then `systemctl
    reload`). A pair that does not load changes nothing."""

    def __init__(self, settings: Settings) -> None:
        self.context: ssl.SSLContext | None = None
        self.subject = ""
        self.not_after = 0.0  # Unix time
        self._read(settings)

    def factory(self, _config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """uvicorn's `ssl_context_factory`: its own context (the files, the client CAs,
        its ciphers), kept here to be reloaded."""
        self.context = default()
        return self.context

    def reload(self, settings: Settings) -> None:
        """Load `settings`' certificate and key into the live context; StartupError (and
        nothing changed) when the pair does not load or the certificate does not parse."""
        tls_context(settings)  # on a context of its own first: a bad pair touches nothing
        assert self.context is not None and settings.tls_cert and settings.tls_key
        self._read(settings)
        self.context.load_cert_chain(settings.tls_cert, settings.tls_key)

    def _read(self, settings: Settings) -> None:
        from cryptography import x509

        assert settings.tls_cert is not None
        try:
            cert = x509.load_pem_x509_certificates(settings.tls_cert.read_bytes())[0]
        except (OSError, ValueError, IndexError) as exc:
            raise StartupError(f"TLS: cannot read the certificate {settings.tls_cert}: "
                               f"{exc}") from None
        self.subject = cert.subject.rfc4514_string()
        self.not_after = cert.not_valid_after_utc.timestamp()

    def describe(self) -> dict[str, Any]:
        return {"subject": self.subject, "not_after": logs.timestamp(self.not_after)}

    def collect_metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("foblab_tls_certificate_expiry_timestamp_seconds",
                                "When the served TLS certificate expires (Unix time).",
                                value=self.not_after)


PARENT_CHECK_SECONDS = 1.0
"""How often a worker of `serve --workers` checks that its parent is still there."""


def watch_parent(parent: int) -> threading.Thread:
    """A worker of `serve --workers` stops (SIGTERM to itself: its usual clean shutdown)
    once its parent `parent` is gone, killed without the chance to stop its workers (a
    SIGKILL): an orphan would go on holding the port, with nobody to stop or replace it.
    The check is a `getppid` a second, as gunicorn's workers do."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        log.warning("the parent process (pid %d) is gone: this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="foblab-parent", daemon=True)
    thread.start()
    return thread


CHECKPOINT_SECONDS = 0.1  # how often the Checkpointer copies the WAL into the database


class Reloader:
    """Re-reads the config file and the API keys into a running daemon: what SIGHUP and
    POST /v1/admin/reload call, in the event loop's thread. `overrides` re-applies the
    command line (serve --station ...) to the freshly read file."""

    def __init__(self, settings: Settings, validator: Validator, keys: KeyRing,
                 overrides: Callable[[Settings], Settings] | None = None) -> None:
        self.settings = settings
        self.validator = validator
        self.keys = keys
        self.overrides = overrides
        self.api: Any = None  # validator.http.decoding.Api, once the app is made
        self.tls: ServedCertificate | None = None  # with TLS, once uvicorn made its context

    def __call__(self) -> dict[str, Any]:
        old = self.settings
        if old.source is None:
            raise ReloadFailed("there is no config file to re-read")
        try:
            new = load(old.source)
            if self.overrides is not None:
                new = self.overrides(new)
            keys = load_keys(new)
            # TLS stays on: the certificate and key are read again (renewed in place, or
            # at new paths); turning it on or off, or new client CAs, needs a restart
            tls = self.tls if self.tls is not None and new.tls_cert is not None else None
            if tls is not None:
                tls.reload(new)
        except (ConfigError, ApiKeyError, StartupError) as exc:
            log.error("reload refused, nothing changed: %s", exc)
            raise ReloadFailed(f"nothing changed: {exc}") from None
        live = LIVE | ({"tls_cert", "tls_key"} if tls is not None else set())
        changed = [f.name for f in fields(Settings)
                   if f.name != "source" and getattr(new, f.name) != getattr(old, f.name)]
        restart = sorted(name for name in changed if name not in live)
        self.keys.replace(keys)
        self.validator.policy = new.policy
        if self.api is not None:
            from validator.station import Station

            stations = self.api.stations
            for name in list(stations):
                if new.stations.get(name) != stations[name].url:
                    del stations[name]
            for name, url in new.stations.items():
                if name not in stations:
                    stations[name] = Station(name, url, timeout=old.station_timeout)
            self.api.proxies.set(new.trusted_proxies)
        now = old.replace(policy=new.policy, stations=dict(new.stations),
                          api_keys_file=new.api_keys_file,
                          trusted_proxies=new.trusted_proxies)
        if tls is not None:
            now = now.replace(tls_cert=new.tls_cert, tls_key=new.tls_key)
        if self.api is not None:
            self.api.settings = now
        self.settings = now
        applied = sorted(name for name in changed if name in live)
        try:
            self.validator.store.add_audit([AuditEvent(time.time(), "reload", "ok")])
        except (sqlite3.Error, OSError) as exc:  # the reload itself has happened
            log.error("reload: cannot write the audit event: %s", exc)
        log.info("reloaded %s: %d API key(s); applied: %s", old.source,
                 len(keys.keys), ", ".join(applied) or "-")
        if tls is not None:
            log.info("TLS certificate read again: %s, valid until %s", tls.subject,
                     logs.timestamp(tls.not_after))
        if restart:
            log.warning("reload: a restart is needed for: %s (left as they were)",
                        ", ".join(restart))
        answer = {"reloaded": True, "api_keys": [{"name": k.name, "role": k.role.value}
                                                 for k in keys.keys],
                  "applied": applied, "restart_needed": restart}
        if self.tls is not None:
            answer["tls_certificate"] = self.tls.describe()
        return answer


def _host_port(host: str, port: int) -> str:
    """HOST:PORT, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _Periodic:
    """A daemon thread that calls `once()` at start and every `interval` seconds until
    stopped. A failure is logged and tried again next time."""

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def once(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        last = ""
        while not self._stop.is_set():
            try:
                self.once()
            except Exception as exc:  # a busy or broken database: next round
                if str(exc) != last:  # once per kind of failure, not every round
                    log.warning("%s failed: %s", self.name, exc)
                last = str(exc)
            else:
                last = ""
            self._stop.wait(self.interval)


class AuditPruner(_Periodic):
    """The background enforcement of the audit retention."""

    name = "audit retention"

    def __init__(self, validator: Validator, retention: Retention, interval: float) -> None:
        super().__init__(interval)
        self.validator = validator
        self.retention = retention

    def once(self) -> None:
        deleted = self.validator.prune_audit(self.retention)
        if deleted:
            log.info("audit retention: %d entries deleted", deleted,
                     extra={"fields": {"deleted": deleted}})


class Checkpointer(_Periodic):
    """SQLite's WAL copied into the database file by this thread, every `interval` seconds,
    instead of by whichever request's commit crosses 1,000 pages (`SQLiteStore.
    checkpoint_elsewhere`): that took 5-10 ms every 150 or so verifications, the p99 of the
    verify and RADIUS benchmarks (docs/benchmarks.md). SQLite releases the GIL meanwhile.
    `runs` and `copied` count the checkpoints and the pages they copied, for /metrics."""

    name = "wal checkpoint"

    def __init__(self, store: SQLiteStore, interval: float = CHECKPOINT_SECONDS) -> None:
        super().__init__(interval)
        self.store = store
        self.runs = 0
        self.copied = 0

    def start(self) -> None:
        self.store.checkpoint_elsewhere()
        super().start()

    def once(self) -> None:
        _, copied = self.store.checkpoint()
        self.runs += 1
        self.copied += copied

    def collect_metrics(self) -> Iterator[Metric]:
        yield CounterMetricFamily("foblab_sqlite_checkpoints", "WAL checkpoints run by the "
                                  "daemon's checkpoint thread.", value=self.runs)
        yield CounterMetricFamily("foblab_sqlite_checkpoint_pages", "WAL pages copied into "
                                  "the database file by those checkpoints.", value=self.copied)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None,
                 reload: Callable[[], Any] | None = None) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._reload = reload

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._reload is not None:  # SIGHUP: a reload in the loop, between requests
            import asyncio

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        if self.started and not self.should_exit and self._on_ready is not None:
            self._on_ready()

    def _hangup(self) -> None:
        assert self._reload is not None
        try:
            self._reload()
        except ReloadFailed:
            pass  # logged by the reloader; the daemon goes on with what it had

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._reload is not None:
            import asyncio

            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await super().shutdown(sockets=sockets)


def _fast(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _radius(settings: Settings, sock: socket.socket | None = None
            ) -> tuple[Any, Any] | None:
    """The RADIUS clients and bound UDP socket (`sock`, else bound here), or None without
    a [radius] table."""
    if settings.radius is None:
        return None
    try:
        from validator.radius import server as radius
    except ModuleNotFoundError as exc:
        raise StartupError(f"[radius] needs the radius extra: pip install 'foblab[radius]' "
                           f"({exc.name} is missing)") from None
    if not settings.radius.clients:
        raise StartupError("[radius] has no [[radius.clients]]: every request would be "
                           "dropped")
    try:
        clients = radius.load_clients(settings.radius)
        sock = sock or radius.bind(settings.radius.host, settings.radius.port)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    return clients, sock


def serve(settings: Settings, *, on_ready: Callable[[str], None] | None = None,
          log_level: str = "info", graceful_timeout: int | None = 30,
          on_radius: Callable[[str], None] | None = None,
          overrides: Callable[[Settings], Settings] | None = None, workers: int = 1,
          sock: socket.socket | None = None, log_format: str | None = None,
          parent: int | None = None, radius_socket: socket.socket | None = None,
          worker: tuple[int, Path] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; SIGHUP reloads. Raises StartupError before
    serving; returns 0 after a clean shutdown, 1 if uvicorn could not start. `on_radius`
    gets the RADIUS door's `HOST:PORT` once it answers (before `on_ready`); `overrides`
    re-applies the command line to the config file on a reload. `workers` > 1: that many
    processes on one port (`serve_workers`). `sock`: an already bound listening socket.
    `log_format`: json, text or auto (validator.logs); None: the config's `log_format`.
    `parent`: the pid of `serve_workers` when this is one of its workers (a reload through
    the API then asks the parent to reload every worker); of its workers, only the one
    given the bound `radius_socket` answers RADIUS. `worker`: its number and the folder
    where the workers share their metrics (`Metrics.share`)."""
    if workers > 1:
        return serve_workers(settings, workers, on_ready=on_ready, log_level=log_level,
                             graceful_timeout=graceful_timeout, log_format=log_format,
                             overrides=overrides, on_radius=on_radius)
    from validator.app import create_app

    logs.configure(log_format or settings.log_format, log_level)
    before, after = raise_fd_limit()
    if after != before:
        log.info("file-descriptor limit raised from %d to %d", before, after)
    guard = ConnectionGuard(settings.max_connections, settings.head_timeout)
    guard.fit_fd_limit()
    try:
        keys = load_keys(settings)
    except ApiKeyError as exc:
        raise StartupError(str(exc)) from None
    tls_context(settings)
    radius = _radius(settings, radius_socket) \
        if parent is None or radius_socket is not None else None
    try:
        sock = sock or bind(settings.host, settings.port)
    except BaseException:
        if radius is not None:
            radius[1].close()
        raise
    try:
        validator = open_validator(settings)
    except BaseException:
        sock.close()
        if radius is not None:
            radius[1].close()
        raise
    closed = False
    listener: Any = None
    metrics: Any = None  # the app's, once made
    retention = Retention(settings.audit_max_age_days, settings.audit_max_rows)
    pruner = AuditPruner(validator, retention, settings.audit_prune_seconds) \
        if retention.active else None
    store = validator.store
    checkpointer = Checkpointer(store) if isinstance(store, SQLiteStore) else None

    def close(quiet: bool = False) -> None:
        nonlocal closed
        if not closed:
            closed = True
            if pruner is not None:
                pruner.stop()
            if checkpointer is not None:
                checkpointer.stop()
            if listener is not None:
                listener.stop()
            elif radius is not None:
                radius[1].close()
            if metrics is not None:
                metrics.stop_sharing()
            validator.close()
            if not quiet:
                log.info("database closed")

    reloader = Reloader(settings, validator, keys, overrides)
    api_reload: Callable[[], dict[str, Any]] = reloader
    if parent is not None:
        watch_parent(parent)
        def api_reload() -> dict[str, Any]:
            """POST /v1/admin/reload in a worker: this worker at once, then every worker
            through the parent's SIGHUP (so the next connection, wherever it lands, has
            the same keys)."""
            done = reloader()
            if os.getppid() == parent:  # never a signal to whoever adopted an orphan
                os.kill(parent, signal.SIGHUP)
            return done
    try:
        try:
            app = create_app(validator, keys, settings, on_shutdown=close,
                             connections=guard, reload=api_reload)
            reloader.api = app.state.api
            if worker is not None:
                metrics = app.state.api.metrics
                metrics.share(worker[1], worker[0])
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise StartupError(f"cannot build the application: {exc}") from None
        if checkpointer is not None:  # before the RADIUS thread opens its connection
            app.state.api.metrics.add_collector(checkpointer.collect_metrics)
            checkpointer.start()
        if radius is not None:
            from validator.radius.server import RadiusDoor, RadiusListener

            clients, udp = radius
            door = RadiusDoor(validator, clients, log_requests=settings.access_log)
            app.state.api.metrics.add_collector(door.collect_metrics)
            listener = RadiusListener(door, udp)
            for client in clients:
                if client.legacy:
                    log.warning("radius client %s (%s) is legacy: its requests need no "
                                "Message-Authenticator (BlastRADIUS, CVE-2024-3596)",
                                client.name, client.network)
            listener.start()
            where = _host_port(*listener.address)
            log.info("radius door on udp %s (%d client(s))", where, len(clients))
            if on_radius is not None:
                on_radius(where)
        if pruner is not None:
            pruner.start()
            log.info("audit retention: max age %g days, max rows %d (0: none), every %g s",
                     retention.max_age_days, retention.max_rows, settings.audit_prune_seconds)
        host, port = sock.getsockname()[:2]
        scheme = settings.scheme
        url = f"{scheme}://{_host_port(host, port)}"
        tls: dict[str, Any] = {}
        if settings.tls_cert is not None:
            served = ServedCertificate(settings)
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key),
                   "ssl_context_factory": served.factory}
            if settings.tls_client_ca is not None:
                tls.update(ssl_ca_certs=str(settings.tls_client_ca),
                           ssl_cert_reqs=ssl.CERT_REQUIRED)
            reloader.tls = served
            app.state.api.metrics.add_collector(served.collect_metrics)
        config = uvicorn.Config(
            app, loop="uvloop" if _fast("uvloop") else "asyncio",
            # our httptools protocol with the head deadline and the connection cap
            # (validator/connections.py); X-Forwarded-For (from trusted_proxies only) is
            # read inside the app, after the request id middleware saw the real peer
            http=guarded_protocol(guard), lifespan="on", proxy_headers=False,
            access_log=False, log_config=None, log_level=log_level, server_header=False,
            timeout_graceful_shutdown=graceful_timeout, backlog=2048, **tls)
        server = _Server(config, None if on_ready is None else lambda: on_ready(url),
                         reload=reloader)
        previous: dict[signal.Signals, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: None)
        try:
            log.info("serving on %s (%d station(s))", url, len(settings.stations))
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0 if server.started else 1
    finally:
        sock.close()
        close(quiet=True)  # already closed by the lifespan shutdown unless start-up failed


# -- several processes on one port ------------------------------------------------------------

def serve_workers(settings: Settings, workers: int, *,
                  on_ready: Callable[[str], None] | None = None, log_level: str = "info",
                  graceful_timeout: int | None = 30, log_format: str | None = None,
                  overrides: Callable[[Settings], Settings] | None = None,
                  on_radius: Callable[[str], None] | None = None) -> int:
    """`workers` processes answering on one listening socket (bound here, inherited by
    each forked worker; the kernel spreads the connections). Each worker opens its own
    database connections: a SQLite file in WAL mode, or PostgreSQL. The database and keys
    are opened once here first (start-up checks, migrations, an interrupted key rotation
    settled), then closed before forking. `on_ready` runs once every worker listens.
    SIGTERM/SIGINT is passed to every worker, each finishes its requests and closes its
    database; returns 0 when all exited cleanly. A worker that dies otherwise is replaced.
    SIGHUP is passed to every worker too: each re-reads the config and API keys (`overrides`
    re-applies the command line, as in `serve`).

    With a `[radius]` table, worker 0 alone answers RADIUS, on a UDP socket bound here
    (`on_radius` gets its address once every worker listens): a retransmission and the
    answer to an Access-Challenge must reach the process that remembers the first
    request, whatever source port the client sends them from. This process keeps the
    socket open, so a replacement of worker 0 answers on the same port, and datagrams that
    arrive meanwhile wait in the socket's buffer.
    """
    logs.configure(log_format or settings.log_format, log_level)
    if settings.stations:
        raise StartupError("--workers needs a config without [stations]: a serial port is "
                           "opened by one process only")
    radius = _radius(settings)  # its clients' secrets read now: a bad one stops us here
    udp = None if radius is None else radius[1]
    try:
        sock = bind(settings.host, settings.port)
    except BaseException:
        if udp is not None:
            udp.close()
        raise
    try:
        open_validator(settings).close()
    except BaseException:
        sock.close()
        if udp is not None:
            udp.close()
        raise
    # each worker writes its metrics here, and shows the others' (Metrics.share)
    from validator.http.metrics import shared_folder

    shared = shared_folder()
    ready_r, ready_w = os.pipe()
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    parent = os.getpid()

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                door = udp if number == 0 else None  # the RADIUS socket: worker 0's alone
                if udp is not None and door is None:
                    udp.close()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                # until its event loop takes SIGHUP over (a reload), a hang-up passed on
                # by the parent must not end a worker that is still starting
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                def say_ready(_url: str) -> None:
                    os.write(ready_w, b"r")

                code = serve(settings, log_level=log_level, graceful_timeout=graceful_timeout,
                             sock=sock, on_ready=say_ready, log_format=log_format,
                             overrides=overrides, parent=parent, radius_socket=door,
                             worker=(number, shared))
            except StartupError as exc:
                log.error("worker %d: %s", number, exc)
            except BaseException:  # noqa: BLE001 - a worker reports, never unwinds the parent
                log.exception("worker %d failed", number)
            finally:
                os._exit(code)
        children[pid] = number

    def stop_all(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def hang_up(*_: Any) -> None:  # reload: every worker re-reads the config and keys
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hang_up)
    codes: list[int] = []
    try:
        for number in range(workers):
            spawn(number)
        ready = 0
        died = False
        while ready < workers and not stopping and not died:
            if select.select([ready_r], [], [], 0.5)[0]:
                ready += len(os.read(ready_r, workers))
            pid, _ = os.waitpid(-1, os.WNOHANG)
            died = pid != 0 and children.pop(pid, None) is not None
        if ready < workers and not stopping:
            stop_all()
            _reap(children)
            raise StartupError(f"only {ready} of {workers} workers started (see the log)")
        host, port = sock.getsockname()[:2]
        scheme = "https" if settings.tls_cert is not None else "http"
        url = f"{scheme}://{_host_port(host, port)}"
        log.info("%d workers serving on %s", workers, url)
        if udp is not None and not stopping:
            where = _host_port(*udp.getsockname()[:2])
            log.info("radius door on udp %s, in worker 0", where)
            if on_radius is not None:
                on_radius(where)
        if on_ready is not None and not stopping:
            on_ready(url)
        while children:
            pid, status = os.wait()
            number = children.pop(pid, -1)
            if number < 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                codes.append(code)
            else:
                log.error("worker %d (pid %d) ended with status %d; starting another",
                          number, pid, code)
                time.sleep(0.5)
                spawn(number)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(ready_r)
        os.close(ready_w)  # open until here: a replacement worker says ready too
        sock.close()
        if udp is not None:
            udp.close()
        shutil.rmtree(shared, ignore_errors=True)
    # -SIGTERM: a worker still starting when asked to stop (no request in flight yet)
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


def _reap(children: dict[int, int]) -> None:
    while children:
        pid, _ = os.wait()
        children.pop(pid, None)


__all__ = ["ConfigError", "Reloader", "StartupError", "init_dir", "open_validator", "serve",
           "serve_workers"]

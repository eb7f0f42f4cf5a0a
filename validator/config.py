"""The daemon's configuration: `foblab.toml`, written by `foblab validator init`.

    [validator]
    database = "validator.db"          # paths are relative to the config file's folder
    database_url = "postgresql://..."  # instead of the file: a PostgreSQL database that
                                       # several daemons share; FOBLAB_DATABASE_URL overrides
    seed_key_file = "seed.key"         # AES-256-GCM key of the seeds at rest (0600)
    admin_key_file = "admin.key"       # the first admin key (0600; the CLI's --dir reads it)
    verifier_key_file = "verifier.key" # the first verifier key (0600)
    api_keys_file = "api-keys.toml"    # every named API key's role and digest (0600)
    tls_cert = "cert.pem"              # serve HTTPS with this certificate chain (PEM)...
    tls_key = "key.pem"                # ...and its private key; both or neither
    tls_client_ca = "clients-ca.pem"   # require client certificates signed by these CAs
    host = "127.0.0.1"
    port = 8700
    durability = "normal"              # or "full": fsync every accepted code
    max_body_bytes = 16384             # every request body but seed-file imports
    max_import_bytes = 16777216        # POST /v1/tokens/import, and a seed file in it
    import_max_depth = 32              # a seed file's XML nesting
    import_max_elements = 1000000      # a seed file's XML elements
    import_max_keys = 100000           # a seed file's keys (PSKC) or rows (CSV)
    import_max_field_chars = 4096      # one CSV field, one XML element's text
    min_secret_bytes = 16              # every token's seed; 10 for a legacy fleet
    station_timeout = 2.0              # seconds to wait for a token's reply on a station
    access_log = true
    head_timeout = 5.0                 # seconds a connection has to send a request head
    max_connections = 1024             # open connections; idle ones are shed beyond it
    trusted_proxies = []               # addresses/networks whose X-Forwarded-For counts
    ui = true                          # the web console at /ui/ (needs the `ui` extra)
    ui_session_seconds = 3600          # a console sign-in lasts this long
    log_format = "auto"                # json, text, or auto: JSON unless stderr is a terminal
    audit_max_age_days = 0             # audit entries older than this are deleted (0: kept)
    audit_max_rows = 0                 # only the newest this many are kept (0: no cap)
    audit_prune_seconds = 300          # how often the daemon enforces the two above

    [policy]                           # validator.core.Policy fields; all optional
    window = 1
    max_devices = 8

    [stations]                         # name = pyserial URL; the only ports ever opened
    bench1 = "/dev/ttyUSB0"

    [aws]                              # handed to validator.aws as it is

    [radius]                           # the RADIUS door; off without this table
    listen = "127.0.0.1:1812"          # serve --radius HOST:PORT overrides it
    [[radius.clients]]                 # one per NAS; requests from elsewhere are dropped
    name = "vpn"
    address = "127.0.0.1/32"           # an address or a CIDR
    secret_file = "radius-vpn.secret"  # relative to this folder, 0600 (or secret = "...")
    legacy = false                     # true: no Message-Authenticator required (logged)

Unknown keys are refused (a typo must not silently fall back to a default). Precedence:
command-line options, then this file, then the defaults here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validator import rules
from validator.core import Policy
from validator.drift import DriftPolicy
from validator.importers import DEFAULT_LIMITS, ImportLimits
from validator.service import LOWEST_MIN_SECRET_BYTES, MAX_SECRET_BYTES, MIN_SECRET_BYTES
from validator.store import Durability

CONFIG_NAME = "foblab.toml"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700
DEFAULT_RADIUS_PORT = 1812


DATABASE_URL_ENV = "FOBLAB_DATABASE_URL"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


def check_database_url(url: object) -> str:
    """A PostgreSQL URL, or ConfigError (never echoing the URL: it may hold a password)."""
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")) \
            or len(url) > 2048:
        raise ConfigError(f"database_url (or {DATABASE_URL_ENV}) must be a postgresql:// URL")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything `serve` needs, paths resolved."""

    database: Path
    seed_key_file: Path
    admin_key_file: Path
    verifier_key_file: Path
    api_keys_file: Path | None = None  # None: beside the database, api-keys.toml
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    durability: Durability = Durability.NORMAL
    max_body_bytes: int = 16 * 1024
    max_import_bytes: int = 16 * 1024 * 1024
    import_max_depth: int = DEFAULT_LIMITS.max_depth
    import_max_elements: int = DEFAULT_LIMITS.max_elements
    import_max_keys: int = DEFAULT_LIMITS.max_keys
    import_max_field_chars: int = DEFAULT_LIMITS.max_field_chars
    min_secret_bytes: int = MIN_SECRET_BYTES
    station_timeout: float = 2.0
    access_log: bool = True
    head_timeout: float = 5.0
    max_connections: int = 1024
    trusted_proxies: tuple[str, ...] = ()
    ui: bool = True
    ui_session_seconds: float = 3600.0
    log_format: str = "auto"
    audit_max_age_days: float = 0.0  # 0: no age limit
    audit_max_rows: int = 0  # 0: no row cap
    audit_prune_seconds: float = 300.0
    policy: Policy = field(default_factory=Policy)
    stations: dict[str, str] = field(default_factory=dict)
    aws: dict[str, Any] = field(default_factory=dict)
    radius: RadiusConfig | None = None  # None: no RADIUS door
    source: Path | None = None  # the config file, for messages
    database_url: str | None = None  # a PostgreSQL database instead of the SQLite file

    @property
    def store_target(self) -> str | Path:
        """What the store opens: the PostgreSQL URL if there is one, else the file."""
        return self.database_url or self.database

    def import_limits(self) -> ImportLimits:
        return ImportLimits(max_bytes=self.max_import_bytes, max_depth=self.import_max_depth,
                            max_elements=self.import_max_elements,
                            max_keys=self.import_max_keys,
                            max_field_chars=self.import_max_field_chars)

    @property
    def keys_file(self) -> Path:
        return self.api_keys_file or self.admin_key_file.with_name("api-keys.toml")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RadiusClientConfig:
    """One RADIUS client (NAS) as configured; its secret is read at start-up."""

    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret_file: Path | None = None
    secret: str | None = field(default=None, repr=False)
    legacy: bool = False


@dataclass(frozen=True)
class RadiusConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_RADIUS_PORT
    clients: tuple[RadiusClientConfig, ...] = ()


def parse_listen(text: str, what: str = "[radius] listen") -> tuple[str, int]:
    """`HOST:PORT` (`[V6]:PORT` for IPv6) as (host, port); port 0 picks a free one."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, not {text!r}")
    return host, int(port)


def _radius(raw: Any, base: Path) -> RadiusConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[radius] must be a table")
    extra = set(raw) - {"listen", "clients"}
    if extra:
        raise ConfigError(f"unknown key(s) in [radius]: {', '.join(sorted(extra))}")
    host, port = parse_listen(raw.get("listen", f"{DEFAULT_HOST}:{DEFAULT_RADIUS_PORT}"))
    clients: list[RadiusClientConfig] = []
    entries = raw.get("clients", [])
    if not isinstance(entries, list):
        raise ConfigError("[[radius.clients]] must be an array of tables")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError("[[radius.clients]] must be an array of tables")
        extra = set(entry) - {"name", "address", "secret_file", "secret", "legacy"}
        if extra:
            raise ConfigError(f"unknown key(s) in [[radius.clients]]: "
                              f"{', '.join(sorted(extra))}")
        name = entry.get("name")
        if not isinstance(name, str) or not rules.STATION.matches(name):  # as station names
            raise ConfigError(f"[[radius.clients]] name {name!r} must be "
                              f"{rules.STATION.requirement()}")
        if any(c.name == name for c in clients):
            raise ConfigError(f"[[radius.clients]] name {name!r} is used twice")
        try:
            network = ipaddress.ip_network(str(entry.get("address", "")), strict=False)
        except ValueError:
            raise ConfigError(f"radius client {name!r}: address must be an IP address or "
                              f"a CIDR, not {entry.get('address')!r}") from None
        has_file, has_secret = "secret_file" in entry, "secret" in entry
        if has_file == has_secret:
            raise ConfigError(f"radius client {name!r} needs secret_file or secret (one)")
        secret_file = None
        if has_file:
            raw_path = entry["secret_file"]
            if not isinstance(raw_path, str) or not raw_path:
                raise ConfigError(f"radius client {name!r}: secret_file must be a path")
            path = Path(raw_path).expanduser()
            secret_file = path if path.is_absolute() else base / path
        secret = entry.get("secret")
        if has_secret and (not isinstance(secret, str) or not secret):
            raise ConfigError(f"radius client {name!r}: secret must be a non-empty string")
        legacy = _typed("radius.clients", "legacy", entry.get("legacy", False), bool)
        clients.append(RadiusClientConfig(name, network, secret_file, secret, legacy))
    return RadiusConfig(host, port, tuple(clients))


_FILE_KEYS = ("database", "seed_key_file", "admin_key_file", "verifier_key_file",
              "api_keys_file")
_DEFAULT_FILES = {"database": "validator.db", "seed_key_file": "seed.key",
                  "admin_key_file": "admin.key", "verifier_key_file": "verifier.key",
                  "api_keys_file": "api-keys.toml"}
_OPTIONAL_FILES = ("tls_cert", "tls_key", "tls_client_ca")
_SCALARS: dict[str, type] = {"host": str, "port": int, "durability": str,
                             "max_body_bytes": int, "max_import_bytes": int,
                             "station_timeout": float, "access_log": bool, "ui": bool,
                             "ui_session_seconds": float, "head_timeout": float,
                             "max_connections": int,
                             "import_max_depth": int, "import_max_elements": int,
                             "import_max_keys": int, "import_max_field_chars": int,
                             "min_secret_bytes": int, "log_format": str,
                             "audit_max_age_days": float, "audit_max_rows": int,
                             "audit_prune_seconds": float}
_POLICY_TYPES: dict[str, type] = {
    f.name: str if f.name == "drift_policy" else type(getattr(Policy(), f.name))
    for f in dataclasses.fields(Policy)}


def _typed(section: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"[{section}] {key} must be a {kind.__name__}, not {value!r}")
    return value


def _proxies(raw: Any) -> tuple[str, ...]:
    """The trusted proxies: IP addresses or networks, each checked."""
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError("[validator] trusted_proxies must be a list of addresses or "
                          "networks, e.g. [\"127.0.0.1\", \"10.0.0.0/8\"]")
    for entry in raw:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"[validator] trusted_proxies: {entry!r} is not an IP address "
                              "or network") from None
    return tuple(raw)


def check_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> None:
    """TLS settings that make sense together: a certificate and its key, or neither."""
    if (cert is None) != (key is None):
        raise ConfigError("TLS needs both tls_cert and tls_key (--tls-cert and --tls-key)")
    if client_ca is not None and cert is None:
        raise ConfigError("tls_client_ca (--tls-client-ca) needs tls_cert and tls_key")


def check_station(name: str, url: str) -> None:
    if not rules.STATION.matches(name):
        raise ConfigError(f"station name {name!r} must be {rules.STATION.requirement()}")
    if not isinstance(url, str) or not url or len(url) > 1024:
        raise ConfigError(f"station {name!r} needs a port URL (a device path, a PTY "
                          "symlink or socket://HOST:PORT)")


def parse(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Settings:
    """Settings from a parsed TOML document; relative paths are resolved against `base`."""
    unknown = set(data) - {"validator", "policy", "stations", "aws", "radius"}
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))}")
    main = dict(data.get("validator", {}))
    extra = set(main) - set(_FILE_KEYS) - set(_OPTIONAL_FILES) - set(_SCALARS) \
        - {"trusted_proxies", "database_url"}
    if extra:
        raise ConfigError(f"unknown key(s) in [validator]: {', '.join(sorted(extra))}")
    values: dict[str, Any] = {}
    for key in _FILE_KEYS:
        raw = main.get(key, _DEFAULT_FILES[key])
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"[validator] {key} must be a path")
        path = Path(raw).expanduser()
        values[key] = path if path.is_absolute() else base / path
    for key in _OPTIONAL_FILES:
        if key in main:
            raw = main[key]
            if not isinstance(raw, str) or not raw:
                raise ConfigError(f"[validator] {key} must be a path")
            path = Path(raw).expanduser()
            values[key] = path if path.is_absolute() else base / path
    check_tls(values.get("tls_cert"), values.get("tls_key"), values.get("tls_client_ca"))
    for key, kind in _SCALARS.items():
        if key in main:
            values[key] = _typed("validator", key, main[key], kind)
    try:
        values["durability"] = Durability(str(values.get("durability", "normal")).upper())
    except ValueError:
        raise ConfigError("[validator] durability must be \"normal\" or \"full\"") from None
    if not 0 <= values.get("port", DEFAULT_PORT) <= 65535:
        raise ConfigError("[validator] port must be 0-65535")
    for key in ("max_body_bytes", "max_import_bytes"):
        if values.get(key, 1024) < 1024:
            raise ConfigError(f"[validator] {key} must be at least 1024")
    for key in ("import_max_depth", "import_max_elements", "import_max_keys",
                "import_max_field_chars"):
        if values.get(key, 1) < 1:
            raise ConfigError(f"[validator] {key} must be at least 1")
    if not LOWEST_MIN_SECRET_BYTES <= values.get("min_secret_bytes", MIN_SECRET_BYTES) \
            <= MAX_SECRET_BYTES:
        raise ConfigError(f"[validator] min_secret_bytes must be {LOWEST_MIN_SECRET_BYTES} "
                          f"to {MAX_SECRET_BYTES}")
    if values.get("station_timeout", 1.0) <= 0:
        raise ConfigError("[validator] station_timeout must be positive")
    if not 0 < values.get("head_timeout", 1.0) <= 3600:
        raise ConfigError("[validator] head_timeout must be more than 0 and at most 3600 s")
    if values.get("max_connections", 1) < 1:
        raise ConfigError("[validator] max_connections must be at least 1")
    values["trusted_proxies"] = _proxies(main.get("trusted_proxies", []))
    url = os.environ.get(DATABASE_URL_ENV) or main.get("database_url")
    if url is not None:
        values["database_url"] = check_database_url(url)
    if values.get("log_format", "auto") not in ("json", "text", "auto"):
        raise ConfigError("[validator] log_format must be \"json\", \"text\" or \"auto\"")
    if values.get("audit_max_age_days", 0.0) < 0 or values.get("audit_max_rows", 0) < 0:
        raise ConfigError("[validator] audit_max_age_days and audit_max_rows must be >= 0 "
                          "(0: no limit)")
    if not 1 <= values.get("audit_prune_seconds", 300.0) <= 86_400:
        raise ConfigError("[validator] audit_prune_seconds must be 1 to 86400")
    if not 1 <= values.get("ui_session_seconds", 60.0) <= 30 * 86_400:
        raise ConfigError("[validator] ui_session_seconds must be 1 to 2592000 (30 days)")

    policy_raw = dict(data.get("policy", {}))
    extra = set(policy_raw) - set(_POLICY_TYPES)
    if extra:
        raise ConfigError(f"unknown key(s) in [policy]: {', '.join(sorted(extra))}")
    policy_args = {k: _typed("policy", k, v, _POLICY_TYPES[k]) for k, v in policy_raw.items()}
    if "drift_policy" in policy_args:
        try:
            policy_args["drift_policy"] = DriftPolicy(policy_args["drift_policy"])
        except ValueError:
            raise ConfigError("[policy] drift_policy must be one of "
                              f"{', '.join(p.value for p in DriftPolicy)}") from None
    try:
        values["policy"] = Policy(**policy_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[policy] {exc}") from None

    stations = dict(data.get("stations", {}))
    for name, url in stations.items():
        check_station(name, url)
    values["stations"] = stations
    values["aws"] = dict(data.get("aws", {}))
    if "radius" in data:
        values["radius"] = _radius(data["radius"], base)
    return Settings(source=source, **values)


def load(path: str | Path) -> Settings:
    """Read and check a config file; every problem is a one-line `ConfigError`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse(data, path.resolve().parent, source=path)


def default_document(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """What `init` writes: every [validator] key with its default, empty [stations]."""
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
    scalars = {key: defaults[key] for key in _SCALARS}
    scalars.update(host=host, port=port, durability=Durability.NORMAL.value.lower())
    policy = Policy()
    return {
        "validator": {**_DEFAULT_FILES, **scalars,
                      "trusted_proxies": list(defaults["trusted_proxies"])},
        "policy": {key: getattr(policy, key) for key in _WRITTEN_POLICY},
        "stations": {},
        "aws": {},
    }


_WRITTEN_POLICY = ("window", "max_failures", "lock_base", "lock_cap", "max_devices")
"""The [policy] keys `init` writes out (with the core's defaults), as the ones an operator
tunes first; every other Policy field may be added by hand."""

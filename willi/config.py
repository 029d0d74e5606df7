"""Configuration: WILLI_ keys from an env file and the environment (SPEC §5, §6).

Everything is checked here, once, at start: a bad value stops Willi with one
line naming the key, the value and what was expected, instead of surfacing
as an odd failure in the middle of a session. An unknown WILLI_ key in the
env file is an error too, because a typo would otherwise silently leave a
default in force. In the real environment it is only a warning (naming the
closest known key), because others put WILLI_* variables there: Kubernetes
service links (`WILLI_PORT=tcp://...` for a Service called willi) or tools
with a WILLI_DIR of their own must not stop the start.

One table maps each key to its Config field and parser; the dataclass field
defaults are the table's default column, so code and tests that build a
Config by hand get the same defaults as an operator who sets nothing.
Values are never read from the process environment here: the caller passes `environ`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

import dotenv

from willi.errors import ConfigError
from willi.routing import MappingSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[str, int]

DEFAULT_ENV_FILE = "willi.env"
_MASK = "***"


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration. Durations in seconds, sizes in bytes."""

    listen: tuple[Address, ...] = (("0.0.0.0", 25),)
    hostname: str = field(default_factory=socket.getfqdn)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_handshake_timeout: float = 30.0
    proxy_protocol: bool = False
    proxy_protocol_from: tuple[Network, ...] = ()
    proxy_protocol_timeout: float = 5.0  # Postfix's smtpd_upstream_proxy_timeout
    max_message_size: int = 20 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    max_connection_rate_per_ip: int = 300  # per minute; Postfix's smtpd_client_connection_rate_limit
    connection_rate_exceptions: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))
    max_errors: int = 10
    split_recipients: bool = True
    bare_lf: str = "reject"  # reject | pass
    recipient_delimiter: str = ""
    client_timeout: float = 300.0
    client_record_deadline: bool = True  # the timeout bounds each line, not each byte
    stress_client_timeout: float = 10.0  # the client timeout near max_connections
    stress_threshold: int = 80  # percent of max_connections that is "near"
    min_data_rate: int = 500  # body octets/second that earn time; 0: off
    upstream_connect_timeout: float = 30.0
    upstream_command_timeout: float = 300.0
    upstream_data_timeout: float = 600.0
    upstream_retry_after: float = 30.0
    upstream_pool_idle: float = 5.0  # 0: upstream connections are never kept between sessions
    upstream_tls_resume: bool = True  # offer a target's last TLS session (abbreviated handshake)
    shutdown_timeout: float = 30.0
    lookup_timeout: float = 15.0
    lookup_threads: int = 4
    lookup_queue: int = 1000
    upstream_starttls: str = "if-client"  # if-client | opportunistic | required | off
    upstream_tls_ca: str | None = None
    upstream_tls_cert: str | None = None
    upstream_tls_key: str | None = None
    xclient: str = "auto"  # auto | required | off (off whenever PROXY protocol is used)
    upstream_proxy_protocol: str = "off"  # off | v1 | v2
    upstream_auth: str = "off"  # off | plain | external
    upstream_auth_user: str | None = None
    upstream_auth_password: str | None = None
    mappings: tuple[MappingSpec, ...] = ()
    workers: int = 1
    log_format: str = "logfmt"  # logfmt | json
    log_level: str = "info"  # debug | info | warning | error
    log_buffer: int = 10_000  # lines held while the reader of stdout stalls; more are dropped, counted
    metrics_listen: Address | None = None


class _Invalid(ValueError):
    """Raised by a parser; its text says what was expected."""


# --- parsers: str -> value, or _Invalid(expected) ------------------------------

_SIZE_RE = re.compile(r"(\d+)\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = MappingProxyType({None: 1, "k": 1024, "m": 1024**2, "g": 1024**3})
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)", re.IGNORECASE)
_DURATION_UNITS = MappingProxyType({"": 1, "s": 1, "m": 60, "h": 3600})
_NUMERIC_HOST = re.compile(r"[0-9.]+")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes, or a whole number with k/KiB, M/MiB, G/GiB (1024 multiples)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match or int(match[1]) < 1:
        raise _Invalid("a size >= 1 in bytes, or with KiB/MiB/GiB")
    unit = match[2].lower() if match[2] else None
    return int(match[1]) * _SIZE_UNITS[unit]


MAX_DURATION = 365 * 24 * 3600.0  # a year: longer is a typo, and "9" * 400 seconds is infinite


def parse_duration(text: str) -> float:
    """Seconds, or a number with an s/m/h suffix; floats allowed, > 0, at most a year."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not match or float(match[1]) <= 0:
        raise _Invalid("a duration > 0 in seconds, or with s/m/h")
    seconds = float(match[1]) * _DURATION_UNITS[match[2].lower()]
    if not seconds <= MAX_DURATION:
        raise _Invalid("a duration of at most a year (8760h)")
    return seconds


def parse_duration_or_off(text: str) -> float:
    """A duration, or 0 (also "off") to turn the feature off."""
    if text.strip().lower() in ("0", "0s", "off"):
        return 0.0
    try:
        return parse_duration(text)
    except _Invalid:
        raise _Invalid("a duration in seconds, or with s/m/h; 0 or off to turn it off") from None


def parse_bool(text: str) -> bool:
    """on/off, true/false, yes/no, 1/0, any case."""
    word = text.strip().lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise _Invalid("on/off, true/false, yes/no or 1/0")


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A parser for whole numbers within bounds."""
    expected = (
        f"a whole number >= {minimum}"
        if maximum is None
        else f"a whole number from {minimum} to {maximum}"
    )

    def parse(text: str) -> int:
        text = text.strip()
        if not text.isascii() or not text.isdigit():
            raise _Invalid(expected)
        number = int(text)
        if number < minimum or (maximum is not None and number > maximum):
            raise _Invalid(expected)
        return number

    return parse


def _choice(*names: str) -> Callable[[str], str]:
    """A parser for one of a few words, any case."""

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in names:
            raise _Invalid("one of " + ", ".join(names))
        return word

    return parse


def parse_address(text: str) -> Address:
    """`host:port`, `[v6]:port`; `*:port` and `:port` mean all IPv4 addresses."""
    expected = "host:port ([::]:25 for IPv6, *:25 for all addresses)"
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid(expected)
    if host in ("", "*"):
        return ("0.0.0.0", int(port))
    if host.startswith("[") and host.endswith("]"):
        try:
            return (str(ipaddress.IPv6Address(host[1:-1])), int(port))
        except ValueError:
            raise _Invalid(expected) from None
    if ":" in host or not _is_host(host):
        raise _Invalid(expected)  # an IPv6 address needs brackets
    if _NUMERIC_HOST.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)  # 256.1.1.1 would otherwise go to DNS as a name
        except ValueError:
            raise _Invalid(expected) from None
    return (host, int(port))


def parse_listen(text: str) -> tuple[Address, ...]:
    """A comma-separated list of listen addresses."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise _Invalid("comma-separated host:port ([::]:25 for IPv6)")
    try:
        return tuple(parse_address(part) for part in parts)
    except _Invalid:
        raise _Invalid("comma-separated host:port ([::]:25 for IPv6)") from None


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (host bits are ignored)."""
    expected = "comma-separated IP addresses or CIDR networks"
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        networks = tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError:
        raise _Invalid(expected) from None
    if not networks:
        raise _Invalid(expected)
    return networks


def parse_networks_or_none(text: str) -> tuple[Network, ...]:
    """Like parse_networks, and `none` for an empty list (empty means unset)."""
    if text.strip().lower() == "none":
        return ()
    return parse_networks(text)


def _is_host(text: str) -> bool:
    """A plausible domain name or IPv4 address (ASCII letters, digits, hyphens)."""
    labels = text.split(".")
    return len(text) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels)


def parse_hostname(text: str) -> str:
    """The name Willi greets with and sends in EHLO."""
    name = text.strip()
    if not _is_host(name):
        raise _Invalid("a domain name (ASCII letters, digits, hyphens and dots)")
    return name


def parse_file(text: str) -> str:
    """A path to a file that exists and that Willi can read."""
    path = text.strip()
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise _Invalid("a readable file")
    return path


def _text(text: str) -> str:
    """Any non-empty text, kept as it is (user names, passwords)."""
    return text


def parse_delimiter(text: str) -> str:
    """Recipient delimiter characters, each one a delimiter (as in Postfix)."""
    if any(char.isspace() or char in '@"<>' for char in text):
        raise _Invalid("delimiter characters such as + or -+ (no spaces, @, quotes, <>)")
    return text


def _query(text: str) -> str:
    """A SQL query taking the lookup key as its one %s parameter."""
    if text.count("%s") != 1:
        raise _Invalid("an SQL query with exactly one %s (the lookup key)")
    return text


# --- the table ----------------------------------------------------------------


class _Key(NamedTuple):
    name: str  # the WILLI_ key
    field: str  # the Config field; its dataclass default is the key's default
    parse: Callable[[str], object]


_DURATION_KEYS = (
    "TLS_HANDSHAKE_TIMEOUT", "CLIENT_TIMEOUT", "UPSTREAM_CONNECT_TIMEOUT",
    "UPSTREAM_COMMAND_TIMEOUT", "UPSTREAM_DATA_TIMEOUT", "UPSTREAM_RETRY_AFTER",
    "SHUTDOWN_TIMEOUT", "LOOKUP_TIMEOUT",
)  # fmt: skip

KEYS: tuple[_Key, ...] = (
    _Key("WILLI_LISTEN", "listen", parse_listen),
    _Key("WILLI_HOSTNAME", "hostname", parse_hostname),
    _Key("WILLI_TLS_CERT", "tls_cert", parse_file),
    _Key("WILLI_TLS_KEY", "tls_key", parse_file),
    _Key("WILLI_PROXY_PROTOCOL", "proxy_protocol", parse_bool),
    _Key("WILLI_PROXY_PROTOCOL_FROM", "proxy_protocol_from", parse_networks),
    _Key("WILLI_PROXY_PROTOCOL_TIMEOUT", "proxy_protocol_timeout", parse_duration),
    _Key("WILLI_MAX_MESSAGE_SIZE", "max_message_size", parse_size),
    _Key("WILLI_MAX_RECIPIENTS", "max_recipients", _whole(1)),
    _Key("WILLI_MAX_CONNECTIONS", "max_connections", _whole(1)),
    _Key("WILLI_MAX_CONNECTIONS_PER_IP", "max_connections_per_ip", _whole(1)),
    _Key("WILLI_MAX_CONNECTION_RATE_PER_IP", "max_connection_rate_per_ip", _whole(0)),
    _Key("WILLI_CONNECTION_RATE_EXCEPTIONS", "connection_rate_exceptions", parse_networks_or_none),
    _Key("WILLI_MAX_ERRORS", "max_errors", _whole(1)),
    _Key("WILLI_SPLIT_RECIPIENTS", "split_recipients", parse_bool),
    _Key("WILLI_BARE_LF", "bare_lf", _choice("reject", "pass")),
    _Key("WILLI_RECIPIENT_DELIMITER", "recipient_delimiter", parse_delimiter),
    *(_Key("WILLI_" + key, key.lower(), parse_duration) for key in _DURATION_KEYS),
    _Key("WILLI_UPSTREAM_POOL_IDLE", "upstream_pool_idle", parse_duration_or_off),
    _Key("WILLI_CLIENT_RECORD_DEADLINE", "client_record_deadline", parse_bool),
    _Key("WILLI_STRESS_CLIENT_TIMEOUT", "stress_client_timeout", parse_duration),
    _Key("WILLI_STRESS_THRESHOLD", "stress_threshold", _whole(1, 100)),
    _Key("WILLI_MIN_DATA_RATE", "min_data_rate", _whole(0)),
    _Key("WILLI_LOOKUP_THREADS", "lookup_threads", _whole(1, 64)),
    _Key("WILLI_LOOKUP_QUEUE", "lookup_queue", _whole(1)),
    _Key(
        "WILLI_UPSTREAM_STARTTLS",
        "upstream_starttls",
        _choice("if-client", "opportunistic", "required", "off"),
    ),
    _Key("WILLI_UPSTREAM_TLS_CA", "upstream_tls_ca", parse_file),
    _Key("WILLI_UPSTREAM_TLS_CERT", "upstream_tls_cert", parse_file),
    _Key("WILLI_UPSTREAM_TLS_KEY", "upstream_tls_key", parse_file),
    _Key("WILLI_UPSTREAM_TLS_RESUME", "upstream_tls_resume", parse_bool),
    _Key("WILLI_XCLIENT", "xclient", _choice("auto", "required", "off")),
    _Key("WILLI_UPSTREAM_PROXY_PROTOCOL", "upstream_proxy_protocol", _choice("off", "v1", "v2")),
    _Key("WILLI_UPSTREAM_AUTH", "upstream_auth", _choice("off", "plain", "external")),
    _Key("WILLI_UPSTREAM_AUTH_USER", "upstream_auth_user", _text),
    _Key("WILLI_UPSTREAM_AUTH_PASSWORD", "upstream_auth_password", _text),
    _Key("WILLI_WORKERS", "workers", _whole(1)),
    _Key("WILLI_LOG_FORMAT", "log_format", _choice("logfmt", "json")),
    _Key("WILLI_LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error")),
    _Key("WILLI_LOG_BUFFER", "log_buffer", _whole(1)),
    _Key("WILLI_METRICS_LISTEN", "metrics_listen", parse_address),
)

_MAPPING_RE = re.compile(
    r"WILLI_MAPPING_(\d+)(?:_(QUERY|CACHE_TTL|MISS_TTL|STALE_TTL|TLS_VERIFY))?"
)
# Which URI schemes each mapping suffix applies to; elsewhere it would do nothing.
_MAPPING_SUFFIXES: Mapping[str, tuple[str, str, Callable[[str], object]]] = MappingProxyType({
    "QUERY": ("mysql sqlite", "query", _query),
    "CACHE_TTL": ("mysql sqlite", "cache_ttl", parse_duration),
    "MISS_TTL": ("mysql sqlite", "miss_ttl", parse_duration),
    "STALE_TTL": ("mysql sqlite", "stale_ttl", parse_duration),
    "TLS_VERIFY": ("static", "tls_verify", parse_bool),
})
_SECRET_KEYS = frozenset({"WILLI_UPSTREAM_AUTH_PASSWORD"})
_KEY_NAMES = frozenset(key.name for key in KEYS)


# --- loading ------------------------------------------------------------------


Warn = Callable[[str, str | None], None]


def load_config(path: str | None, environ: Mapping[str, str], warn: Warn | None = None) -> Config:
    """Read the env file (`path`, else ./willi.env when present), let the WILLI_
    keys of `environ` override it, and validate everything.

    Raises ConfigError for the first bad, unknown or missing value. An unknown
    WILLI_ variable of `environ` is left out and reported as
    `warn(name, closest_known_name_or_None)`.
    """
    file_values = _read_file(path)
    for key in file_values:
        if not _known(key):
            raise _unknown_key(key)
    from_environ = {key: value for key, value in environ.items() if key.startswith("WILLI_")}
    for key in sorted(from_environ):
        if not _known(key):
            del from_environ[key]
            if warn is not None:
                warn(key, _closest(key))
    raw = _merge(file_values, from_environ)
    values = _parse_table(raw)
    values["mappings"] = _parse_mappings(raw)
    _check_pairs(values)
    _check_upstream(values)
    return Config(**values)


def _known(key: str) -> bool:
    return key in _KEY_NAMES or _MAPPING_RE.fullmatch(key) is not None


def _read_file(path: str | None) -> dict[str, str]:
    """The env file's values (`path`, else ./willi.env when present)."""
    if path is None:
        path = DEFAULT_ENV_FILE if os.path.isfile(DEFAULT_ENV_FILE) else None
    file_values: dict[str, str | None] = {}
    if path is not None:
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError("--config", path, "a readable env file")
        try:
            # No interpolation: a password containing ${...} must stay as written.
            file_values = dotenv.dotenv_values(path, interpolate=False)
        except (OSError, UnicodeDecodeError):
            raise ConfigError("--config", path, "a readable UTF-8 env file") from None
    return {key: value or "" for key, value in file_values.items()}


def _merge(file_values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """File values overridden by WILLI_ environment variables; empty means unset."""
    merged = {**file_values, **environ}
    # An empty value means "the default", so `WILLI_TLS_CERT=` in a file or an
    # environment variable set to "" can switch a setting back off.
    return {key: value for key, value in merged.items() if value.strip()}


def _parse_table(raw: Mapping[str, str]) -> dict[str, object]:
    """Every table key that is set, parsed; unset ones keep the Config default."""
    values: dict[str, object] = {}
    for key in KEYS:
        if key.name in raw:
            values[key.field] = _parse(key.name, raw[key.name], key.parse)
    if "hostname" not in values:
        system_name = socket.getfqdn()
        try:
            values["hostname"] = parse_hostname(system_name)
        except _Invalid:
            raise ConfigError(
                "WILLI_HOSTNAME", system_name, "a domain name: the system's is not, so set one"
            ) from None
    return values


def _parse(key: str, value: str, parse: Callable[[str], object]) -> object:
    """Run one parser, turning its complaint into a one-line ConfigError."""
    try:
        return parse(value)
    except _Invalid as error:
        raise ConfigError(key, mask(key, value), str(error)) from None


def mask(key: str, value: str) -> str:
    """The value as it may be shown: passwords replaced by ***."""
    if key in _SECRET_KEYS:
        return _MASK
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower().startswith("mysql") and "@" in rest:
        userinfo, _, after = rest.rpartition("@")
        # rpartition over-masks an '@' in the path or query: safe direction.
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + _MASK
        return f"{scheme}://{userinfo}@{after}"
    return value


def _closest(key: str) -> str | None:
    """The known key a typo most likely meant, if any is close."""
    known = sorted(_KEY_NAMES) + ["WILLI_MAPPING_1", "WILLI_MAPPING_1_QUERY"]
    close = difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def _unknown_key(key: str) -> ConfigError:
    """A typo'd key: name the closest known one. The value may be a secret."""
    close = _closest(key)
    hint = f" (did you mean {close}?)" if close else ""
    return ConfigError(key, _MASK, "no such key: a known WILLI_ key" + hint)


# --- mappings -----------------------------------------------------------------


def _parse_mappings(raw: Mapping[str, str]) -> tuple[MappingSpec, ...]:
    """WILLI_MAPPING_<N> and its suffix keys, in numeric order of N."""
    groups: dict[int, dict[str, tuple[str, str]]] = {}
    for key, value in raw.items():
        match = _MAPPING_RE.fullmatch(key)
        if not match:
            continue
        if match[1].startswith("0"):
            # WILLI_MAPPING_01 and _1 would silently compete for the same N.
            expected = "a key WILLI_MAPPING_<N>, N >= 1 without leading zeros"
            raise ConfigError(key, mask(key, value), expected)
        groups.setdefault(int(match[1]), {})[match[2] or ""] = (key, value)
    if not groups:
        expected = "at least one mapping (csv:, static:, sqlite: or mysql://)"
        raise ConfigError("WILLI_MAPPING_1", "", expected)
    return tuple(_mapping(index, groups[index]) for index in sorted(groups))


def _mapping(index: int, keys: Mapping[str, tuple[str, str]]) -> MappingSpec:
    """One MappingSpec from its base key and suffix keys."""
    if "" not in keys:
        key, value = next(iter(keys.values()))
        raise ConfigError(key, mask(key, value), f"WILLI_MAPPING_{index} to be set as well")
    base_key, uri = keys[""]
    uri = uri.strip()
    scheme = _parse(base_key, uri, _mapping_scheme)
    options: dict[str, object] = {}
    for suffix, (key, value) in keys.items():
        if not suffix:
            continue
        applies_to, field_name, parse = _MAPPING_SUFFIXES[suffix]
        if scheme not in applies_to.split():
            expected = f"no such key for a {scheme}: mapping ({applies_to.replace(' ', ' and ')} only)"
            raise ConfigError(key, mask(key, value), expected)
        options[field_name] = _parse(key, value, parse)
    return MappingSpec(index=index, uri=uri, **options)


def _mapping_scheme(uri: str) -> str:
    """Check a mapping URI and return its scheme: csv, static, sqlite or mysql."""
    expected = ("csv:PATH, static:SERVER, sqlite:PATH or mysql://USER:PASSWORD@HOST[:PORT]/DB"
                " (or @/DB?unix_socket=PATH)")
    scheme, _, rest = uri.partition(":")
    if scheme in ("csv", "static", "sqlite") and rest.strip() and not rest.startswith("//"):
        return scheme
    if scheme == "mysql":
        try:
            parts = urlsplit(uri)
            parts.port  # raises ValueError for a bad port
        except ValueError:
            raise _Invalid(expected) from None
        # A host, or none with ?unix_socket=PATH (routing/mysql.py checks the rest).
        if (parts.hostname or "unix_socket=" in parts.query) and parts.path.strip("/"):
            return scheme
    raise _Invalid(expected)


# --- combinations -------------------------------------------------------------


def _check_pairs(values: dict[str, object]) -> None:
    """Certificates and keys come in pairs; PROXY protocol needs its sources."""
    for cert, key in (("TLS_CERT", "TLS_KEY"), ("UPSTREAM_TLS_CERT", "UPSTREAM_TLS_KEY")):
        has_cert = values.get(cert.lower()) is not None
        has_key = values.get(key.lower()) is not None
        if has_cert != has_key:
            missing, present = (key, cert) if has_cert else (cert, key)
            expected = f"a readable file, since WILLI_{present} is set"
            raise ConfigError(f"WILLI_{missing}", "", expected)
    if values.get("proxy_protocol") and not values.get("proxy_protocol_from"):
        expected = "the load balancers' addresses when WILLI_PROXY_PROTOCOL=on"
        raise ConfigError("WILLI_PROXY_PROTOCOL_FROM", "", expected)


def _check_upstream(values: dict[str, object]) -> None:
    """XCLIENT versus PROXY protocol, and what each AUTH mode needs."""
    if values.get("upstream_proxy_protocol", "off") != "off":
        if values.get("xclient") == "required":
            expected = "off or auto: WILLI_UPSTREAM_PROXY_PROTOCOL is set (they are alternatives)"
            raise ConfigError("WILLI_XCLIENT", "required", expected)
        values["xclient"] = "off"  # the PROXY header already carries the client
    auth = values.get("upstream_auth", "off")
    if auth == "plain":
        for key in ("WILLI_UPSTREAM_AUTH_USER", "WILLI_UPSTREAM_AUTH_PASSWORD"):
            if values.get(key[6:].lower()) is None:
                raise ConfigError(key, "", "a value when WILLI_UPSTREAM_AUTH=plain")
    if auth == "external" and values.get("upstream_tls_cert") is None:
        raise ConfigError(
            "WILLI_UPSTREAM_TLS_CERT", "", "a client certificate when WILLI_UPSTREAM_AUTH=external"
        )


def defaults() -> dict[str, object]:
    """Each table key's default value (for docs and tests), hostname excluded."""
    by_field = {f.name: f.default for f in fields(Config)}
    return {key.name: by_field[key.field] for key in KEYS if key.field != "hostname"}

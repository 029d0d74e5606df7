"""Upstream targets: the `server` string a route carries (SPEC §4).

A route names one or more targets, separated by commas and tried in order.
Each target is a host with an optional port, or a URL-like form that also
picks the protocol (SMTP, SMTP with implicit TLS, LMTP over TCP or a Unix
socket). Postfix's transport forms (`smtp:[host]:port`, `lmtp:unix:/path`,
...) are accepted too, so a line copied from a transport map works. Parsing is pure, and the same few strings come back for every
session, so results are cached by string. A bad string raises ValueError with
a message that names the target and what is wrong, for --check and the logs.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465, "lmtp": 24}
# Host names as DNS knows them (IDN in its punycode form); "_" appears in the wild.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
# Postfix transport(5): transport:nexthop. `smtp:2525` stays host "smtp", port
# 2525 (a nexthop of digits only would be no host at all).
_POSTFIX = re.compile(r"(smtp|relay|lmtp):(?!//)(?![0-9]+$)(.*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream: scheme, host and port, or the path of a Unix socket."""

    scheme: str  # smtp | smtps | lmtp | lmtp+unix
    host: str  # "" for lmtp+unix; IPv6 without brackets
    port: int  # 0 for lmtp+unix
    path: str = ""  # lmtp+unix only

    @property
    def is_lmtp(self) -> bool:
        return self.scheme in ("lmtp", "lmtp+unix")

    @property
    def implicit_tls(self) -> bool:
        return self.scheme == "smtps"

    def __str__(self) -> str:
        if self.scheme == "lmtp+unix":
            return f"lmtp+unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@functools.lru_cache(maxsize=1024)
def parse_targets(server: str) -> tuple[Target, ...]:
    """Parse a comma-separated target list; ValueError on anything bad."""
    parts = [part.strip() for part in server.split(",")]
    if not any(parts):
        raise ValueError(f"empty server {server!r}")
    targets = []
    for part in parts:
        try:
            targets.append(_parse_one(part))
        except ValueError as exc:
            raise ValueError(f"bad target {part!r} in {server!r}: {exc}") from None
    return tuple(targets)


def _parse_one(text: str) -> Target:
    if not text:
        raise ValueError("empty target")
    if text.lower().startswith("lmtp+unix:"):
        return _parse_unix(text[len("lmtp+unix:") :])
    postfix = _POSTFIX.fullmatch(text)
    if postfix:
        return _parse_postfix(postfix[1].lower(), postfix[2])
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "smtp", text
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unknown scheme {scheme!r} (expected smtp, smtps, lmtp or lmtp+unix)")
    host, port = _split_host_port(rest, _DEFAULT_PORTS[scheme])
    return Target(scheme, host, port)


def _parse_postfix(transport: str, nexthop: str) -> Target:
    """Postfix's nexthop: `[host]:port`, `host:port`, `[ipv6:addr]:port`, and
    for LMTP also `unix:/path` and `inet:host:port` (transport(5), lmtp(8)).
    Willi never looks up MX records, so `host` and `[host]` mean the same."""
    scheme = "lmtp" if transport == "lmtp" else "smtp"  # relay is Postfix's smtp client
    if scheme == "lmtp" and nexthop.lower().startswith("unix:"):
        return _parse_unix(nexthop[len("unix:") :])
    if scheme == "lmtp" and nexthop.lower().startswith("inet:"):
        nexthop = nexthop[len("inet:") :]
    if nexthop[:6].lower() == "[ipv6:":
        nexthop = "[" + nexthop[6:]
    host, port = _split_host_port(nexthop, _DEFAULT_PORTS[scheme])
    return Target(scheme, host, port)


def _parse_unix(path: str) -> Target:
    if path.startswith("//"):
        path = path[2:]  # lmtp+unix:///run/x.sock, the URL spelling
    if not path.startswith("/"):
        raise ValueError("the socket path must be absolute (lmtp+unix:/path)")
    if any(ch.isspace() for ch in path):
        raise ValueError("white space in socket path")
    return Target("lmtp+unix", "", 0, path)


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` → (host, port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, after = _bracketed_host(text[1:end]), text[end + 1 :]
        if not after:
            return host, default_port
        if not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after ']'")
        return host, _port(after[1:])
    if text.count(":") > 1:
        # 2001:db8::25 could be a host and a port or an address: never guess.
        raise ValueError("an IPv6 address needs brackets: [2001:db8::1]:25")
    host, sep, port = text.partition(":")
    return _plain_host(host), _port(port) if sep else default_port


def _bracketed_host(inner: str) -> str:
    # Brackets also accepted around a name or IPv4, as in Postfix's [host]:port.
    try:
        return ipaddress.IPv6Address(inner).compressed
    except ValueError:
        return _plain_host(inner)


def _plain_host(host: str) -> str:
    if not host:
        raise ValueError("empty host")
    if not _HOSTNAME.fullmatch(host) or ".." in host:
        raise ValueError(f"bad host name {host!r}")
    return host.lower()


def _port(text: str) -> int:
    # str.isdigit() would accept "²" and other Unicode digits; ports are ASCII.
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port {text!r} (expected 1-65535)")
    return int(text)

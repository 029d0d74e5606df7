"""Blocking name resolution, run only in worker threads (never on the reactor).

`reverse_name` gives what XCLIENT's NAME carries, as Postfix does: the
forward-confirmed reverse name, `[UNAVAILABLE]` when there is none, and
`[TEMPUNAVAIL]` when the lookup failed temporarily. `resolve` turns a target
host into socket addresses.
"""

from __future__ import annotations

import socket

UNAVAILABLE = "[UNAVAILABLE]"
TEMPUNAVAIL = "[TEMPUNAVAIL]"

_TEMPORARY = {getattr(socket, "EAI_AGAIN", -3), getattr(socket, "EAI_SYSTEM", -11)}


def reverse_name(ip: str) -> str:
    try:
        name = socket.gethostbyaddr(ip)[0]
    except socket.herror:
        return UNAVAILABLE
    except socket.gaierror as exc:
        return TEMPUNAVAIL if exc.errno in _TEMPORARY else UNAVAILABLE
    except OSError:
        return TEMPUNAVAIL
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        return TEMPUNAVAIL if exc.errno in _TEMPORARY else UNAVAILABLE
    if any(info[4][0] == ip for info in infos):
        return name
    return UNAVAILABLE


def resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    """(family, sockaddr) pairs for a TCP connection to host:port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

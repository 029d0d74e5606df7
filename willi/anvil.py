"""Per-IP connection rate, as Postfix's anvil counts it (SPEC §5, issue 9).

`smtpd_client_connection_rate_limit` in Postfix: how many connections one
client address may open per `anvil_rate_time_unit` (60 s). The concurrency
limit (`WILLI_MAX_CONNECTIONS_PER_IP`) cannot stop a client that connects,
says nothing useful and reconnects at once, hundreds of times a second; this
does. Like anvil, every attempt counts, the refused ones too, so a client
that keeps hammering stays refused until it slows down; and a window is a
fixed interval that starts at the client's first connection in it.

IPv6 clients are counted per /84, as Postfix 3.8 does
(`smtpd_client_ipv6_prefix_length = 84`): one host commonly holds a /64 and
can pick a new address for every connection.

Pure: the clock is passed in, nothing here reads the time, and memory is
bounded. Windows are kept in the order they started, so the expired ones are
always at the front and are dropped as new ones come in; past `max_clients`
addresses the oldest window is forgotten (that client starts afresh) rather
than memory growing with the number of addresses an attacker can use.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

DEFAULT_MAX_CLIENTS = 100_000
IPV6_PREFIX_LENGTH = 84


def client_key(ip: str, ipv6_prefix: int = IPV6_PREFIX_LENGTH) -> str:
    """What one client is: its IPv4 address, or its IPv6 network of `ipv6_prefix`."""
    if ":" not in ip:
        return ip  # IPv4 (or not an address): no parse for the common case
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 4:
        return ip
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


class ConnectionRate:
    """Counts connections per address per window of `time_unit` seconds."""

    def __init__(self, limit: int, time_unit: float = 60.0, max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        if limit < 0 or time_unit <= 0 or max_clients < 1:
            raise ValueError("limit >= 0, time_unit > 0, max_clients >= 1")
        self.limit = limit  # 0: no limit
        self.time_unit = time_unit
        self.max_clients = max_clients
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [start, count]

    def __len__(self) -> int:
        return len(self._windows)

    def connect(self, ip: str, now: float) -> bool:
        """Count one connection from `ip` at `now`; False when it is over the limit."""
        if self.limit == 0:
            return True
        ip = client_key(ip)
        self._expire(now)
        window = self._windows.get(ip)
        if window is None:
            if len(self._windows) >= self.max_clients:
                self._windows.popitem(last=False)
            window = self._windows[ip] = [now, 0]
        window[1] += 1
        return window[1] <= self.limit

    def count(self, ip: str, now: float) -> int:
        """Connections from `ip` in its current window (0 when none is open)."""
        window = self._windows.get(client_key(ip))
        return int(window[1]) if window is not None and now - window[0] < self.time_unit else 0

    def _expire(self, now: float) -> None:
        while self._windows:
            ip, window = next(iter(self._windows.items()))
            if now - window[0] < self.time_unit:
                return
            del self._windows[ip]

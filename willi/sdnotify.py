"""sd_notify(3) with the standard library: tell systemd how the service is doing.

Under `Type=notify` systemd waits for `READY=1` before it calls the start
done (so `After=willi.service` units and `systemctl start` wait until Willi
listens), expects `RELOADING=1` ... `READY=1` around a reload and `STOPPING=1`
when the drain begins. The protocol is one datagram of `KEY=value` lines to the
AF_UNIX socket named by `$NOTIFY_SOCKET`; a leading `@` means the abstract
namespace (a NUL byte in the address). Without the variable every call does
nothing. A notification that cannot be sent is never an error: Willi serves
mail whether or not anybody listens (the caller may log the False).
"""

from __future__ import annotations

import socket
import time
from typing import Mapping


class Notifier:
    """Sends state changes to systemd's notification socket, if there is one."""

    __slots__ = ("_address",)

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one datagram; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match this
        # RELOADING=1 to the reload it asked for.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))


def _status(text: str | None) -> tuple[str, ...]:
    """A STATUS= line (shown by `systemctl status`), kept to one line."""
    return () if not text else ("STATUS=" + " ".join(text.split()),)

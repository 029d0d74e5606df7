"""Two TLS engines driven against each other with no sockets: the ciphertext
shuttle and the bounded handshake pump that the engine tests share."""

from __future__ import annotations

from willi.tls import TLSEngine


def shuttle(a: TLSEngine, b: TLSEngine) -> int:
    """Move pending ciphertext both ways; return how many bytes moved."""
    moved = 0
    for src, dst in ((a, b), (b, a)):
        data = src.take_output()
        if data:
            dst.feed(data)
            moved += len(data)
    return moved


def handshake(client: TLSEngine, server: TLSEngine) -> None:
    """Pump until both sides are established; every wait has a bound."""
    for _ in range(20):
        done = client.handshake() & server.handshake()
        if not shuttle(client, server) and done:
            return
    raise AssertionError("handshake did not finish in 20 rounds")

"""Helpers for tests of Willi behind a load balancer (the PROXY protocol):
a client from a chosen loopback source, and a Willi that expects a header.

Every 127.x address is this machine, so a test plays "the balancer" from
127.0.0.1 and "a client outside WILLI_PROXY_PROTOCOL_FROM" from 127.0.0.2.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.net import SmtpRawClient
from tests.support.willi_process import WilliProcess, routed_env


def connect_source(host: str, port: int, source: str, timeout: float = 10.0) -> SmtpRawClient:
    """A raw client connected to host:port from `source`, its greeting not read yet."""
    # SmtpRawClient always connects itself; this one needs its source address.
    client = SmtpRawClient.__new__(SmtpRawClient)
    client.host, client.port, client.timeout = host, port, timeout
    client._buffer, client._eof = bytearray(), False
    client.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
    return client


def connect_from(willi: WilliProcess, source: str, timeout: float = 10.0) -> SmtpRawClient:
    """A raw client connected to Willi from `source`."""
    return connect_source(willi.host, willi.port, source, timeout)


def proxy_willi_env(tmp: Path, upstream_port: int, trusted: str = "127.0.0.1/32", **keys: str) -> dict[str, str]:
    """A Willi routing a.test to `upstream_port`, taking PROXY headers from `trusted`."""
    return routed_env(tmp, upstream_port, WILLI_PROXY_PROTOCOL="on", WILLI_PROXY_PROTOCOL_FROM=trusted, **keys)


def start_proxy_willi(env: dict[str, str], tmp: Path, timeout: float = 10.0) -> WilliProcess:
    """Started without the usual readiness probe (that probe sends no header):
    ready once it logs `listening`."""
    willi = WilliProcess(env, tmp, wait_ready=False).start()
    try:
        willi.wait_for_log(lambda r: r.get("event") == "listening", timeout)
    except BaseException:
        willi.stop()
        raise
    return willi


@contextmanager
def proxy_willi(env: dict[str, str], tmp: Path, timeout: float = 10.0) -> Iterator[WilliProcess]:
    """`start_proxy_willi`, stopped when the block ends."""
    willi = start_proxy_willi(env, tmp, timeout)
    try:
        yield willi
    finally:
        willi.stop()

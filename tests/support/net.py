"""Loopback networking helpers for Willi's tests.

Every wait here has a deadline and waits on a condition: `wait_until` polls a
predicate, `SmtpRawClient` reads replies against a per-call deadline. The raw
client talks SMTP over a plain socket so that tests can send exactly the bytes
they mean (pipelined commands, bare LFs, half lines) and see exactly the bytes
the server answered, which smtplib hides.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Callable, NamedTuple, TypeVar

T = TypeVar("T")

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _below_ephemeral() -> range:
    """Ports the kernel never picks by itself: below its ephemeral range,
    which every connect() and bind(("", 0)) draws its port from."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), low) if low > 4000 else range(0)


_PICKS = random.Random()
_HANDED_OUT: set[int] = set()  # within this test process, a port is handed out once


def free_port(host: str = LOOPBACK_V4) -> int:
    """A TCP port free on `host` now, and likely to stay so until the test
    binds it: one below the kernel's ephemeral range, so no outgoing
    connection (Willi's to an upstream, say) takes it meanwhile as its source
    port; bind to port 0 if none is found."""
    candidates = _below_ephemeral()
    for _ in range(50 if candidates else 0):
        port = _PICKS.choice(candidates)
        if port in _HANDED_OUT:
            continue
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll `predicate` until it returns a truthy value, which is returned.

    Raises AssertionError naming `message` when `timeout` seconds pass first
    (a callable message is built then, from the state at the timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def greets(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an SMTP server on host:port answers a connection with 220 now
    (a listening socket alone says nothing of the process behind it); says
    QUIT politely. False if not (yet)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            if not data.startswith(b"220"):
                return False
            sock.sendall(b"QUIT\r\n")
            try:
                sock.recv(4096)
            except OSError:
                pass
            return True
    except OSError:
        return False


def port_refuses(host: str, port: int) -> bool:
    """True when a connection attempt to host:port is actively refused."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    wait_until(
        lambda: port_accepts(host, port),
        timeout=timeout,
        interval=0.02,
        message=f"{host}:{port} to accept connections",
    )


class Reply(NamedTuple):
    """One SMTP reply: `code, lines, raw = client.read_reply()`.

    `lines` holds the text of each line without code, separator and CRLF.
    """

    code: int
    lines: list[bytes]
    raw: bytes

    @property
    def text(self) -> bytes:
        return b"\n".join(self.lines)


class SmtpRawClient:
    """A raw-socket SMTP client; every read is bounded by a deadline."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = bytearray()
        self._eof = False

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None  # type: ignore[assignment]

    def __enter__(self) -> "SmtpRawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes | str, timeout: float | None = None) -> Reply:
        """Send one command line (CRLF appended) and read its reply."""
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.read_reply(timeout)

    # -- reading ---------------------------------------------------------
    def _fill(self, deadline: float) -> None:
        """Receive more bytes into the buffer before `deadline`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"timed out reading from {self.host}:{self.port}; "
                f"buffered {bytes(self._buffer)!r}"
            )
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(
                f"timed out reading from {self.host}:{self.port}; "
                f"buffered {bytes(self._buffer)!r}"
            ) from None
        if not chunk:
            self._eof = True
            raise AssertionError(
                f"connection closed by {self.host}:{self.port}; "
                f"buffered {bytes(self._buffer)!r}"
            )
        self._buffer += chunk

    def read_line(self, timeout: float | None = None) -> bytes:
        """One line including its line ending (LF or CRLF)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            self._fill(deadline)

    def read_reply(self, timeout: float | None = None) -> Reply:
        """Read one (possibly multi-line) reply; AssertionError on garbage."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        raw = b""
        lines: list[bytes] = []
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.0))
            raw += line
            body = line.rstrip(b"\r\n")
            if len(body) < 3 or not body[:3].isdigit():
                raise AssertionError(f"not an SMTP reply line: {line!r}")
            if len(body) > 3 and body[3:4] not in (b" ", b"-"):
                raise AssertionError(f"bad separator in reply line: {line!r}")
            lines.append(body[4:])
            if body[3:4] != b"-":
                return Reply(int(body[:3]), lines, raw)

    def read_replies(self, n: int, timeout: float | None = None) -> list[Reply]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return [
            self.read_reply(max(deadline - time.monotonic(), 0.0)) for _ in range(n)
        ]

    @property
    def pending(self) -> bytes:
        """Bytes received but not consumed by a read yet."""
        return bytes(self._buffer)

    def expect_closed(self, timeout: float | None = None) -> bytes:
        """Assert the server closes the connection within `timeout`.

        Returns whatever the server sent before closing (unread replies
        included); a connection reset counts as closed.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._eof:
            try:
                self._fill(deadline)
            except ConnectionError:
                break
            except AssertionError:
                if self._eof:
                    break
                raise AssertionError(
                    f"{self.host}:{self.port} did not close the connection; "
                    f"received {bytes(self._buffer)!r}"
                ) from None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class LoopbackServer:
    """What every test server shares: `with` starts and stops it, and
    `address` is its `host:port` written as a Willi route."""

    host: str
    port: int

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """`host:port` as a Willi route (`[::1]:port` for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

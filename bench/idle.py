"""W4's client: N SMTP sessions that greet, say EHLO, then sit idle.

    python bench/idle.py HOST PORT N [--window 200] [--deadline 120] [--hold 120]

Connections are opened non-blocking, at most `--window` of them between
connect and the end of their EHLO reply at any time, so the proxy's accept
queue is not flooded. Once all N are idle (or the deadline passed) the client
prints one line, `READY ok=.. failed=.. seconds=..`, and holds the sessions
until its standard input closes (or `--hold` seconds), watching for sessions
the server drops. Then it prints `DONE dropped=..` and closes everything.
Every wait has a deadline; nothing here retries.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import time

CONNECTING, GREETING, EHLO, IDLE = range(4)


class Session:
    __slots__ = ("sock", "state", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.buf = b""


def final_reply(buf: bytes) -> bytes | None:
    """The code of the complete (last line `NNN `) reply in buf, or None."""
    for line in buf.split(b"\r\n")[:-1]:
        if len(line) >= 4 and line[3:4] == b" ":
            return line[:3]
        if len(line) == 3:
            return line
    return None


class Client:
    def __init__(self, host: str, port: int, total: int, window: int, name: str) -> None:
        self.addr = (host, port)
        self.total, self.window, self.name = total, window, name
        self.sel = selectors.DefaultSelector()
        self.started = self.ok = self.failed = 0
        self.busy: set[Session] = set()
        self.idle: list[Session] = []

    def open_more(self) -> None:
        while self.started < self.total and len(self.busy) < self.window:
            sock = socket.socket()
            sock.setblocking(False)
            self.started += 1
            try:
                sock.connect(self.addr)
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                self.failed += 1
                continue
            session = Session(sock)
            self.busy.add(session)
            self.sel.register(sock, selectors.EVENT_WRITE, session)

    def fail(self, session: Session) -> None:
        self.sel.unregister(session.sock)
        session.sock.close()
        self.busy.discard(session)
        self.failed += 1

    def step(self, session: Session) -> None:
        if session.state == CONNECTING:
            if session.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return self.fail(session)
            session.state = GREETING
            self.sel.modify(session.sock, selectors.EVENT_READ, session)
            return None
        try:
            data = session.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            return self.fail(session)
        session.buf += data
        code = final_reply(session.buf)
        if code is None:
            return None
        session.buf = b""
        if session.state == GREETING and code == b"220":
            session.state = EHLO
            session.sock.send(b"EHLO " + self.name.encode() + b"\r\n")
        elif session.state == EHLO and code == b"250":
            session.state = IDLE
            self.busy.discard(session)
            self.idle.append(session)
            self.ok += 1
        else:
            self.fail(session)
        return None

    def establish(self, deadline: float) -> None:
        self.open_more()
        while (self.busy or self.started < self.total) and time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                self.step(key.data)
            self.open_more()
        for session in list(self.busy):
            self.fail(session)

    def hold(self, seconds: float) -> int:
        """Sit idle until stdin closes or time is up; count dropped sessions."""
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        deadline, dropped = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=max(0.0, deadline - time.monotonic())):
                if key.data is None:
                    if not os.read(sys.stdin.fileno(), 4096):
                        return dropped
                    continue
                self.sel.unregister(key.fileobj)
                dropped += 1  # the server said something (421) or closed
        return dropped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--hold", type=float, default=120.0)
    parser.add_argument("--name", default="idle.bench.test")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    client = Client(args.host, args.port, args.n, args.window, args.name)
    begin = time.monotonic()
    client.establish(begin + args.deadline)
    print(f"READY ok={client.ok} failed={client.failed} seconds={time.monotonic() - begin:.2f}",
          flush=True)
    dropped = client.hold(args.hold)
    print(f"DONE dropped={dropped}", flush=True)
    for session in client.idle:
        session.sock.close()
    return 0 if client.failed == 0 and dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Debian's HAProxy in front of Willi: a real TCP load balancer for tests.

Each `HAProxy` writes its own configuration file in the test's tmp
directory (one `frontend` on a loopback port, one `backend` with the given
servers, SMTP health checks every 100 ms so a stopped Willi is noticed at
once), runs `haproxy -f FILE -db` in the foreground and is stopped by PID.
Its admin socket answers `show servers state`, which `wait_for_state` polls
so a test knows when HAProxy sees a server UP or DOWN instead of sleeping.
`send_proxy` is "", "send-proxy" (v1) or "send-proxy-v2"; `retries 3` with
`option redispatch` lets a connection refused by one server go to another,
as an operator configures it for SMTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Sequence

from .net import LOOPBACK_V4, LoopbackServer, free_port, port_accepts, wait_until

HAPROXY_PATHS = ("/usr/sbin/haproxy",)
SERVER_UP = "2"  # srv_op_state in `show servers state`


def find_haproxy() -> str | None:
    for path in (shutil.which("haproxy"), *HAPROXY_PATHS):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HAProxy(LoopbackServer):
    """`haproxy -f DIR/haproxy.cfg -db`, frontend on 127.0.0.1:port."""

    def __init__(self, tmp_path: Path | str, servers: Sequence[tuple[str, int]], *,
                 send_proxy: str = "send-proxy-v2", host: str = LOOPBACK_V4, port: int | None = None,
                 check: bool = True, start_timeout: float = 10.0) -> None:
        binary = find_haproxy()
        if binary is None:
            raise FileNotFoundError("haproxy not found (make system-test-deps installs it)")
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.servers = list(servers)
        self.send_proxy = send_proxy
        self.check = check
        self.start_timeout = start_timeout
        self.directory = Path(tmp_path) / f"haproxy-{self.port}"
        self.config_path = self.directory / "haproxy.cfg"
        self.admin_path = self.directory / "admin.sock"
        self.output_path = self.directory / "haproxy.out"
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        check = " check inter 100ms fall 1 rise 1" if self.check else ""
        servers = "".join(f"    server w{i} {_hostport(host, port)} {self.send_proxy}{check}\n"
                          for i, (host, port) in enumerate(self.servers, 1))
        return (
            "global\n"
            f"    stats socket {self.admin_path} mode 600 level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "    retries 3\n"
            "    option redispatch\n"
            "frontend smtp\n"
            f"    bind {_hostport(self.host, self.port)}\n"
            "    default_backend willis\n"
            "backend willis\n"
            "    balance roundrobin\n"
            + ("    option smtpchk EHLO haproxy.check\n" if self.check else "")
            + servers
        )

    def start(self) -> "HAProxy":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen([self.binary, "-f", str(self.config_path), "-db"],
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            # The admin socket too: the frontend can listen before it does (a
            # fresh-clone run was refused by it right after the port accepted).
            wait_until(lambda: self._alive() and port_accepts(self.host, self.port) and self._admin_accepts(),
                       self.start_timeout, 0.02, f"haproxy to listen on {self.port} and {self.admin_path}")
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.output()}")
        return True

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self.process = None

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- the admin socket ----------------------------------------------------
    def admin(self, command: str, timeout: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.admin_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _admin_accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.admin_path))
            except (FileNotFoundError, ConnectionRefusedError):
                return False
        return True

    def server_states(self) -> dict[str, bool]:
        """Server name -> UP, from `show servers state willis`."""
        states: dict[str, bool] = {}
        for line in self.admin("show servers state willis").splitlines():
            fields = line.split()
            if len(fields) > 5 and not line.startswith("#") and fields[1] == "willis":
                states[fields[3]] = fields[5] == SERVER_UP
        return states

    def wait_for_state(self, up: dict[str, bool], timeout: float = 10.0) -> None:
        """Until HAProxy's health checks see each named server as up/down."""
        wait_until(lambda: all(self.server_states().get(name) == want for name, want in up.items()),
                   timeout, 0.05, lambda: f"haproxy to see {up}; states {self.server_states()}\n{self.output()}")

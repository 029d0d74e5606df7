"""sd_notify: Willi tells systemd READY once it listens, RELOADING/READY around
a SIGHUP and STOPPING when it drains (issue 13 item 3).

The test plays systemd: it binds an AF_UNIX datagram socket of its own, hands
its name to a live Willi in NOTIFY_SOCKET and reads what arrives.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import LOOPBACK_V4, free_port
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WilliProcess, greets
from willi.sdnotify import Notifier


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET; `address` is what goes in it."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"willi-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="sdn", dir="/tmp")  # AF_UNIX paths are short
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)

    def receive(self, timeout: float = 10.0) -> dict[str, str]:
        """The next datagram as KEY=value fields; fails after `timeout`."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    try:
        yield fake
    finally:
        fake.close()


# --- the notifier alone ------------------------------------------------------------


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not Notifier.from_environ({}).enabled
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}).ready() is False


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reaches_a_path_or_an_abstract_socket(abstract: bool) -> None:
    fake = FakeSystemd(abstract)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": fake.address})
        assert notifier.ready("listening on  127.0.0.1:25\n") is True
        assert fake.receive(5.0) == {"READY": "1", "STATUS": "listening on 127.0.0.1:25"}
    finally:
        fake.close()


def test_reloading_carries_the_monotonic_clock(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier(systemd.address).reloading()
    fields = systemd.receive(5.0)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_a_socket_nobody_listens_on_is_not_an_error(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone")).stopping() is False


# --- a live Willi --------------------------------------------------------------------


def test_a_live_willi_says_ready_reloading_ready_and_stopping(
    systemd: FakeSystemd, tmp_path: Path
) -> None:
    port = free_port()
    env = {"WILLI_LISTEN": f"{LOOPBACK_V4}:{port}", "WILLI_HOSTNAME": "willi.test",
           "WILLI_SHUTDOWN_TIMEOUT": "2s"}
    with ScriptableUpstream() as upstream:
        env["WILLI_MAPPING_1"] = f"static:{upstream.address}"
        willi = WilliProcess(env, tmp_path, environ={"NOTIFY_SOCKET": systemd.address},
                             wait_ready=False)
        with willi:
            ready = systemd.receive()
            # READY=1 comes once the port is open: it greets at once
            assert ready == {"READY": "1", "STATUS": f"listening on {LOOPBACK_V4}:{port}"}
            assert greets(LOOPBACK_V4, port)

            willi.signal(signal.SIGHUP)
            reloading = systemd.receive()
            assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
            assert systemd.receive() == {"READY": "1"}
            willi.wait_for_log(lambda r: r.get("event") == "reloaded", 5.0)

            willi.signal(signal.SIGTERM)
            stopping = systemd.receive()
            assert stopping["STOPPING"] == "1"
            assert willi.wait(10.0) == 0, willi.output()

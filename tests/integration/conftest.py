"""Fixtures for integration tests: real Willi processes and real upstreams.

`launch` (one test) and `module_launch` (one test module) hand out a
`Launcher` that starts Willi and upstreams and stops every one of them, in
reverse order, when its scope ends. Willi gets a free loopback port, a fixed
host name and short timeouts, so a test that waits on a timeout stays fast;
a test passes its own WILLI_ keys on top.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

from tests.support.net import free_port
from tests.support.recorder import RecordingUpstream
from tests.support.sink import SmtpSink
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WilliProcess

WILLI_HOSTNAME = "willi.test"

QUICK_ENV: Mapping[str, str] = {
    "WILLI_HOSTNAME": WILLI_HOSTNAME,
    "WILLI_CLIENT_TIMEOUT": "10s",
    "WILLI_UPSTREAM_CONNECT_TIMEOUT": "2s",
    "WILLI_UPSTREAM_COMMAND_TIMEOUT": "5s",
    "WILLI_UPSTREAM_DATA_TIMEOUT": "10s",
    "WILLI_SHUTDOWN_TIMEOUT": "2s",
}


class Launcher:
    """Starts processes and servers; `close()` stops them all, newest first."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._stack = ExitStack()

    def willi(self, env: Mapping[str, str], **kwargs: Any) -> WilliProcess:
        """A started Willi on 127.0.0.1:<free port>; `env` overrides QUICK_ENV."""
        full = {"WILLI_LISTEN": f"127.0.0.1:{free_port()}", **QUICK_ENV, **env}
        return self._stack.enter_context(WilliProcess(full, self.tmp_path, **kwargs))

    def upstream(self, **kwargs: Any) -> ScriptableUpstream:
        return self._stack.enter_context(ScriptableUpstream(**kwargs))

    def recorder(self, **kwargs: Any) -> RecordingUpstream:
        return self._stack.enter_context(RecordingUpstream(**kwargs))

    def sink(self, **kwargs: Any) -> SmtpSink:
        return self._stack.enter_context(SmtpSink(self.tmp_path, **kwargs))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def module_launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("integration"))
    try:
        yield launcher
    finally:
        launcher.close()

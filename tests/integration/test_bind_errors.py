"""Starting on a port Willi cannot have (issue 13 items 6 and 7): a second
Willi on a port in use fails at start with one line, whatever WILLI_WORKERS
says (no SO_REUSEPORT to join the first silently); the line names the
address, who holds the port when /proc tells, and the fix; a port below 1024
without CAP_NET_BIND_SERVICE says so; `:port` says it means all interfaces."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port, wait_until
from tests.support.willi_process import (REPO_ROOT, WILLI_SCRIPT, WilliProcess, child_environ, greets,
                                         parse_log_line, routed_env, write_env_file)
from willi.listener import explain_bind_error, interfaces, show_address


def env(tmp: Path, listen: str, **keys: str) -> dict[str, str]:
    return routed_env(tmp, WILLI_LISTEN=listen, **keys)


def start_fails(tmp: Path, keys: dict[str, str], prefix: tuple[str, ...] = ()) -> str:
    """Run a Willi that must not start: its one stderr line."""
    env_file = write_env_file(tmp / f"second-{len(list(tmp.iterdir()))}.env", keys)
    result = subprocess.run([*prefix, sys.executable, str(WILLI_SCRIPT), "--config", str(env_file)],
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=30, env=child_environ())
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("first_workers, second_workers", [("1", "1"), ("2", "2"), ("1", "3")])
def test_a_second_willi_on_a_port_in_use_stops_at_start_naming_the_first(
        tmp_path: Path, first_workers: str, second_workers: str) -> None:
    port = free_port()
    keys = env(tmp_path, f"127.0.0.1:{port}")
    with WilliProcess({**keys, "WILLI_WORKERS": first_workers}, tmp_path) as first:
        line = start_fails(tmp_path, {**keys, "WILLI_WORKERS": second_workers})
        assert line.startswith(f"willi: cannot start: cannot listen on 127.0.0.1:{port}: the port is already in use")
        assert f"pid {first.pid} (" in line and "willi.py" in line
        assert "WILLI_LISTEN" in line
        assert greets("127.0.0.1", port)  # the first one still serves, alone
        assert first.process is not None and first.process.poll() is None


def test_a_port_held_by_another_program_names_that_program(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = start_fails(tmp_path, env(tmp_path, f"127.0.0.1:{port}"))
    assert f"pid {os.getpid()} (" in line


def test_all_listen_addresses_or_none(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        free, taken = free_port(), holder.getsockname()[1]
        line = start_fails(tmp_path, env(tmp_path, f"127.0.0.1:{free},127.0.0.1:{taken}"))
    assert f"127.0.0.1:{taken}" in line
    with socket.socket() as probe:  # the first one was released, not left half-open
        probe.bind(("127.0.0.1", free))


def _unprivileged_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())


@pytest.mark.skipif(_unprivileged_start() <= 1, reason="every port is unprivileged on this machine")
def test_a_low_port_without_cap_net_bind_service_says_what_is_missing(tmp_path: Path) -> None:
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root has the capability: run Willi without it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE as root")
        prefix = (setpriv, "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service")
    line = start_fails(tmp_path, env(tmp_path, "127.0.0.1:1"), prefix)
    assert "cannot listen on 127.0.0.1:1: permission denied" in line
    assert f"ports below {_unprivileged_start()} need root or CAP_NET_BIND_SERVICE" in line
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in line


def test_an_address_of_no_interface_says_so(tmp_path: Path) -> None:
    line = start_fails(tmp_path, env(tmp_path, "192.0.2.1:2525"))  # TEST-NET-1: on no machine
    assert "cannot listen on 192.0.2.1:2525: no interface of this machine has the address 192.0.2.1" in line


def test_the_explanations_without_a_process() -> None:
    assert explain_bind_error("::1", 25, OSError(errno.EADDRINUSE, "x"), Path("/nonexistent")) == (
        "cannot listen on [::1]:25: the port is already in use by another process "
        "(`ss -ltnp sport = :25` says which); stop that process (another Willi?) or choose another WILLI_LISTEN")
    assert explain_bind_error("127.0.0.1", 2525, OSError(errno.EACCES, "Permission denied"),
                              Path("/nonexistent")).startswith("cannot listen on 127.0.0.1:2525: permission denied (not a")
    assert explain_bind_error("127.0.0.1", 7, OSError(errno.EMFILE, "Too many open files")).endswith(
        ": Too many open files")
    assert (show_address("::", 25), show_address("0.0.0.0", 25)) == ("[::]:25", "0.0.0.0:25")
    assert interfaces("127.0.0.1") is None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare to bind all interfaces of a private network namespace")
def test_an_empty_host_is_logged_as_all_ipv4_interfaces(tmp_path: Path) -> None:
    # All interfaces of a network namespace of its own, where the only one is loopback.
    port = free_port()
    env_file = write_env_file(tmp_path / "all.env", env(tmp_path, f":{port}"))
    out = tmp_path / "all.stdout"
    with open(out, "wb") as stdout:
        process = subprocess.Popen(["unshare", "--net", sys.executable, str(WILLI_SCRIPT), "--config", str(env_file)],
                                   cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=stdout,
                                   stderr=subprocess.STDOUT, env=child_environ())
    try:
        line = wait_until(lambda: next((parse_log_line(l) for l in out.read_text().splitlines()
                                        if "event=listening" in l), None), 10, 0.02, "the listening line")
    finally:
        process.terminate()
        process.wait(10)
    assert line["address"] == f"0.0.0.0:{port}"
    assert line["interfaces"] == "all IPv4 interfaces"


def test_with_workers_a_mapping_that_cannot_open_fails_the_start_with_one_line(tmp_path: Path) -> None:
    # Checked in the parent before any worker is forked: not one garbled line per worker.
    line = start_fails(tmp_path, env(tmp_path, f"127.0.0.1:{free_port()}", WILLI_WORKERS="3",
                                     WILLI_MAPPING_1=f"csv:{tmp_path}/missing.csv"))
    assert line.startswith("willi: cannot start: ") and "missing.csv" in line


def test_a_metrics_port_in_use_names_the_metrics_setting(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = start_fails(tmp_path, env(tmp_path, f"127.0.0.1:{free_port()}",
                                         WILLI_METRICS_LISTEN=f"127.0.0.1:{port}"))
    assert f"127.0.0.1:{port}" in line and "already in use" in line
    assert line.endswith("or choose another WILLI_METRICS_LISTEN")

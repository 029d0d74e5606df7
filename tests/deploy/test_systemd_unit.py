"""The systemd unit in contrib/ (issue 13 item 3): what it must say, and that
systemd's own checker accepts it (skipped where systemd-analyze is missing)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.willi_process import REPO_ROOT

UNIT = REPO_ROOT / "contrib" / "systemd" / "willi.service"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_the_unit_waits_for_ready_reloads_with_hup_and_runs_as_its_own_user() -> None:
    unit = service()
    assert unit["Type"] == "notify"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["User"] == "willi" and unit["Group"] == "willi"
    assert unit["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    # longer than the default WILLI_SHUTDOWN_TIMEOUT (30s): the drain is not cut short
    assert int(unit["TimeoutStopSec"].rstrip("s")) > 30


@pytest.mark.parametrize("directive", [
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
    "PrivateDevices=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "RestrictSUIDSGID=yes",
    "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service", "LockPersonality=yes",
])
def test_the_unit_is_hardened(directive: str) -> None:
    key, _, value = directive.partition("=")
    assert service()[key] == value


def test_the_socket_unit_listens_on_port_25_for_the_service() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((UNIT.parent / "willi.socket").read_text())
    assert parser["Socket"]["ListenStream"] == "25"


def test_the_sysusers_file_creates_the_user_the_unit_runs_as() -> None:
    line = (UNIT.parent / "willi.sysusers").read_text().splitlines()[-1].split()
    assert line[:2] == ["u", "willi"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_has_nothing_to_say(tmp_path: Path) -> None:
    copies = []
    for name in ("willi.service", "willi.socket"):
        copies.append(tmp_path / name)
        copies[-1].write_text((UNIT.parent / name).read_text())
    result = subprocess.run(["systemd-analyze", "verify", *map(str, copies)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    # verify exits 0 even for unknown keys; what it prints is the verdict
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith(str(tmp_path))]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr

"""`make dist` builds dist/willi.pyz, one file that runs on a Python with
nothing installed (SPEC §6, issue 13 item 1).

The pyz is built by the Makefile's own target into this test's tmp directory,
then run by an isolated interpreter (`-I -S`: no site-packages, no current
directory, no PYTHON* variables), so PyMySQL, python-dotenv and Willi itself
can only come from inside the file. A client sends one message through it to
Postfix's smtp-sink.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import LOOPBACK_V4, free_port
from tests.support.sink import SmtpSink
from tests.support.willi_process import REPO_ROOT, WilliProcess, child_environ, write_env_file

ISOLATED = (sys.executable, "-I", "-S")


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        ["make", "-s", "dist", f"DIST={out}", f"BUILD={out / 'build'}", f"PYTHON={sys.executable}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "willi.pyz"


class IsolatedWilli(WilliProcess):
    """A WilliProcess that runs `python -I -S willi.pyz` outside the checkout."""

    def start(self) -> "IsolatedWilli":
        return self._launch([*ISOLATED, str(self.script), "--config", str(self.env_file)], cwd=self.tmp_path)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path) as server:
        yield server


def isolated(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*ISOLATED, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, env=child_environ())


def test_the_isolated_interpreter_has_neither_dependency_nor_willi_of_its_own(tmp_path: Path) -> None:
    for module in ("pymysql", "dotenv", "willi"):
        result = isolated("-c", f"import {module}", cwd=tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module


def test_the_pyz_carries_both_runtime_dependencies(pyz: Path, tmp_path: Path) -> None:
    code = (f"import sys; sys.path.insert(0, {str(pyz)!r}); import pymysql, dotenv, willi.cli; "
            "print(pymysql.__file__); print(dotenv.__file__)")
    result = isolated("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(line.startswith(str(pyz)) for line in result.stdout.split()), result.stdout


def test_the_pyz_answers_version_and_check(pyz: Path, tmp_path: Path) -> None:
    from willi import __version__

    version = isolated(str(pyz), "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"willi {__version__}"), version
    csv = tmp_path / "upstreams.csv"
    csv.write_text("pattern;server;tls_verify\nexample.org;127.0.0.1:2602\n")
    env = write_env_file(tmp_path / "willi.env", {
        "WILLI_LISTEN": f"{LOOPBACK_V4}:{free_port()}", "WILLI_HOSTNAME": "willi.test",
        "WILLI_MAPPING_1": f"csv:{csv}"})
    check = isolated(str(pyz), "--config", str(env), "--check", cwd=tmp_path)
    assert check.returncode == 0, check
    assert "configuration ok (1 mappings)" in check.stdout
    broken = tmp_path / "broken.env"
    broken.write_text(env.read_text() + "WILLI_MAX_MESSAGE_SIZE=lots\n")
    refused = isolated(str(pyz), "--config", str(broken), "--check", cwd=tmp_path)
    assert refused.returncode == 1 and "WILLI_MAX_MESSAGE_SIZE" in refused.stderr, refused


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no system python3")
def test_the_systems_own_python_runs_the_pyz_too(pyz: Path, tmp_path: Path) -> None:
    version = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info >= (3, 11))"],
                             capture_output=True, text=True, timeout=30)
    if version.stdout.strip() != "True":
        pytest.skip("the system python3 is older than 3.11")
    from willi import __version__

    result = subprocess.run(["/usr/bin/python3", "-I", "-S", str(pyz), "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30, env=child_environ())
    assert (result.returncode, result.stdout.strip()) == (0, f"willi {__version__}"), result


def test_the_pyz_serves_a_message_to_smtp_sink(pyz: Path, sink: SmtpSink, tmp_path: Path) -> None:
    env = {"WILLI_LISTEN": f"{LOOPBACK_V4}:{free_port()}", "WILLI_HOSTNAME": "willi.test",
           "WILLI_MAPPING_1": f"static:{sink.address}", "WILLI_SHUTDOWN_TIMEOUT": "2s"}
    with IsolatedWilli(env, tmp_path, script=pyz) as willi:
        # client says: one message; Willi relays it; smtp-sink takes it
        with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
            assert smtp.sendmail("a@client.test", ["user@example.org"],
                                 b"Subject: from the pyz\r\n\r\nhello\r\n") == {}
        [message] = sink.wait_for_messages(1)
        assert willi.stop() == 0, willi.output()
    assert message.content.endswith(b"Subject: from the pyz\n\nhello\n")
    assert ["user@example.org" in args for args in message.rcpt_args] == [True]
    assert any('event=transaction' in line and 'code=250' in line
               for line in willi.stdout().splitlines()), willi.output()
    assert os.path.getsize(pyz) < 2 * 1024 * 1024

"""`make run` works: the demo upstream and Willi on willi.env.example deliver
the message that `make run` itself suggests sending.

The commands are taken from `make -n run` (what make would execute), then run
for real, with two changes only: free ports instead of 2525/2526 (so the test
cannot collide with anything), passed the way an operator would — a port
argument to the demo, WILLI_ environment variables overriding the env file,
and a copy of the example CSV pointing at the demo's port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import LOOPBACK_V4, free_port, wait_for_port, wait_until
from tests.support.willi_process import REPO_ROOT, child_environ, greets

DEMO_PORT = 2526  # the ports `make run` uses
WILLI_PORT = 2525
SUGGESTED = "Subject: hi\r\n\r\nhello\r\n"


def make_run_commands() -> str:
    """What `make run` executes, as make itself prints it (`make -n`)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "-n", "run"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=30, env=environ)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def recipe() -> dict[str, str]:
    text = make_run_commands()
    demo = re.search(r"(\S*python\S*) (examples/demo_upstream\.py) (\d+) &", text)
    willi = re.search(r"(\S*python\S*) (willi\.py) --config (\S+)\s*$", text, re.MULTILINE)
    assert demo and willi, text
    return {"demo_script": demo[2], "demo_port": demo[3], "willi_script": willi[2],
            "config": willi[3], "text": text}


def env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_make_run_starts_the_demo_upstream_and_willi_on_the_example_configuration(
    recipe: dict[str, str]
) -> None:
    assert recipe["demo_script"] == "examples/demo_upstream.py"
    assert recipe["demo_port"] == str(DEMO_PORT)
    assert recipe["willi_script"] == "willi.py"
    assert recipe["config"] == "willi.env.example"
    # the demo is stopped when Willi is
    assert "kill $demo" in recipe["text"]


def test_the_example_configuration_routes_the_suggested_recipient_to_the_demo_port(
    recipe: dict[str, str]
) -> None:
    values = env_file_values(REPO_ROOT / recipe["config"])
    assert values["WILLI_LISTEN"] == f"127.0.0.1:{WILLI_PORT}"
    assert f"smtplib.SMTP('127.0.0.1', {WILLI_PORT})" in recipe["text"]  # the hint make prints
    mapping = values["WILLI_MAPPING_1"]
    assert mapping.startswith("csv:")
    csv = (REPO_ROOT / mapping[4:]).read_text()
    assert re.search(rf"^example\.org;127\.0\.0\.1:{DEMO_PORT}(;|$)", csv, re.MULTILINE), csv


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(10)


@pytest.fixture
def demo(recipe: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    out = tmp_path / "demo.stdout"
    with open(out, "wb") as stdout:
        process = subprocess.Popen([sys.executable, recipe["demo_script"], str(port)], cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                   env=child_environ())
    try:
        wait_for_port(LOOPBACK_V4, port, 10.0)
        yield port, out
    finally:
        stop(process)


def test_the_message_make_run_suggests_reaches_the_demo_upstream_through_willi(
    recipe: dict[str, str], demo: tuple[int, Path], tmp_path: Path
) -> None:
    demo_port, demo_out = demo
    csv = tmp_path / "upstreams.csv"
    example_csv = env_file_values(REPO_ROOT / recipe["config"])["WILLI_MAPPING_1"][4:]
    csv.write_text((REPO_ROOT / example_csv).read_text().replace(f":{DEMO_PORT}", f":{demo_port}"))
    willi_port = free_port()
    overrides = {"WILLI_LISTEN": f"{LOOPBACK_V4}:{willi_port}", "WILLI_MAPPING_1": f"csv:{csv}"}
    willi_out = tmp_path / "willi.stdout"
    with open(willi_out, "wb") as stdout:
        willi = subprocess.Popen(
            [sys.executable, recipe["willi_script"], "--config", recipe["config"]], cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
            env=child_environ(overrides))
    try:
        wait_until(lambda: willi.poll() is None and greets(LOOPBACK_V4, willi_port), 10.0, 0.02,
                   f"Willi to greet; output:\n{willi_out.read_text()}")
        with smtplib.SMTP(LOOPBACK_V4, willi_port, timeout=10) as smtp:
            refused = smtp.sendmail("a@b.example", ["user@example.org"], SUGGESTED)
        assert refused == {}
        wait_until(lambda: "hello" in demo_out.read_text(), 10.0, 0.02,
                   "the demo upstream to print the message")
        shown = demo_out.read_text()
    finally:
        code = stop(willi)
    assert code == 0, willi_out.read_text()
    assert "--- demo upstream received a message from 127.0.0.1" in shown
    assert "MAIL FROM <a@b.example>  RCPT TO <user@example.org>" in shown
    assert "Subject: hi\n\nhello" in shown.replace("\r\n", "\n")
    log = willi_out.read_text()
    assert re.search(r"event=transaction .*rcpts=user@example.org .*code=250", log), log


def test_the_hint_make_run_prints_is_the_readme_command_on_one_line() -> None:
    """The hint is printed, not run: `make -n` shows the printf, so run just that line."""
    recipe = subprocess.run(["make", "-s", "-n", "run"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=30, check=True).stdout
    [hint_line] = [line for line in recipe.splitlines() if line.startswith("printf")]
    printed = subprocess.run(["sh", "-c", hint_line], capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
    readme = (REPO_ROOT / "README.md").read_text()
    assert printed.startswith('python3 -c "import smtplib;') and "\n" not in printed
    assert printed in readme

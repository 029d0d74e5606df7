"""The Dockerfile builds an image that serves mail as a non-root user, logs on
stdout, passes its SMTP health check and stops cleanly (issue 13 item 4).

Needs a container runtime that can run here (docker with a daemon, or
podman; `make system-test-deps` installs podman, runc and mmdebstrap) and a
base image: python:3.11-slim (or CONTAINER_BASE_IMAGE) when a registry
answers, else a Debian bookworm with python3 made once with mmdebstrap from
the Debian mirror. The test is skipped, saying which was missing, otherwise. The image is built from a context holding only
what .dockerignore lets through, with the pyz made by `make dist`; the
container shares the host network so it reaches smtp-sink on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import LOOPBACK_V4, free_port, wait_until
from tests.support.sink import SmtpSink
from tests.support.willi_process import REPO_ROOT, greets

WANTED_BASE = os.environ.get("CONTAINER_BASE_IMAGE", "python:3.11-slim")
# Built with mmdebstrap from the Debian mirror when no registry is reachable.
LOCAL_BASE = "localhost/willi-test-base:bookworm"
IMAGE = f"localhost/willi-test:{os.getpid()}"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _engine() -> tuple[list[str], list[str], str]:
    """The runtime command, the run flags that make a container start here,
    and the base image.

    Tries docker, then podman; plain first, then with runc and explicit
    ulimits (podman's crun refuses hybrid cgroups, and a limit above the
    runner's own cannot be set inside a container)."""
    reasons = []
    for name in ("docker", "podman"):
        if shutil.which(name) is None:
            reasons.append(f"{name}: not installed")
            continue
        if _run(name, "info", timeout=30).returncode != 0:
            reasons.append(f"{name}: no daemon or cannot run")
            continue
        base = _base(name)
        if base is None:
            reasons.append(f"{name}: base image {WANTED_BASE} unavailable and no mmdebstrap to make "
                           "one (set CONTAINER_BASE_IMAGE)")
            continue
        hard = [int(line.split()[4]) for line in Path("/proc/self/limits").read_text().splitlines()
                if line.startswith("Max open files")][0]
        quirks = ([], ["--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=4096:4096"])
        runtimes = ([name], [name, "--runtime", "runc"]) if name == "podman" else ([name],)
        for command in runtimes:
            for flags in quirks:
                probe = _run(*command, "run", "--rm", *flags, base, "python3", "-c", "print(1)")
                if probe.returncode == 0:
                    return list(command), list(flags), base
                reasons.append(f"{' '.join(command)} {' '.join(flags)}: {probe.stderr.strip()[-200:]}")
    pytest.skip("no container runtime can run here: " + "; ".join(reasons))


def _base(name: str) -> str | None:
    """The wanted base image, pulled if need be; else a local Debian with python3."""
    for image in (WANTED_BASE, LOCAL_BASE):
        if _run(name, "image", "inspect", image, timeout=30).returncode == 0:
            return image
    if _run(name, "pull", WANTED_BASE, timeout=300).returncode == 0:
        return WANTED_BASE
    if "CONTAINER_BASE_IMAGE" in os.environ or shutil.which("mmdebstrap") is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = os.path.join(scratch, "rootfs.tar")
        made = _run("mmdebstrap", "--variant=minbase", "--include=python3", "bookworm", rootfs,
                    timeout=900)
        if made.returncode != 0 or _run(name, "import", rootfs, LOCAL_BASE, timeout=300).returncode:
            return None
    return LOCAL_BASE


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], list[str]]]:
    engine, flags, base = _engine()
    context = tmp_path_factory.mktemp("image")
    built = subprocess.run(["make", "-s", "dist", f"DIST={context / 'dist'}", f"BUILD={context / 'build'}",
                            f"PYTHON={sys.executable}"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stdout + built.stderr
    shutil.rmtree(context / "build")
    (context / "contrib" / "docker").mkdir(parents=True)
    for name in ("Dockerfile", ".dockerignore", "contrib/docker/healthcheck.py"):
        shutil.copy(REPO_ROOT / name, context / name)
    build_flags = [f for f in flags if f != "--rm"]
    result = _run(*engine, "build", *build_flags, "--format", "docker", "--build-arg", f"BASE={base}",
                  "-t", IMAGE, str(context), timeout=600) if engine[0] == "podman" else \
        _run(*engine, "build", "--build-arg", f"BASE={base}", "-t", IMAGE, str(context), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield engine, flags
    finally:
        _run(*engine, "rmi", "-f", IMAGE)


def _healthcheck(engine: list[str]) -> list[str]:
    """The HEALTHCHECK test of the image (docker: Config.Healthcheck, podman: HealthCheck)."""
    [info] = json.loads(_run(*engine, "image", "inspect", IMAGE).stdout)
    for holder in (info.get("Config") or {}, info):
        for key in ("Healthcheck", "HealthCheck"):
            if holder.get(key):
                return list(holder[key]["Test"])
    raise AssertionError(f"no HEALTHCHECK in the image: {info}")


def test_the_image_serves_mail_as_non_root_and_passes_its_health_check(
    image: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    engine, flags = image
    name = f"willi-test-{os.getpid()}"
    port = free_port()
    with SmtpSink(tmp_path) as sink:
        started = _run(*engine, "run", "-d", "--name", name, "--network", "host", *flags,
                       "-e", f"WILLI_LISTEN={LOOPBACK_V4}:{port}", "-e", "WILLI_HOSTNAME=willi.test",
                       "-e", f"WILLI_MAPPING_1=static:{sink.address}",
                       "-e", "WILLI_SHUTDOWN_TIMEOUT=2s", IMAGE)
        assert started.returncode == 0, started.stderr
        try:
            wait_until(lambda: greets(LOOPBACK_V4, port), 20.0, 0.1,
                       f"the container to greet; logs: {_run(*engine, 'logs', name).stdout}")
            # client says: a message; Willi in the container relays it to smtp-sink
            with smtplib.SMTP(LOOPBACK_V4, port, local_hostname="client.test", timeout=10) as smtp:
                assert smtp.sendmail("a@client.test", ["user@example.org"],
                                     b"Subject: from the container\r\n\r\nhi\r\n") == {}
            [message] = sink.wait_for_messages(1)
            assert message.content.endswith(b"Subject: from the container\n\nhi\n")

            # the image's own HEALTHCHECK command, run as the runtime would run it
            probe = _healthcheck(engine)
            assert probe[0] == "CMD" and probe[-1].endswith("healthcheck.py"), probe
            health = _run(*engine, "exec", name, *probe[1:])
            assert health.returncode == 0, health.stderr
            uid = _run(*engine, "exec", name, "id", "-un")
            assert uid.stdout.strip() == "willi"
            # and it fails when nothing answers: another port, nobody there
            other = free_port()
            unhealthy = _run(*engine, "exec", "-e", f"WILLI_LISTEN={LOOPBACK_V4}:{other}", name, *probe[1:])
            assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stderr, unhealthy

            stopped = _run(*engine, "stop", "-t", "15", name, timeout=30)
            assert stopped.returncode == 0, stopped.stderr
            code = _run(*engine, "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            logs = _run(*engine, "logs", name).stdout
            assert code == "0", logs
            assert "event=transaction" in logs and "code=250" in logs and "event=stopped" in logs
        finally:
            _run(*engine, "rm", "-f", name)

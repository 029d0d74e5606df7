"""Exim as a real BDAT client (issue 8 "Must show"), unpacked, not installed.

Debian's exim4-daemon-light conflicts with postfix, so it is never
installed: `apt-get download` fetches it (and libidn12, which the host may
lack, and libnss-wrapper) and `dpkg -x` unpacks them under a directory of
the test's own. The binary looks up its compiled-in user "Debian-exim" at
start; nss_wrapper (LD_PRELOAD) answers that from a passwd file of ours, so
nothing on the host changes. Exim runs with its own configuration (-C):
Exim re-executes itself to deliver, so `exim_path` names the unpacked binary
and `keep_environment` keeps the variables that make it run. One manualroute router sends every domain to Willi's loopback port over the
smtp transport, which uses BDAT whenever the server offers CHUNKING
(`hosts_try_chunking = *`). `send()` submits one message with `-odi`
(delivered in the foreground, no queue runner, no daemon).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGES = ("exim4-daemon-light", "libidn12", "libnss-wrapper")

CONFIG = """\
exim_user = Debian-exim
exim_group = Debian-exim
never_users =
primary_hostname = exim.test
spool_directory = {spool}
log_file_path = {log}/%slog
exim_path = {exim}
keep_environment = PATH : LD_LIBRARY_PATH : LD_PRELOAD : NSS_WRAPPER_PASSWD : NSS_WRAPPER_GROUP
trusted_users = {user}
begin routers
to_willi:
  driver = manualroute
  domains = *
  route_list = * {host}::{port}
  transport = to_willi_smtp
  self = send
begin transports
to_willi_smtp:
  driver = smtp
  port = {port}
  hosts_try_chunking = *
  hosts_avoid_tls = *
  allow_localhost
begin retry
* * F,1m,1m
"""


class EximUnavailable(RuntimeError):
    """The packages could not be fetched or unpacked."""


def unpack(directory: Path) -> Path:
    """Fetch and unpack the packages once into `directory`; the root of the tree."""
    root = directory / "root"
    if (root / "usr/sbin/exim4").exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise EximUnavailable("apt-get and dpkg are needed to unpack exim4-daemon-light")
    debs = directory / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise EximUnavailable(f"apt-get download failed: {result.stderr.strip()}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=120)
    # dpkg -x keeps the setuid bit; a setuid exec ignores LD_LIBRARY_PATH and
    # LD_PRELOAD, and Exim re-executes itself to deliver. It needs no root here.
    (root / "usr/sbin/exim4").chmod(0o755)
    return root


class Exim:
    """One unpacked Exim with its configuration, sending to host:port."""

    def __init__(self, host: str, port: int) -> None:
        # Exim re-executes itself and writes its spool as "Debian-exim" after
        # giving up root, so everything lives where that user can reach it
        # (pytest's tmp dirs are 0700); close() removes it.
        self.work = Path(tempfile.mkdtemp(prefix="willi-exim-"))
        self.work.chmod(0o755)
        directory = self.directory = self.work
        self.root = unpack(directory)
        self.spool = self.work / "spool"
        self.log = self.work / "log"
        for path in (self.spool, self.log):
            path.mkdir(exist_ok=True)
            path.chmod(0o777)  # Exim writes here as "Debian-exim" after giving up root
        uid = os.getuid()
        exim_uid = 65534 if uid == 0 else uid  # Exim refuses uid 0 for its own user
        (directory / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\n"
                                          f"Debian-exim:x:{exim_uid}:{exim_uid}::/tmp:/bin/false\n")
        (directory / "group").write_text(f"root:x:0:\nDebian-exim:x:{exim_uid}:\n")
        self.config = directory / "exim.conf"
        self.config.write_text(CONFIG.format(spool=self.spool, log=self.log, host=host, port=port,
                                             exim=self.root / "usr/sbin/exim4",
                                             user="root" if uid == 0 else os.getlogin()))

    def _command(self, *args: str) -> list[str]:
        return [str(self.root / "usr/sbin/exim4"), "-C", str(self.config), *args]

    def _env(self) -> dict[str, str]:
        lib = self.root / "usr/lib/x86_64-linux-gnu"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_LIBRARY_PATH": str(lib),
            "LD_PRELOAD": str(lib / "libnss_wrapper.so"),
            "NSS_WRAPPER_PASSWD": str(self.directory / "passwd"),
            "NSS_WRAPPER_GROUP": str(self.directory / "group"),
        }

    def version(self) -> str:
        result = subprocess.run(self._command("-bV"), env=self._env(), capture_output=True, text=True, timeout=30)
        return result.stdout.splitlines()[0] if result.returncode == 0 else result.stderr

    def send(self, sender: str, rcpt: str, message: bytes, timeout: float = 60) -> subprocess.CompletedProcess:
        """Submit and deliver at once (-odi): returns when the delivery was tried."""
        return subprocess.run(self._command("-odi", "-oi", "-f", sender, rcpt), input=message, env=self._env(),
                              capture_output=True, timeout=timeout)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "Exim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mainlog(self) -> str:
        path = self.log / "mainlog"
        return path.read_text(errors="replace") if path.exists() else ""

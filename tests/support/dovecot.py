"""A private Dovecot instance: LMTP on a loopback port, and its auth server
on a Unix socket for Postfix's SASL (`smtpd_sasl_type = dovecot`).

Its own dovecot.conf, base and state directories, log file and password file;
`dovecot -c FILE -F` runs as a child of the test and SIGTERM stops it.
Debian's `dovecot-core` and `dovecot-lmtpd` provide it (`make
system-test-deps`). `login_trusted_networks` names 127.0.0.1, Willi's
address, so Dovecot's LMTP takes Willi's XCLIENT; a message delivered for
`<user>@dest.test` lands in the maildir of `<user>`, read back by the test.

Dovecot drops root for its services, so the instance lives in a directory of
its own under /tmp they can reach, removed when it stops. It needs root.
"""

from __future__ import annotations

import email.message
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .daemon import launch, maildir_messages, read_logs, reap, wait_started
from .net import LOOPBACK_V4, LoopbackServer, free_port, port_accepts, wait_until

DOVECOT = "/usr/sbin/dovecot"
LMTP = "/usr/lib/dovecot/lmtp"


def dovecot_available() -> str | None:
    """Why a private Dovecot cannot run here, or None when it can."""
    if not (os.access(DOVECOT, os.X_OK) and os.access(LMTP, os.X_OK)):
        return "dovecot-core and dovecot-lmtpd are not installed (make system-test-deps)"
    if os.geteuid() != 0:
        return "a private Dovecot instance needs root to start"
    return None


class DovecotServer(LoopbackServer):
    """LMTP on 127.0.0.1:`port`; `auth_socket` for Postfix; `users` name: password."""

    def __init__(self, users: dict[str, str], start_timeout: float = 20.0) -> None:
        self.host = LOOPBACK_V4
        self.port = free_port()
        self.users = users
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.process: subprocess.Popen | None = None
        self._output: Any = None

    @property
    def auth_socket(self) -> Path:
        assert self.root is not None
        return self.root / "auth-postfix"

    def _conf(self, root: Path) -> str:
        return f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = dovecot-willi-{self.port}
protocols = lmtp
listen = {self.host}
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 100
mail_location = maildir:{root}/mail/%n
login_trusted_networks = {self.host}/32
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%n allow_all_users=yes
}}
service auth {{
  unix_listener {root}/auth-postfix {{
    mode = 0666
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.port}
  }}
}}
"""

    def start(self) -> "DovecotServer":
        why = dovecot_available()
        if why:
            raise RuntimeError(why)
        root = Path(tempfile.mkdtemp(prefix=f"willi-dovecot-{self.port}-"))
        root.chmod(0o755)  # Postfix (uid postfix) must reach the auth socket, lmtp (nobody) mail/
        self.root = root
        for name in ("run", "state", "mail"):
            (root / name).mkdir()
        shutil.chown(root / "mail", "nobody", "nogroup")
        passwd = root / "passwd"
        passwd.write_text("".join(f"{user}:{{PLAIN}}{password}\n" for user, password in self.users.items()))
        passwd.chmod(0o644)
        (root / "dovecot.conf").write_text(self._conf(root))
        self.process, self._output = launch([DOVECOT, "-c", str(root / "dovecot.conf"), "-F"], root / "start.out")
        try:
            wait_started(self.process, lambda: port_accepts(self.host, self.port) and self.auth_socket.exists(),
                         self.start_timeout, "dovecot", self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            reap(self.process)
            self.process = None
        if self._output is not None:
            self._output.close()
            self._output = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def log(self) -> str:
        assert self.root is not None
        return read_logs(self.root / "start.out", self.root / "dovecot.log")

    def messages(self, user: str) -> list[email.message.EmailMessage]:
        """What LMTP delivered to `user`'s INBOX, oldest first."""
        assert self.root is not None
        return maildir_messages(self.root / "mail" / user / "new")

    def wait_for_messages(self, user: str, count: int, timeout: float = 15.0) -> list[email.message.EmailMessage]:
        return wait_until(lambda: len(self.messages(user)) >= count and self.messages(user), timeout=timeout,
                          message=f"{count} message(s) delivered by dovecot to {user}")

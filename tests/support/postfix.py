"""A private Postfix instance as a real upstream: its own main.cf/master.cf,
queue and data directories, loopback ports, `postfix -c DIR start-fg` as a
child of the test (so the test reaps it) and `postfix -c DIR stop`.

Debian's `postfix` package provides the programs (`make system-test-deps`
installs it); nothing of the system's own Postfix is used or touched. The
instance delivers every recipient of `dest.test` into one maildir with the
`virtual` agent, so a test reads the delivered message, Received header and
all. Its smtpd listens on up to three loopback ports, one per role:

- `xclient`: trusts Willi's XCLIENT (`smtpd_authorized_xclient_hosts`);
- `proxy`: expects a PROXY header (`smtpd_upstream_proxy_protocol = haproxy`);
- `smtps-proxy`: the same header, then implicit TLS (`smtpd_tls_wrappermode`);
- `sasl`: STARTTLS, then SASL through Dovecot's auth socket, and relays only
  for a client that logged in (`permit_sasl_authenticated, reject`).

Mynetworks names no loopback address: nothing is trusted for its address.

The delivery agents drop root, so the instance lives in a directory of its
own under /tmp that they can reach (pytest's base temporary directory is
0700), removed when the instance stops. Postfix needs root to start; a test
that uses it is skipped otherwise.
"""

from __future__ import annotations

import email.message
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .daemon import launch, maildir_messages, read_logs, reap, wait_started
from .net import LOOPBACK_V4, LoopbackServer, free_port, greets, port_accepts, wait_until

POSTFIX = "/usr/sbin/postfix"
DOMAIN = "dest.test"
HOSTNAME = "postfix.test"

_MASTER_SERVICES = """\
postlog   unix-dgram n  -       n       -       1       postlogd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""


def postfix_available() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if not os.access(POSTFIX, os.X_OK):
        return "postfix is not installed (make system-test-deps)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root to start"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user"
    return None


class PostfixServer(LoopbackServer):
    """One Postfix instance; `ports[role]` for each smtpd listener (the TLS
    roles only with `tls`, a (certificate, key) pair; `sasl` also needs the
    Dovecot auth socket)."""

    def __init__(self, *, tls: tuple[Path, Path] | None = None, sasl_socket: Path | None = None,
                 start_timeout: float = 20.0) -> None:
        self.host = LOOPBACK_V4
        roles = ["xclient", "proxy"] + (["smtps-proxy"] if tls else []) + (["sasl"] if tls and sasl_socket else [])
        self.ports = {role: free_port() for role in roles}
        self.port = self.ports["xclient"]
        self.tls = tls
        self.sasl_socket = sasl_socket
        self.start_timeout = start_timeout
        self.root: Path | None = None
        self.process: subprocess.Popen | None = None
        self._output: Any = None

    def route(self, role: str) -> str:
        return f"{self.host}:{self.ports[role]}"

    # --- configuration ----------------------------------------------------------
    def _main_cf(self, root: Path) -> str:
        user = pwd.getpwnam("postfix")
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {root}/queue",
            f"data_directory = {root}/data",
            "command_directory = /usr/sbin",
            "daemon_directory = /usr/lib/postfix/sbin",
            "meta_directory = /etc/postfix",
            "shlib_directory = /usr/lib/postfix",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"syslog_name = postfix-willi-{self.port}",
            f"maillog_file = {root}/maillog",
            f"maillog_file_prefixes = {root}",
            f"myhostname = {HOSTNAME}",
            "mydestination =",
            "mynetworks = 192.0.2.255/32",  # never Willi's address (see README)
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "smtputf8_enable = no",
            "alias_maps =",
            "biff = no",
            "smtpd_recipient_restrictions = reject_unauth_destination",
            f"virtual_mailbox_domains = {DOMAIN}",
            f"virtual_mailbox_base = {root}/mail",
            "virtual_mailbox_maps = static:maildir/",
            f"virtual_uid_maps = static:{user.pw_uid}",
            f"virtual_gid_maps = static:{user.pw_gid}",
            "",
        ])

    def _master_cf(self) -> str:
        lines = [
            f"{self.host}:{self.ports['xclient']} inet n - n - - smtpd",
            f"  -o smtpd_authorized_xclient_hosts={self.host}",
            f"{self.host}:{self.ports['proxy']} inet n - n - - smtpd",
            "  -o smtpd_upstream_proxy_protocol=haproxy",
        ]
        if self.tls is not None:
            cert, key = self.tls
            lines += [
                f"{self.host}:{self.ports['smtps-proxy']} inet n - n - - smtpd",
                "  -o smtpd_tls_wrappermode=yes",
                "  -o smtpd_tls_security_level=encrypt",
                f"  -o smtpd_tls_cert_file={cert}",
                f"  -o smtpd_tls_key_file={key}",
                "  -o smtpd_upstream_proxy_protocol=haproxy",
            ]
        if "sasl" in self.ports:
            assert self.tls is not None
            lines += [
                f"{self.host}:{self.ports['sasl']} inet n - n - - smtpd",
                "  -o smtpd_tls_security_level=may",
                f"  -o smtpd_tls_cert_file={cert}",
                f"  -o smtpd_tls_key_file={key}",
                "  -o smtpd_tls_auth_only=yes",
                "  -o smtpd_sasl_auth_enable=yes",
                "  -o smtpd_sasl_type=dovecot",
                f"  -o smtpd_sasl_path={self.sasl_socket}",
                "  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject",
            ]
        return "\n".join(lines) + "\n" + _MASTER_SERVICES

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> "PostfixServer":
        why = postfix_available()
        if why:
            raise RuntimeError(why)
        root = Path(tempfile.mkdtemp(prefix=f"willi-postfix-{self.port}-"))
        root.chmod(0o755)  # the virtual agent (uid postfix) must reach mail/
        self.root = root
        user = pwd.getpwnam("postfix")
        for name in ("conf", "queue", "data", "mail"):
            (root / name).mkdir()
        for name in ("data", "mail"):
            os.chown(root / name, user.pw_uid, user.pw_gid)
        (root / "conf" / "main.cf").write_text(self._main_cf(root))
        (root / "conf" / "master.cf").write_text(self._master_cf())
        self.process, self._output = launch([POSTFIX, "-c", str(root / "conf"), "start-fg"], root / "start.out")
        try:
            # Every port accepts, and a real smtpd greets with 220 on the plain
            # one: a connection accepted by master while Postfix still starts
            # up has been answered "421 4.3.0 Server local error".
            wait_started(self.process, lambda: all(port_accepts(self.host, port) for port in self.ports.values())
                         and greets(self.host, self.ports["xclient"]),
                         self.start_timeout, "postfix", self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        if self.process is not None:
            subprocess.run([POSTFIX, "-c", str(self.root / "conf"), "stop"], capture_output=True, timeout=30)
            reap(self.process)
            self.process = None
        if self._output is not None:
            self._output.close()
            self._output = None
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    # --- what it received ---------------------------------------------------------
    def log(self) -> str:
        assert self.root is not None
        return read_logs(self.root / "start.out", self.root / "maillog")

    def messages(self) -> list[email.message.EmailMessage]:
        """Delivered messages, oldest first."""
        assert self.root is not None
        return maildir_messages(self.root / "mail" / "maildir" / "new")

    def wait_for_messages(self, count: int, timeout: float = 15.0) -> list[email.message.EmailMessage]:
        return wait_until(lambda: len(self.messages()) >= count and self.messages(), timeout=timeout,
                          message=f"{count} message(s) delivered by postfix; log:\n{self.log() if self.root else ''}")

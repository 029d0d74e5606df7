"""A real MariaDB server for the tests, private to the test session.

The MySQL mapping is tested against a real server rather than a mock because
what matters is how PyMySQL and the server actually behave: timeouts, lost
connections after a restart, refused credentials, the types a column comes
back as. The server runs from a throw-away data directory on a free port, as
its own process, so it touches nothing of the machine's own database, and the
tests can stop and restart it to play a database outage. CI may start on a
fresh Debian machine (as root), so a missing server is installed with apt-get.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pymysql
import pytest

DATABASE = "mail"
USER = "willi"
PASSWORD = "secret"
START_TIMEOUT = 60.0  # seconds; a cold first start on a slow CI disk takes a while
STOP_TIMEOUT = 30.0

SETUP_SQL = (
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'",
    f"CREATE USER IF NOT EXISTS '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}'",
    f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'%'",
    f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'localhost'",
    # tls_verify is text so that tests can store every spelling an operator might.
    f"CREATE TABLE IF NOT EXISTS {DATABASE}.upstreams ("
    " pattern VARCHAR(255) PRIMARY KEY,"
    " server VARCHAR(1024) NOT NULL,"
    " tls_verify VARCHAR(8) NULL)",
)


def _server_binary() -> str | None:
    """mariadbd (or the older mysqld name); /usr/sbin is not always on PATH."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/usr/local/sbin"
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def _install_server() -> str:
    """Install mariadb-server with apt-get; the package lists are refreshed
    only when the first attempt fails, because an update is slow and usually
    not needed on a machine that has been used before."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "mariadb-server"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    binary = _server_binary()
    if binary is None:
        raise RuntimeError("mariadb-server installed, but no mariadbd/mysqld found")
    return binary


def _install_db_binary() -> str:
    for name in ("mariadb-install-db", "mysql_install_db"):
        found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin")
        if found:
            return found
    raise RuntimeError("neither mariadb-install-db nor mysql_install_db found")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MariaDB:
    """One mariadbd process with its own data directory, port and socket."""

    def __init__(self, base_dir: Path | None = None) -> None:
        # A short base path: a Unix socket path must stay under 108 bytes.
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="willi-mariadb-"))
        self.datadir = self.base_dir / "data"
        self.socket_path = str(self.base_dir / "mysqld.sock")
        self.error_log = self.base_dir / "error.log"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._binary = _server_binary() or _install_server()
        self._process: subprocess.Popen[bytes] | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the server (initialising the data directory the first time)
        and wait until it accepts connections."""
        if self._process is not None:
            return
        first_start = not self.datadir.exists()
        if first_start:
            self._initialise_datadir()
        self._process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        if first_start:
            self._create_schema()

    def stop(self) -> None:
        """Terminate the server by its PID and wait for it to be gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its data directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- access -------------------------------------------------------------

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        """An administrator connection over the Unix socket, autocommit on.
        The caller closes it (`with server.connect() as conn:`)."""
        return pymysql.connect(
            unix_socket=self.socket_path,
            user="root",
            password="",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def url(self, user: str = USER, password: str = PASSWORD, db: str = DATABASE) -> str:
        """The mysql:// URI of a WILLI_MAPPING_N pointing at this server over TCP."""
        return f"mysql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{quote(db, safe='')}"

    def socket_url(self, user: str = USER, password: str = PASSWORD, db: str = DATABASE) -> str:
        """The same, over the Unix socket (the unix_socket query parameter)."""
        return f"mysql://{quote(user, safe='')}:{quote(password, safe='')}@localhost/{quote(db, safe='')}?unix_socket={quote(self.socket_path)}"

    # -- internals ----------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            self._binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.base_dir / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--user=root",
            "--skip-name-resolve",
            # Small InnoDB files: a test database holds a handful of rows.
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
            "--skip-log-bin",
        ]

    def _initialise_datadir(self) -> None:
        self.datadir.mkdir(parents=True)
        command = [
            _install_db_binary(),
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--user=root",
        ]
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed:\n{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}")

    def _wait_ready(self) -> None:
        """Poll for a connection until the deadline; a server that exits or
        never answers fails the start with the tail of its error log."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"mariadbd exited at start:\n{self._log_tail()}")
            try:
                # Over TCP: PyMySQL leaks the socket of a failed Unix-socket
                # connect (the file is not there yet), which -W error catches.
                pymysql.connect(host=self.host, port=self.port, user="root", password="", connect_timeout=5).close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mariadbd not ready after {START_TIMEOUT}s:\n{self._log_tail()}") from None
                time.sleep(0.05)  # polling interval, not a wait for readiness

    def _create_schema(self) -> None:
        with self.connect() as conn, conn.cursor() as cursor:
            # Anonymous accounts would shadow willi@% for local connections.
            cursor.execute("DROP USER IF EXISTS ''@'localhost', ''@'127.0.0.1'")
            for statement in SETUP_SQL:
                cursor.execute(statement)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """The session's MariaDB server, started once and removed at the end.
    Wire it in tests/conftest.py with `from tests.support.mariadb import mariadb`."""
    server = MariaDB()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()

"""W6: W1 with a mysql:// mapping on a real MariaDB, so a lookup can cost a query.

One mariadbd is started for the whole benchmark (its own data directory in the
benchmark's temporary directory, a free port on 127.0.0.1, stopped by PID like
everything else). Before each run the `bench.test` row is pointed at that run's
sink. Two workloads: W6-cached sends every message to the same recipient (after
the first, every key is answered from Willi's cache on the reactor); W6-distinct
uses smtp-source's -N (a sequence number before every recipient), so each
recipient's full-address key is a cache miss: a query in the worker pool, then
the domain key from the cache. Willi's CPU is measured as in W1; MariaDB's is
not in "proxy CPU".
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from procs import Proc, Registry, free_port

DATABASE, USER, PASSWORD = "mail", "willi", "bench"
SETUP_SQL = (
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'",
    f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'127.0.0.1'",
    f"CREATE TABLE IF NOT EXISTS {DATABASE}.upstreams (pattern VARCHAR(255) PRIMARY KEY,"
    " server VARCHAR(1024) NOT NULL, tls_verify VARCHAR(8) NULL)",
)


@dataclass
class Database:
    proc: Proc
    port: int
    socket: str

    @property
    def url(self) -> str:
        return f"mysql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def route(self, pattern: str, server: str) -> None:
        import pymysql

        with pymysql.connect(unix_socket=self.socket, user="root", password="", autocommit=True,
                             connect_timeout=5) as conn, conn.cursor() as cursor:
            cursor.execute(f"REPLACE INTO {DATABASE}.upstreams VALUES (%s, %s, '0')", (pattern, server))


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next((str(Path(d, name)) for d in ("/usr/sbin", "/usr/bin")
                                            if Path(d, name).exists()), None)
        if found:
            return found
    raise SystemExit(f"bench: none of {names} found (make bench installs mariadb-server)")


def start_mariadb(registry: Registry, directory: Path, seconds: float = 60.0) -> Database:
    import subprocess

    import pymysql

    directory.mkdir(parents=True, exist_ok=True)
    datadir, sock = directory / "data", str(directory / "mysqld.sock")
    init = [_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={datadir}",
            "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve", "--user=root"]
    done = subprocess.run(init, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench: {init[0]} failed:\n{done.stdout}{done.stderr}")
    port = free_port()
    argv = [_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={datadir}", f"--socket={sock}",
            f"--pid-file={directory / 'mysqld.pid'}", f"--port={port}", "--bind-address=127.0.0.1",
            "--user=root", "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--skip-log-bin",
            "--max-connections=500"]
    proc = registry.start("mariadbd", argv, directory / "mariadbd.log")
    deadline = time.monotonic() + seconds
    while True:
        if not proc.alive():
            raise SystemExit(f"bench: mariadbd exited at start:\n{proc.log_tail()}")
        try:
            pymysql.connect(host="127.0.0.1", port=port, user="root", password="", connect_timeout=2).close()
            break
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: mariadbd not ready after {seconds:.0f}s:\n{proc.log_tail()}")
            time.sleep(0.1)
    with pymysql.connect(unix_socket=sock, user="root", password="", autocommit=True) as conn, \
            conn.cursor() as cursor:
        cursor.execute("DROP USER IF EXISTS ''@'localhost', ''@'127.0.0.1'")
        for statement in SETUP_SQL:
            cursor.execute(statement)
    return Database(proc, port, sock)

"""The configurations under test, and the sink they all deliver to.

Each configuration is started fresh for every run, from a template in
bench/configs/ rendered into that run's temporary directory, on ports free at
that moment, and is ready once its port answers with a `220` greeting. The
sink is a fresh `smtp-sink -c` per run, so its counter starts at zero.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import Proc, Registry, free_port, tool

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CONFIGS = BENCH / "configs"
RCPT_DOMAIN = "bench.test"
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
DEFAULT_WILLI_CMD = "{python} {willi} --config {config}"


@dataclass
class Options:
    """What the command line and BENCH_* variables set for the setups."""

    python: str = sys.executable
    willi_cmd: str = DEFAULT_WILLI_CMD
    willi_env: dict[str, str] = field(default_factory=dict)
    nginx_workers: str = "1"
    haproxy_threads: int = 1
    max_sessions: int = 9000
    certs: "Certs | None" = None  # W5: made once per benchmark by make_certs
    database: object = None  # W6: the benchmark's MariaDB (lookups.Database), started once
    baseline: Path | None = None  # willi-base: another revision's files (bench/trees.py)


@dataclass
class Running:
    """A proxy (or none, for `direct`) listening on port for one run."""

    name: str
    port: int
    proc: Proc | None
    command: str
    files: dict[str, str] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    def pids(self) -> list[int]:
        return self.proc.pids() if self.proc else []

    def cpu(self) -> float:
        return self.proc.cpu() if self.proc else 0.0


# --- helpers --------------------------------------------------------------------
def render(template: str, target: Path, values: dict[str, object]) -> str:
    text = (CONFIGS / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise SystemExit(f"bench: {template}: unfilled placeholders {left}")
    target.write_text(text)
    return text


def greets(port: int, timeout: float = 2.0) -> bool:
    """True when 127.0.0.1:port accepts and sends a 220 greeting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            data = b""
            while b"\r\n" not in data or not re.search(rb"(^|\r\n)\d{3} ", data):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            ok = data.startswith(b"220")
            sock.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


def wait_ready(name: str, port: int, proc: Proc | None, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{name} exited at start:\n{proc.log_tail()}")
        if greets(port):
            return
        time.sleep(0.05)
    tail = proc.log_tail() if proc else ""
    raise RuntimeError(f"{name} did not greet on 127.0.0.1:{port} within {seconds:.0f}s\n{tail}")


# --- W5: certificates and the STARTTLS relays ---------------------------------
@dataclass
class Certs:
    """A throwaway CA and one server certificate (CN localhost, SAN localhost and
    127.0.0.1), made with the openssl CLI in the benchmark's temporary directory."""

    ca: Path
    cert: Path
    key: Path
    commands: list[str]


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl = tool("openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", "/CN=Willi bench throwaway CA"],
        [openssl, "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise SystemExit(f"bench: {shlex.join(argv)} failed:\n{done.stderr}")
    return Certs(ca, cert, key, [shlex.join(argv) for argv in steps])


def start_tls_relay(registry: Registry, rundir: Path, mode: str, target: int,
                    opts: Options, resume: bool = False) -> tuple[Proc, int, str]:
    """bench/tlsrelay.py: `client` (plain in, STARTTLS out; with resume, offering
    the last session) or `server` (STARTTLS in, plain out to the sink); ready once
    it greets."""
    assert opts.certs is not None
    port = free_port()
    argv = [opts.python, str(BENCH / "tlsrelay.py"), mode, str(port), str(target)]
    if mode == "client":
        argv += ["--ca", str(opts.certs.ca), "--name", "localhost", *(["--resume"] if resume else [])]
    else:
        argv += ["--cert", str(opts.certs.cert), "--key", str(opts.certs.key)]
    proc = registry.start(f"tlsrelay-{mode}", argv, rundir / f"tlsrelay-{mode}.log")
    wait_ready(f"tlsrelay {mode}", port, proc)
    return proc, port, shlex.join(argv)


# --- the sink -------------------------------------------------------------------
def sink_argv(port: int) -> list[str]:
    argv = [tool("smtp-sink"), "-c", "-m", "12000", "-h", "sink.bench.test"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # smtp-sink insists on dropping root
    return argv + [f"127.0.0.1:{port}", "4096"]


def start_sink(registry: Registry, rundir: Path) -> tuple[Proc, int, str]:
    port = free_port()
    argv = sink_argv(port)
    proc = registry.start("smtp-sink", argv, rundir / "sink.log")
    wait_ready("smtp-sink", port, proc)
    return proc, port, shlex.join(argv)


def sink_count(proc: Proc) -> int:
    """The sink's message counter: the last `mesg=N` it printed (-c)."""
    if proc.log is None or not proc.log.exists():
        return 0
    with open(proc.log, "rb") as fh:
        fh.seek(max(0, fh.seek(0, 2) - 400))
        found = re.findall(rb"mesg=(\d+)", fh.read())
    return int(found[-1]) if found else 0


# --- the proxies ----------------------------------------------------------------
def start_direct(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    return Running("direct", sink_port, None, "(none: smtp-source talks to smtp-sink)")


def start_haproxy(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    port = free_port()
    cfg = rundir / "haproxy.cfg"
    text = render("haproxy.cfg", cfg, {
        "PORT": port, "SINK_PORT": sink_port, "DIR": rundir,
        "THREADS": opts.haproxy_threads, "MAXCONN": opts.max_sessions + 900,
    })
    argv = [tool("haproxy"), "-db", "-f", str(cfg)]
    proc = registry.start("haproxy", argv, rundir / "haproxy.log")
    wait_ready("haproxy", port, proc)
    return Running("haproxy", port, proc, shlex.join(argv), {"haproxy.cfg": text})


def start_nginx(registry: Registry, rundir: Path, sink_port: int, opts: Options,
                tls: bool = False) -> Running:
    port, auth_port = free_port(), free_port()
    cfg = rundir / "nginx.conf"
    mail_tls = "# no STARTTLS (W5 puts it here)"
    if tls:  # W5: STARTTLS towards the client; nginx's mail proxy speaks plaintext upstream
        assert opts.certs is not None
        mail_tls = (f"starttls on;\n        ssl_certificate {opts.certs.cert};\n"
                    f"        ssl_certificate_key {opts.certs.key};")
    text = render("nginx.conf", cfg, {
        "MAIL_TLS": mail_tls,
        "PORT": port, "AUTH_PORT": auth_port, "SINK_PORT": sink_port, "DIR": rundir,
        "MODULE": NGINX_MAIL_MODULE, "WORKERS": opts.nginx_workers,
        "CONNECTIONS": opts.max_sessions + 900, "NOFILE": opts.max_sessions + 1000,
        "USER": getpass.getuser(),
    })
    argv = [tool("nginx"), "-p", str(rundir), "-c", str(cfg), "-e", str(rundir / "nginx-error.log")]
    proc = registry.start("nginx", argv, rundir / "nginx.log")
    wait_ready("nginx", port, proc)
    return Running("nginx", port, proc, shlex.join(argv), {"nginx.conf": text},
                   [rundir / "nginx-error.log"])


def start_willi(registry: Registry, rundir: Path, sink_port: int, opts: Options,
                extra: dict[str, str] | None = None, name: str = "willi",
                tree: Path = REPO) -> Running:
    port = free_port()
    values = {"PORT": port, "SINK_PORT": sink_port, "DIR": rundir}
    render("upstreams.csv", rundir / "upstreams.csv", values)
    text = render("willi.env", rundir / "willi.env", values)
    overrides = {**(extra or {}), **opts.willi_env}
    if overrides:
        text += "# from the driver (--willi-env / the configuration)\n"
        text += "".join(f"{key}={value}\n" for key, value in overrides.items())
        (rundir / "willi.env").write_text(text)
    argv = shlex.split(opts.willi_cmd.format(
        python=opts.python, willi=tree / "willi.py", config=rundir / "willi.env"))
    # Only the env file configures Willi: WILLI_* from the caller's shell are dropped.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WILLI_")}
    proc = registry.start(name, argv, rundir / "willi.log", env=env, cwd=tree,
                          skip_comm=("py-spy",))
    wait_ready(name, port, proc)
    return Running(name, port, proc, shlex.join(argv), {"willi.env": text})


def start_willi_w2(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    return start_willi(registry, rundir, sink_port, opts, {"WILLI_WORKERS": "2"}, "willi-w2")


def start_willi_nopool(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    """W1/W2 like for like with nginx: a new upstream connection for every client one."""
    return start_willi(registry, rundir, sink_port, opts, {"WILLI_UPSTREAM_POOL_IDLE": "0"},
                       "willi-nopool")


SETUPS = {
    "direct": start_direct,
    "haproxy": start_haproxy,
    "nginx": start_nginx,
    "willi": start_willi,
    "willi-w2": start_willi_w2,
    "willi-nopool": start_willi_nopool,
}
DEFAULT_SETUPS = ["direct", "haproxy", "nginx", "willi", "willi-w2", "willi-nopool", "willi-noresume",
                  "willi-resume", "willi-info", "willi-pass"]
WILLI_SETUPS = ("willi", "willi-w2")  # W6 and W7 measure Willi's own mappings: Willi only
POOL_WORKLOADS = ("W1", "W2")  # where willi-nopool runs: the upstream pool's effect
LOG_WORKLOADS = ("W1",)  # where willi-info runs: what logging at info costs
PASS_WORKLOADS = ("W3",)  # where willi-pass runs: what the strict body checks cost

# W5 (STARTTLS on both sides): what each chosen configuration becomes. HAProxy
# cannot speak STARTTLS (it only terminates TLS from the first byte), so it is
# not run; `direct` becomes `direct-tls`, the two relays back to back.
TLS_NAMES = {"direct": "direct-tls", "nginx": "nginx", "willi": "willi", "willi-w2": "willi-w2",
             "willi-nopool": "willi-nopool", "willi-noresume": "willi-noresume",
             "willi-resume": "willi-resume"}
# TLS session resumption (issue 12 item 6), W5-W1 only, the pool off so every
# client connection costs Willi two handshakes: `willi-nopool` resumes towards
# the server relay (the default) while clients do full handshakes,
# `willi-noresume` does full handshakes on both sides (WILLI_UPSTREAM_TLS_RESUME=off),
# `willi-resume` resumes on both (the client relay offers its last session).
RESUME_SETUPS = {
    "willi-nopool": {"WILLI_UPSTREAM_POOL_IDLE": "0"},
    "willi-noresume": {"WILLI_UPSTREAM_POOL_IDLE": "0", "WILLI_UPSTREAM_TLS_RESUME": "off"},
    "willi-resume": {"WILLI_UPSTREAM_POOL_IDLE": "0"},
}
CLIENT_RESUME_SETUPS = ("willi-resume",)
RESUME_WORKLOADS = ("W5-W1",)


def start_willi_info(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    """Willi logging at info (a recipient and a transaction line per message,
    plus session lines), beside the default warning: what the logs cost in W1."""
    return start_willi(registry, rundir, sink_port, opts, {"WILLI_LOG_LEVEL": "info"}, "willi-info")


SETUPS["willi-info"] = start_willi_info  # W1 only (LOG_WORKLOADS)


def start_willi_pass(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    """Willi with `WILLI_BARE_LF=pass`: the body's end found, its bytes not
    checked (issue 12 item 4's pass mode), beside the default strict checks."""
    return start_willi(registry, rundir, sink_port, opts, {"WILLI_BARE_LF": "pass"}, "willi-pass")


SETUPS["willi-pass"] = start_willi_pass  # W3 only (PASS_WORKLOADS)


def start_willi_base(registry: Registry, rundir: Path, sink_port: int, opts: Options) -> Running:
    """The baseline revision (--baseline, bench/trees.py) with this run's env file:
    "not slower than BENCHMARKS.md" asked of the same machine on the same day."""
    if opts.baseline is None:
        raise RuntimeError("willi-base needs --baseline (a git revision) or a BENCHMARKS.md "
                           "that names its commit")
    return start_willi(registry, rundir, sink_port, opts, None, BASELINE, tree=opts.baseline)


BASELINE = "willi-base"
SETUPS[BASELINE] = start_willi_base  # W1 to W4 only: the workloads every revision can run
SETUPS["willi-noresume"] = SETUPS["willi-resume"] = start_willi_nopool  # W5 names; see RESUME_SETUPS


def tls_willi_env(opts: Options) -> dict[str, str]:
    assert opts.certs is not None
    return {"WILLI_TLS_CERT": str(opts.certs.cert), "WILLI_TLS_KEY": str(opts.certs.key),
            "WILLI_UPSTREAM_STARTTLS": "required", "WILLI_UPSTREAM_TLS_CA": str(opts.certs.ca)}


def start_tls_setup(name: str, registry: Registry, rundir: Path, upstream_port: int,
                    opts: Options) -> Running:
    """A W5 configuration; upstream_port is the server relay's (plain sink's for nginx)."""
    if name == "direct-tls":
        return Running(name, upstream_port, None,
                       "(none: the client relay talks STARTTLS to the server relay)")
    if name == "nginx":
        return start_nginx(registry, rundir, upstream_port, opts, tls=True)
    extra = {**tls_willi_env(opts), **RESUME_SETUPS.get(name, {})}
    if name == "willi-w2":
        extra["WILLI_WORKERS"] = "2"
    return start_willi(registry, rundir, upstream_port, opts, extra, name)


def log_problems(running: Running, limit: int = 8) -> tuple[int, list[str]]:
    """Warning and error lines a proxy logged during the run (count, first few)."""
    paths = [running.proc.log] if running.proc and running.proc.log else []
    lines = [
        line
        for path in paths + running.logs if path.exists()
        for line in path.read_text(errors="replace").splitlines()
        if re.search(r"\b(warn|warning|error|alert|crit|emerg|Traceback)\b", line, re.I)
    ]
    return len(lines), lines[:limit]

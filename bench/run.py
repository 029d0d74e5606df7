"""`make bench`: Willi against nginx's mail proxy and HAProxy, side by side.

    python bench/run.py                         # the full benchmark, rewrites BENCHMARKS.md
    BENCH_SCALE=0.05 python bench/run.py        # a quick one (1,000 messages in W1)
    python bench/run.py --only willi --workload W1 --runs 1
    python bench/run.py --only willi --workload W1 --runs 1 \\
        --willi-cmd 'py-spy record -o /tmp/w1.svg -- {python} {willi} --config {config}'
    python bench/run.py --only willi,willi-w2 --workload W1,W2 --willi-env WILLI_BARE_LF=pass
    python bench/run.py --only willi --workload W1,W2 --baseline 310ece1 --runs 5

Every configuration is started fresh for each run, and the configurations are
alternated run by run (A B C D A B C D ...) to spread the machine's noise.
`willi-base` is another revision of Willi run beside this one in W1 to W4
(--baseline; a full run takes the commit the current BENCHMARKS.md measured), so
"slower than BENCHMARKS.md" is measured on this machine today, not read off
a file written on another day.
All traffic is on 127.0.0.1; every load is bounded in count (smtp-source -m,
a fixed number of idle sessions) and in time (BENCH_RUN_TIMEOUT); every
process is stopped by PID, also on an error or Ctrl-C. See bench/workloads.py
for what makes a run pass, and BENCHMARKS.md's Method section for the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procs
import report
import setups
import trees
import workloads
from procs import Registry
from workloads import WORKLOADS, Result, Workload

OUT = setups.REPO / "bench-out"


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--only", "--configs", dest="configs", metavar="A,B",
                   default=env("BENCH_CONFIGS", ",".join(setups.DEFAULT_SETUPS)),
                   help=f"configurations, from: {', '.join(setups.SETUPS)} (BENCH_CONFIGS)")
    p.add_argument("--workload", metavar="W1,W2", default=env("BENCH_WORKLOADS", "all"),
                   help="workloads: W1 W2 W3 W4 (= W4-2000,W4-9000) W5 W6 W7 (= W7-10k,W7-100k,"
                        "W7-1M), or all (BENCH_WORKLOADS)")
    p.add_argument("--runs", type=int, default=int(env("BENCH_RUNS", "3")),
                   help="runs of each configuration (BENCH_RUNS, 3)")
    p.add_argument("--scale", type=float, default=float(env("BENCH_SCALE", "1")),
                   help="multiplies message and idle-session counts (BENCH_SCALE, 1)")
    p.add_argument("--timeout", type=float, default=float(env("BENCH_RUN_TIMEOUT", "300")),
                   help="seconds one run's load may take before it is a failed run (300)")
    p.add_argument("--python", default=env("BENCH_PYTHON", sys.executable),
                   help="the Python that runs Willi and the idle client (this one)")
    p.add_argument("--willi-cmd", default=env("BENCH_WILLI_CMD", setups.DEFAULT_WILLI_CMD),
                   help="how to start Willi, with {python} {willi} {config} (BENCH_WILLI_CMD); "
                        "wrap it in py-spy or `-m cProfile -o FILE` to profile")
    p.add_argument("--willi-env", action="append", default=[], metavar="KEY=VALUE",
                   help="add or override a key of Willi's env file (repeatable)")
    p.add_argument("--baseline", default=env("BENCH_BASELINE", "auto"), metavar="REV",
                   help="a git revision run beside this tree as `willi-base` in W1 to W4: auto "
                        "(the default: in a run that rewrites --output, the commit that file "
                        "names as measured; else none), none, or a revision (BENCH_BASELINE)")
    p.add_argument("--nginx-workers", default=env("BENCH_NGINX_WORKERS", "1"))
    p.add_argument("--haproxy-threads", type=int, default=int(env("BENCH_HAPROXY_THREADS", "1")))
    p.add_argument("--output", type=Path, default=setups.REPO / "BENCHMARKS.md")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                   help="rewrite --output (default: only for a full run: every default "
                        "configuration and workload, scale 1, 3 runs or more)")
    p.add_argument("--json", type=Path, default=OUT / "last-run.json",
                   help="every run's numbers (default bench-out/last-run.json)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    return p.parse_args(argv)


def pick_workloads(text: str) -> list[Workload]:
    if text == "all":
        return list(WORKLOADS)
    wanted = [w.strip().upper() for w in text.split(",") if w.strip()]
    def named(wl: Workload, w: str) -> bool:
        key = wl.key.upper()
        return key == w or key.startswith(w + "-")

    chosen = [wl for wl in WORKLOADS if any(named(wl, w) for w in wanted)]
    unknown = [w for w in wanted if not any(named(wl, w) for wl in WORKLOADS)]
    if unknown or not chosen:
        raise SystemExit(f"bench: unknown workload(s) {unknown}; known: {[w.key for w in WORKLOADS]}")
    return chosen


def setups_for(wl: Workload, chosen: list[str]) -> list[str]:
    """The configurations a workload runs: W4 has no `direct`, W5 its TLS variants,
    W6 and W7 Willi's alone, willi-nopool runs W1 and W2 only, willi-info W1 only,
    willi-pass W3 only."""
    if wl.tls:
        return [setups.TLS_NAMES[s] for s in chosen if s in setups.TLS_NAMES
                and (s not in setups.RESUME_SETUPS or wl.key in setups.RESUME_WORKLOADS)]
    chosen = [s for s in chosen if s not in setups.RESUME_SETUPS or s == "willi-nopool"]
    if wl.mapping != "csv" or wl.kind == "table":
        return [s for s in chosen if s in setups.WILLI_SETUPS]
    if wl.key not in setups.POOL_WORKLOADS:
        chosen = [s for s in chosen if s != "willi-nopool"]
    if wl.key not in setups.LOG_WORKLOADS:
        chosen = [s for s in chosen if s != "willi-info"]
    if wl.key not in setups.PASS_WORKLOADS:
        chosen = [s for s in chosen if s != "willi-pass"]
    return [s for s in chosen if not (wl.kind == "idle" and s == "direct")]


def per_run_options(wl: Workload, opts: setups.Options, rundir: Path, sink_port: int,
                    scale: float) -> setups.Options:
    """W6 routes through MariaDB, W7 through a big csv: table written for the run."""
    if wl.mapping == "mysql":
        db = opts.database
        db.route(setups.RCPT_DOMAIN, f"127.0.0.1:{sink_port}")
        extra = {"WILLI_MAPPING_1": db.url}
    elif wl.kind == "table":
        import tables

        tables.write_table(rundir / "table.csv", wl.count(scale), sink_port)
        extra = {"WILLI_MAPPING_1": f"csv:{rundir / 'table.csv'}", "WILLI_LOG_LEVEL": "info"}
    else:
        return opts
    return dataclasses.replace(opts, willi_env={**extra, **opts.willi_env})


def pick_setups(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in setups.SETUPS or s == setups.BASELINE]
    if unknown or not chosen:
        raise SystemExit(f"bench: unknown configuration(s) {unknown}; known: "
                         f"{[s for s in setups.SETUPS if s != setups.BASELINE]} "
                         f"({setups.BASELINE} comes with --baseline)")
    return chosen


def with_baseline(chosen: list[str], commit: str | None) -> list[str]:
    """willi-base right after willi (or last), when there is a baseline and Willi runs."""
    if commit is None or not any(s.startswith("willi") for s in chosen):
        return chosen
    at = chosen.index("willi") + 1 if "willi" in chosen else len(chosen)
    return chosen[:at] + [setups.BASELINE] + chosen[at:]


# --- one run ------------------------------------------------------------------------
def run_one(registry: Registry, wl: Workload, setup: str, number: int, opts: setups.Options,
            args: argparse.Namespace, tmp: Path) -> Result:
    rundir = tmp / f"{wl.key}-{setup}-{number}"
    rundir.mkdir()
    res = Result(wl.key, setup, number, unit=wl.unit)
    sink = running = None
    helpers: list[procs.Proc] = []
    try:
        sink, sink_port, res.commands["sink"] = setups.start_sink(registry, rundir)
        if wl.tls:
            running = tls_setup(registry, wl, setup, rundir, sink_port, opts, res, helpers)
        else:
            running = setups.SETUPS[setup](registry, rundir, sink_port,
                                           per_run_options(wl, opts, rundir, sink_port, args.scale))
        res.commands["proxy"] = running.command
        res.commands.update(running.files)
        if wl.kind == "smtp":
            workloads.measure_smtp(registry, wl, running, sink, res, args.scale, args.timeout, rundir,
                                   port=res_port(res, running), helpers=helpers)
        elif wl.kind == "table":
            workloads.measure_table(registry, wl, running, sink, res, args.scale, args.timeout,
                                    rundir, opts.python, sink_port)
        else:
            workloads.measure_idle(registry, wl, running, sink, res, args.scale, args.timeout,
                                   rundir, opts.python)
        if running.proc is not None and not running.proc.alive():
            res.ok, res.error = False, (res.error or "") + f" the proxy died:\n{running.proc.log_tail()}"
        for helper in helpers:
            if not helper.alive():
                res.ok, res.error = False, (res.error or "") + f" {helper.name} died:\n{helper.log_tail()}"
    except RuntimeError as exc:
        res.ok, res.error = False, str(exc)
    finally:
        if running is not None and running.proc is not None:
            registry.stop(running.proc)
        for helper in helpers:
            registry.stop(helper)
        if sink is not None:
            registry.stop(sink)
    if running is not None:
        res.log_problems, res.log_excerpt = setups.log_problems(running)
    if not res.ok:
        keep = OUT / "failed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{rundir.name}"
        shutil.copytree(rundir, keep, dirs_exist_ok=True)
        res.error += f" (logs kept in {keep.relative_to(setups.REPO)})"
    return res


def tls_setup(registry: Registry, wl: Workload, setup: str, rundir: Path, sink_port: int,
              opts: setups.Options, res: Result, helpers: list) -> setups.Running:
    """W5: sink <- server relay (STARTTLS) <- proxy (STARTTLS both ways) <- client relay.

    nginx's mail proxy has no STARTTLS towards its backend, so it gets the plain sink
    and only the client side is TLS for it. `direct-tls` is the two relays back to back.
    """
    upstream = sink_port
    if setup != "nginx":
        proc, upstream, res.commands["tls server relay"] = setups.start_tls_relay(
            registry, rundir, "server", sink_port, opts)
        helpers.append(proc)
    running = setups.start_tls_setup(setup, registry, rundir, upstream, opts)
    proc, port, res.commands["tls client relay"] = setups.start_tls_relay(
        registry, rundir, "client", running.port, opts, resume=setup in setups.CLIENT_RESUME_SETUPS)
    helpers.append(proc)
    res.commands["load port"] = str(port)
    return running


def res_port(res: Result, running: setups.Running) -> int:
    return int(res.commands.pop("load port", running.port))


def progress(i: int, total: int, res: Result) -> None:
    if res.ok:
        cpu = "" if res.setup.startswith("direct") or res.unit in ("kB/session", "ms stall") else (
            f", proxy CPU {res.cpu_per_unit:.3f} {'s/GB' if res.unit == 'MB/s' else 'ms/msg'}")
        detail = f"{res.rate:,.2f} {res.unit}{cpu}, {res.wall:.1f}s"
    else:
        detail = f"FAILED: {res.error}"
    warn = f" [{res.log_problems} warning lines]" if res.log_problems else ""
    print(f"[{i}/{total}] {res.workload} {res.setup} run {res.run}: {detail}{warn}",
          file=sys.stderr, flush=True)


# --- facts about the machine and the tools ----------------------------------------------
def first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]


def facts(args: argparse.Namespace, chosen: list[str], baseline: dict[str, str]) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    return {
        "machine": f"{os.cpu_count()} cores ({model.group(1) if model else 'unknown'}), "
                   f"{int(mem.group(1)) // 1024 // 1024 if mem else '?'} GiB, "
                   f"Linux {platform.release()}",
        "python (Willi)": first_line([args.python, "--version"]),
        "haproxy": first_line([procs.tool("haproxy"), "-v"]),
        "nginx": first_line([procs.tool("nginx"), "-v"]) + f" with {setups.NGINX_MAIL_MODULE}",
        "postfix (smtp-source, smtp-sink)": first_line([procs.tool("postconf"), "-d", "mail_version"]),
        # The commit, never a tag name: bench/trees.py reads it back as the next baseline.
        "willi": first_line([args.python, str(setups.REPO / "willi.py"), "--version"])
                 + " at " + first_line(["git", "-C", str(setups.REPO), "describe", "--always", "--dirty",
                                      "--exclude=*"]),
        **baseline,
        "tls (W5)": first_line([procs.tool("openssl"), "version"]) + "; bench/tlsrelay.py on "
                    + first_line([args.python, "-c", "import ssl, sys; print(sys.version.split()[0], "
                                  "ssl.OPENSSL_VERSION)"]),
        "runs": f"{args.runs} of each configuration, alternated run by run "
                f"({' '.join(chosen)} {' '.join(chosen)} ...)",
        "scale": f"BENCH_SCALE={args.scale:g}" + ("" if args.scale == 1 else " (NOT the full counts)"),
        "command": "`" + shlex.join(["python", "bench/run.py", *sys.argv[1:]]) + "`"
                   + (" (via `make bench`)" if os.environ.get("MAKELEVEL") else ""),
    }


def method(results: list[Result], wls: list[Workload], opts: setups.Options,
           args: argparse.Namespace) -> list[str]:
    out = [
        "How to run it: `make bench` (installs Postfix's smtp-source/smtp-sink, haproxy, nginx "
        "and libnginx-mod-mail (and openssl, for W5's certificates) when missing, then runs "
        "`python bench/run.py`; about 14 minutes on a 2-core machine, W5 to W7 included). A quick check: `BENCH_SCALE=0.05 make bench` (does not rewrite this file "
        "unless `BENCH_ARGS=--write`). One configuration and workload, e.g. to profile: "
        "`.venv/bin/python bench/run.py --only willi --workload W1 --runs 1 "
        "--willi-cmd 'py-spy record -o w1.svg -- {python} {willi} --config {config}'`. "
        "`--help` lists the rest.",
        "",
        "- Each run starts a fresh `smtp-sink -c` and a fresh proxy on free ports of 127.0.0.1, "
        "waits for its `220`, runs the load, reads the sink's counter (`mesg=N`, which -c "
        "prints after every message), then stops both by PID (SIGTERM, then SIGKILL for "
        "whatever of the process tree is left).",
        "- A run passes when every smtp-source exited 0 (it exits 1 on any reply that is not "
        "the expected 2xx/354 and on a lost connection), the sink counted exactly the "
        "messages sent, and the proxy still runs. W4 passes when every session got its "
        "`220` and `250` and none was dropped while idle.",
        f"- nginx: {opts.nginx_workers} worker process(es) and HAProxy: {opts.haproxy_threads} "
        "thread(s) (BENCH_NGINX_WORKERS, BENCH_HAPROXY_THREADS), like Willi's one reactor "
        "process (WILLI_WORKERS=1, the default): the machine's other core is taken by "
        "smtp-source and smtp-sink. `willi-w2` (WILLI_WORKERS=2) runs beside it in every "
        "workload, for what a second process buys on the same two cores.",
        "- nginx's `auth_http` is answered by a location of the same nginx (same worker): "
        "`Auth-Status: OK`, `Auth-Server: 127.0.0.1`, `Auth-Port: <sink>`; nginx asks it once "
        "per session, after the first RCPT, then replays HELO/MAIL/RCPT to the sink and "
        "copies bytes from then on. `xclient off` in nginx and `WILLI_XCLIENT=off` in Willi: "
        "neither tells the sink the client's address (smtp-sink would accept XCLIENT).",
        "- Willi: `WILLI_LOG_LEVEL=warning` (a line per transaction at `info` would measure "
        "the logger), a CSV mapping routing `bench.test` to the sink, connection limits "
        "raised to 20,000 for W4. WILLI_* variables of the calling shell are not passed on; "
        "`--willi-env KEY=VALUE` adds keys.",
        "- W2: smtp-source has no \"messages per connection\" option; `-d` keeps a session's "
        "connection for all the messages of that process. So W2 runs 2 lanes side by side, "
        "each a sequence of `smtp-source -d -s 25 -m 250`: 50 sessions in flight and 10 "
        "messages per connection on average (25 connections share 250 messages).",
        "- `willi-base` (W1 to W4): the revision of Willi the previous BENCHMARKS.md measured "
        "(the commit its `willi:` line names; `--baseline REV` or BENCH_BASELINE picks "
        "another, `none` none), run from a `git archive` of that commit with the same env file "
        "and alternated with `willi`. A number in an old file was measured on the machine as "
        "it was that day (this VM has measured one commit 1.6 times slower a week apart), so "
        "*Against the baseline* answers \"slower than before?\" from runs of the same hour.",
        "- W3: smtp-source writes each message with one blocking write, so its 4 sessions "
        "send bodies one at a time; smtp-sink, which reads them, is the ceiling "
        "(see `direct`). MB = 10^6 bytes, GB = 10^9 bytes of payload.",
        "- W4: a Python client (bench/idle.py) opens the sessions non-blocking, at most 200 "
        "at a time between connect and the end of the EHLO reply, then holds them. Memory "
        "per session = (VmRSS of the proxy's processes with the sessions idle − VmRSS "
        "before the first one) / sessions, in /proc's kB (1,024 bytes); nginx is master + "
        "worker. HAProxy opens a sink connection per session (the greeting and EHLO come "
        "from the sink, whose accepting makes HAProxy's \"seconds to open all\" slow); nginx "
        "and Willi answer both themselves. `direct` has no proxy and is not run. Summing "
        "VmRSS counts pages shared by several processes more than once; the difference "
        "before/after does not.",
        "- W5 (STARTTLS on both sides): smtp-source and smtp-sink speak no TLS, so "
        "bench/tlsrelay.py (asyncio + the ssl module, one process per side) sits at each end: "
        "in client mode in front of smtp-source (it passes the proxy's greeting on, sends EHLO "
        "and STARTTLS, verifies the certificate against the CA, then copies bytes, so "
        "smtp-source's EHLO and transaction travel inside TLS) and in server mode in front of "
        "smtp-sink (it greets, offers STARTTLS, and after the handshake connects the sink, "
        "swallows its greeting and copies bytes). Configurations: `direct-tls` (client relay → "
        "server relay → sink), `willi` (client relay → Willi with `WILLI_TLS_CERT`/`_KEY` → "
        "`WILLI_UPSTREAM_STARTTLS=required`, verified with `WILLI_UPSTREAM_TLS_CA` → server "
        "relay → sink), `nginx` (client relay → nginx `starttls on` → the plain sink: nginx's "
        "mail proxy speaks plaintext to its backend, so it does one TLS side less). HAProxy "
        "is not run: it cannot speak STARTTLS. W5-W1 runs 5,000 messages and W5-W3 32 (not "
        "W1's 20,000 and W3's 100) to keep the whole benchmark near 8 minutes: every W5-W1 "
        "message costs a full TLS handshake in the client relay and the proxy, and in the "
        "server relay too for `direct-tls` (Willi reuses its upstream connections, "
        "`WILLI_UPSTREAM_POOL_IDLE`). TLS session resumption (W5-W1 only, the pool off, so "
        "each message costs Willi two handshakes, one per side): `willi-nopool` resumes "
        "towards the server relay (`WILLI_UPSTREAM_TLS_RESUME=on`, the default) while the "
        "client relay does full handshakes, `willi-noresume` does full handshakes on both "
        "sides (`WILLI_UPSTREAM_TLS_RESUME=off`), `willi-resume` resumes on both (the client "
        "relay, `--resume`, offers the session its last connection left, as a client with a "
        "session cache does); each relay's log ends with its handshakes and how many were "
        "resumed. Handshakes per second at Willi = 2 × msg/s there. Certificates: a throwaway ECDSA P-256 CA "
        "and server certificate (CN and SAN localhost, SAN IP 127.0.0.1) made with the "
        "openssl CLI in the run's temporary directory and removed with it; no key material "
        "is in the repository. Why not stunnel (the first choice): stunnel 5.68's server "
        "mode with `protocol = smtp` waits 200 ms on every connection to see whether the "
        "client speaks first (its RFC 2487 detection; 5 sequential messages took 1.08 s), "
        "which caps a 50-session connection-per-message load at 250 msg/s, and its thread per "
        "connection cost about 7 ms of CPU per connection on this VM (tlsrelay.py: about 2 ms).",
        "- `willi-pass` (W3 only): Willi with `WILLI_BARE_LF=pass`: the end of data is "
        "still found (a search for a dot first, then for CRLF.CRLF from it), the bytes are "
        "not checked for bare CR, bare LF or NUL: what the default strict checks cost per GB.",
        "- `willi-info` (W1 only): Willi with `WILLI_LOG_LEVEL=info`, so every message "
        "writes its recipient and transaction lines and every session its connect and "
        "disconnect lines (through the log writer thread): what the logs cost beside the "
        "default `warning`.",
        "- `willi-nopool` (W1 and W2 only): Willi with `WILLI_UPSTREAM_POOL_IDLE=0`, so "
        "every client connection costs an upstream connection as it does for nginx and "
        "HAProxy: the per-connection cost compared like for like. Willi's default keeps idle "
        "upstream connections for 5 s, so the sink sees fewer connections.",
        "- W6: W1 (10,000 messages at scale 1) with `WILLI_MAPPING_1=mysql://...` on a "
        "MariaDB started once for the benchmark (bench/lookups.py: its own data directory, "
        "a free port, stopped by PID); before each run the `bench.test` row is pointed at "
        "that run's sink. W6-cached: every message to `rcpt@bench.test`, so after the first "
        "every key is answered from Willi's cache on the reactor. W6-distinct: smtp-source "
        "`-N` puts a sequence number before every recipient, so each recipient's full-address "
        "key is a cache miss: a query in the worker pool (then `bench.test` from the cache). "
        "Willi and willi-w2 only; MariaDB's CPU is not in \"proxy CPU\". Target (issue 12): "
        "W6-distinct ≥ 0.7× CSV W1.",
        "- W7: csv: tables of 10,000, 100,000 and 1,000,000 rows (customer domains over 50 "
        "servers, and `bench.test` to the sink), see bench/tables.py and the note above the "
        "W7 tables. The rewrite is written beside the table and renamed into place.",
        f"- Every process runs with RLIMIT_NOFILE raised to the hard limit "
        f"({procs.raise_nofile():,}); it bounds W4 (HAProxy holds two sockets per session).",
        "",
        "The commands and configurations of the first run of each (ports differ per run):",
        "",
    ]
    seen: set[str] = set()
    for res in results:
        for key in ("sink", "load"):
            tag = f"{key}:{res.workload}" if key == "load" else key
            if key in res.commands and tag not in seen and (key == "sink" or res.setup.startswith("direct")
                                                            or res.workload.startswith("W4")):
                seen.add(tag)
                label = "smtp-sink" if key == "sink" else f"{res.workload} load"
                out.append(f"- {label}: `{res.commands[key]}`")
    if opts.certs is not None:
        out.append("- W5 certificates: " + "; ".join(f"`{c}`" for c in opts.certs.commands))
    for res in results:
        name = res.setup + (" (W5, TLS)" if res.workload.startswith("W5") and res.setup != "direct-tls"
                            else "")
        if name in seen or "proxy" not in res.commands:
            continue
        seen.add(name)
        out.append(f"- {name}: `{res.commands['proxy']}`")
        for name, text in res.commands.items():
            if name not in ("sink", "load", "proxy"):
                out += ["", f"  <details><summary>{name}</summary>", "", "  ```",
                        *("  " + line for line in text.rstrip().splitlines()), "  ```", "",
                        "  </details>", ""]
    return out


# --- the whole benchmark --------------------------------------------------------------
def main(argv: list[str]) -> int:
    args = arguments(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop everything, even when started in
        signal.signal(sig, signal.default_int_handler)  # the background (SIGINT ignored there)
    chosen, wls = pick_setups(args.configs), pick_workloads(args.workload)
    procs.raise_nofile()
    opts = setups.Options(
        python=args.python, willi_cmd=args.willi_cmd,
        willi_env=dict(kv.split("=", 1) for kv in args.willi_env),
        nginx_workers=args.nginx_workers, haproxy_threads=args.haproxy_threads,
    )
    full = (set(setups.DEFAULT_SETUPS) <= set(chosen) and len(wls) == len(WORKLOADS)
            and args.scale == 1 and args.runs >= 3)
    write = full if args.write is None else args.write
    # auto: only a run that rewrites the file compares with the tree it measured
    commit, chosen_how = ((None, "") if args.baseline == "auto" and not write
                          else trees.baseline_rev(args.baseline, args.output))
    chosen = with_baseline(chosen, commit)
    plan = [(wl, n, s) for wl in wls if wl.kind != "skip" for n in range(1, args.runs + 1)
            for s in setups_for(wl, chosen)]
    tmp = Path(tempfile.mkdtemp(prefix="willi-bench-"))
    baseline: dict[str, str] = {}
    registry, results = Registry(), []
    begin, started = time.monotonic(), datetime.datetime.now().astimezone()
    interrupted = False
    try:  # from here on tmp is removed whatever happens, a failed preparation too
        if commit is not None and setups.BASELINE in chosen:
            opts.baseline = trees.extract(commit, tmp / "baseline")
            baseline = {f"baseline ({setups.BASELINE})": f"willi {trees.version_of(opts.baseline)} "
                                                         f"at {commit[:7]}: {chosen_how}"}
        if any(wl.tls for wl in wls):  # a throwaway CA and key, removed with tmp
            opts.certs = setups.make_certs(tmp / "tls")
        if any(wl.mapping == "mysql" and setups_for(wl, chosen) for wl in wls):
            import lookups

            opts.database = lookups.start_mariadb(registry, tmp / "mariadb")
        for i, (wl, number, setup) in enumerate(plan, 1):
            res = run_one(registry, wl, setup, number, opts, args, tmp)
            results.append(res)
            progress(i, len(plan), res)
            time.sleep(args.pause)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; stopping everything", file=sys.stderr)
    finally:
        registry.stop_all()
        if args.keep:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - begin
    meta = {"date": started.strftime("%Y-%m-%d %H:%M %Z"),
            "duration": f"{elapsed / 60:.1f} minutes", "facts": facts(args, chosen, baseline)}
    scan = None
    if any(wl.key == "W3" for wl in wls) and not interrupted:
        import scanner

        scan = scanner.table(scanner.run_all())
    text = report.render(meta, wls, chosen, results, method(results, wls, opts, args),
                         "willi" if "willi" in chosen else chosen[-1], report.history_of(args.output),
                         scan, base=setups.BASELINE)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": [dataclasses.asdict(r) for r in results]},
                                    indent=1))
    if write and not interrupted:
        args.output.write_text(text)
        print(f"bench: wrote {args.output} ({elapsed / 60:.1f} minutes)", file=sys.stderr)
    else:
        print(text.split("\n## Method", 1)[0])
        print(f"bench: {args.output.name} left as it is (a partial or quick run; --write to "
              f"rewrite it). Numbers in {args.json}", file=sys.stderr)
    return 1 if interrupted or any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

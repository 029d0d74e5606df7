"""Instructions per message: Willi's own CPU work counted, not timed.

`make bench` times Willi against nginx and HAProxy on a shared machine, where
runs of the same code differ by 10-20% (other tenants, which core the kernel
picks, the sink waking or not). That hides a change worth 5%. This counts
instead: Willi runs under valgrind's callgrind with counting switched off,
serves a warm-up, then counts the user-space instructions it executes while
serving a fixed number of messages from `smtp-source` to `smtp-sink`, and
divides. Two runs of the same tree agree to 0.2%. System calls are not in
the count (the kernel's side of a send is not Willi's code), so this measures
exactly the Python work a change adds or saves; BENCHMARKS.md's History
records what each change bought.

    python bench/instructions.py                   # this tree: W1 and W2 shapes
    python bench/instructions.py --against 7529a9f  # and a git revision beside it
    make bench-instructions                         # the first, with valgrind installed

Shapes: W1 is a new connection per message, W2 keeps the connection for all
of one smtp-source session's messages (smtp-source -d), both 2 KB bodies, 20
sessions in parallel; the configuration is bench/configs/willi.env's.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
import setups  # noqa: E402
import trees  # noqa: E402
from procs import Registry  # noqa: E402
from workloads import source_argv  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"W1": False, "W2": True}  # keep the connection (smtp-source -d)
SESSIONS = 20
SIZE = 2000
WARM_UP = 200
SOURCE_TIMEOUT = 600.0  # seconds: under valgrind Willi runs about 50 times slower
DUMP_TIMEOUT = 60.0  # seconds for callgrind to write its counts once asked


def count(tree: Path, keep: bool, messages: int, rundir: Path, python: str) -> float:
    """Instructions per message of the Willi in `tree`, for one shape."""
    registry = Registry()
    try:
        _, sink_port, _ = setups.start_sink(registry, rundir)
        port = procs.free_port()
        values = {"PORT": port, "SINK_PORT": sink_port, "DIR": rundir}
        setups.render("upstreams.csv", rundir / "upstreams.csv", values)
        setups.render("willi.env", rundir / "willi.env", values)
        out = rundir / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
                python, str(tree / "willi.py"), "--config", str(rundir / "willi.env")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WILLI_")}
        willi = registry.start("willi", argv, rundir / "willi.log", env=env, cwd=tree)
        setups.wait_ready("willi under valgrind", port, willi, seconds=300)
        _source(port, WARM_UP, keep)  # the pool, the caches, the first allocations
        _control(willi.pid, "--instr=on")
        _source(port, messages, keep)
        _control(willi.pid, "--instr=off")
        _control(willi.pid, "--dump")
        # callgrind_control returns once the request is sent; the dump follows.
        deadline = time.monotonic() + DUMP_TIMEOUT
        total = 0
        while not total and time.monotonic() < deadline:
            total = max((_total(Path(f)) for f in glob.glob(f"{out}.{willi.pid}.*")), default=0)
            if not total:
                time.sleep(0.2)
        if not total:
            raise RuntimeError(f"no callgrind counts in {rundir}")
        return total / messages
    finally:
        registry.stop_all()


def _source(port: int, messages: int, keep: bool) -> None:
    argv = source_argv(port, SESSIONS, messages, SIZE, keep)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SOURCE_TIMEOUT)
    if result.returncode != 0 or result.stderr.strip():
        raise RuntimeError(f"smtp-source failed: {result.stderr.strip() or result.returncode}")


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=60)


def _total(path: Path) -> int:
    """The instructions a dump counted (its `totals:` line; `summary:` may say 0)."""
    return max((int(line.split()[1]) for line in path.read_text(errors="replace").splitlines()
                if line.startswith(("summary:", "totals:"))), default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages counted per shape")
    parser.add_argument("--against", help="a git revision to count beside this tree")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install valgrind)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="willi-instr-") as tmp:
        counted = {"this tree": REPO}
        if args.against:  # a `git archive` of it, gone with tmp
            counted[args.against] = trees.extract(trees.resolve(args.against), Path(tmp) / "against")
        rows = []
        for name, tree in counted.items():
            for shape, keep in SHAPES.items():
                rundir = Path(tmp) / f"{len(rows)}"
                rundir.mkdir()
                rows.append((name, shape, count(tree, keep, args.messages, rundir, args.python)))
    print(f"| tree | shape | k instructions per message ({args.messages} messages, user space) |")
    print("| --- | --- | ---: |")
    for name, shape, per_message in rows:
        print(f"| {name} | {shape} | {per_message / 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-instructions` at a tiny scale, so the instruction counter keeps
working on a fresh clone: Willi under valgrind, smtp-source to smtp-sink, for
this tree and for a git revision checked out beside it (`--against`).

BENCHMARKS.md's History leans on these counts; nothing else in the suite
would notice a valgrind option, a callgrind dump or the `git archive` step going
wrong. The count itself is only checked to be a plausible one (a Python
relay spends a few hundred thousand instructions a message); what it is
exactly is the benchmark's business, not a test's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (this tree|HEAD) \| (W1|W2) \| ([0-9.]+) \|$", re.MULTILINE)


def _have(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def test_instructions_per_message_are_counted_for_this_tree_and_a_revision_beside_it() -> None:
    missing = [name for name in ("valgrind", "callgrind_control", "smtp-source", "smtp-sink") if not _have(name)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"not installed: {missing} (make system-test-deps installs them)")
        pytest.skip(f"needs {missing}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "WILLI_"))}
    argv = [sys.executable, str(REPO / "bench" / "instructions.py"), "--messages", "50", "--against", "HEAD"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)

    assert done.returncode == 0, done.stderr[-3000:]
    rows = {(tree, shape): float(k) for tree, shape, k in ROW.findall(done.stdout)}
    assert set(rows) == {("this tree", "W1"), ("this tree", "W2"), ("HEAD", "W1"), ("HEAD", "W2")}, done.stdout
    assert all(50 < k < 5000 for k in rows.values()), rows  # k instructions a message
    # The revision came from `git archive`: nothing was added to the repository.
    worktrees = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "willi-instr-" not in worktrees

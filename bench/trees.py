"""Another revision of Willi beside this tree, for a benchmark to run both.

A number in BENCHMARKS.md was measured on the machine as it was that day; the
same VM has measured the same commit 1.6 times slower a week later. So "not
slower than BENCHMARKS.md" is only a fair question when the tree that file
measured runs again now, alternated run by run with this one. `baseline_rev`
finds that tree's commit in the file, `extract` writes it to a directory with
`git archive` (nothing to clean up in the repository, unlike a worktree).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from setups import REPO

# The facts line bench/run.py writes: "- willi: willi 0.2.1 at b305e47-dirty".
MEASURED = re.compile(r"^- willi: willi \S+ at ([0-9a-f]{7,40})(?:-dirty)?$", re.M)


def commit_of(rev: str) -> str | None:
    """The full commit `rev` names in this repository, or None."""
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def measured_in(report: Path) -> str | None:
    """The commit the Willi rows of a BENCHMARKS.md were measured on (None if it names none)."""
    if not report.exists():
        return None
    found = MEASURED.search(report.read_text())
    return found.group(1) if found else None


def baseline_rev(choice: str, report: Path) -> tuple[str | None, str]:
    """(commit, how it was chosen) for --baseline: `auto` is the tree `report`
    measured, `none` is no baseline, anything else a git revision."""
    if choice == "none":
        return None, "none"
    if choice == "auto":
        rev = measured_in(report)
        if rev is None:
            return None, f"none ({report.name} names no measured commit)"
        commit = commit_of(rev)
        if commit is None:
            return None, f"none ({report.name}'s {rev} is not in this repository)"
        return commit, f"the tree {report.name} measured before this run"
    return resolve(choice), f"--baseline {choice}"


def resolve(rev: str) -> str:
    """The full commit `rev` names; a clear error line if it names none."""
    commit = commit_of(rev)
    if commit is None:
        raise SystemExit(f"bench: {rev}: not a commit of this repository")
    return commit


def extract(commit: str, into: Path) -> Path:
    """The files of `commit` in `into` (created), from `git archive`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if not (into / "willi.py").exists():
        raise SystemExit(f"bench: {commit[:12]} has no willi.py to run")
    return into


def version_of(tree: Path) -> str:
    """`__version__` from a tree's willi/__init__.py, without importing it."""
    init = tree / "willi" / "__init__.py"
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", init.read_text() if init.exists() else "")
    return found.group(1) if found else "?"

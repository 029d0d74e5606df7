"""The benchmark's baseline: another revision of Willi run beside this tree.

Issue 8 asks that no workload be slower than in BENCHMARKS.md by more than
the run-to-run spread, and this VM has measured one commit 1.6 times slower
a week apart. So bench/run.py runs the revision BENCHMARKS.md measured
(`willi-base`) alternated with this tree and judges the difference against
the spread. These tests check the judgement on numbers made up for it, the
choice of revision, and one tiny run end to end; never a real rate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import report  # noqa: E402
import trees  # noqa: E402
from workloads import Result  # noqa: E402


def _summary(setup: str, *rates: float, wall: float = 4.0) -> report.Summary:
    runs = [Result(workload="W2", setup=setup, run=n, ok=True, rate=rate, unit="msg/s", wall=wall)
            for n, rate in enumerate(rates, 1)]
    return report.Summary(len(runs), runs, runs)


def test_a_difference_inside_the_wider_range_is_within_the_spread() -> None:
    mine, base = _summary("willi", 3400, 3900, 4300), _summary("willi-base", 3800, 4100, 4200)
    assert report.baseline_verdict(mine, base, higher_is_better=True) == "within the spread"


def test_a_median_below_the_baseline_by_more_than_either_range_is_worse() -> None:
    mine, base = _summary("willi", 3000, 3100, 3150), _summary("willi-base", 4000, 4100, 4200)
    assert report.baseline_verdict(mine, base, higher_is_better=True) == "**worse by more than the spread**"
    assert report.baseline_verdict(base, mine, higher_is_better=True) == "better by more than the spread"


def test_for_memory_per_session_more_is_worse() -> None:
    mine, base = _summary("willi", 3.9, 3.9, 4.0), _summary("willi-base", 2.4, 2.4, 2.5)
    assert report.baseline_verdict(mine, base, higher_is_better=False) == "**worse by more than the spread**"


def test_one_run_has_no_spread_to_judge_by() -> None:
    mine, base = _summary("willi", 3000), _summary("willi-base", 4000)
    assert report.baseline_verdict(mine, base, higher_is_better=True) == "one run: no spread to compare with"


def test_runs_of_a_fraction_of_a_second_are_not_judged() -> None:
    mine, base = _summary("willi", 3000, 3100, wall=0.1), _summary("willi-base", 4000, 4100, wall=0.1)
    assert report.baseline_verdict(mine, base, higher_is_better=True) == "runs under 1 s: too short to judge"


def test_auto_takes_the_commit_the_report_names_and_none_without_one(tmp_path: Path) -> None:
    head = trees.commit_of("HEAD")
    assert head is not None
    measured = tmp_path / "BENCHMARKS.md"
    measured.write_text(f"# Benchmarks\n\n- machine: 2 cores\n- willi: willi 0.2.3 at {head[:7]}-dirty\n")
    assert trees.baseline_rev("auto", measured) == (head, "the tree BENCHMARKS.md measured before this run")

    unnamed = tmp_path / "other.md"
    unnamed.write_text("# Benchmarks\n")
    assert trees.baseline_rev("auto", unnamed)[0] is None
    assert trees.baseline_rev("none", measured)[0] is None
    assert trees.baseline_rev("HEAD", unnamed) == (head, "--baseline HEAD")
    with pytest.raises(SystemExit, match="not a commit of this repository"):
        trees.baseline_rev("no-such-revision", unnamed)


def _have(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def _bench(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    output, numbers = tmp_path / "BENCHMARKS.md", tmp_path / "last-run.json"
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--only", "willi", "--workload", "W1,W2,W4-2000",
            "--runs", "2", "--scale", "0.002", "--pause", "0", "--timeout", "60",
            "--output", str(output), "--write", "--json", str(numbers), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "WILLI_"))}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(numbers.read_text())["results"], output.read_text()


@pytest.mark.skipif(not _have("smtp-source") or not _have("smtp-sink"), reason="needs Postfix's smtp-source")
def test_a_revision_runs_beside_this_tree_and_the_next_run_takes_it_from_the_report(tmp_path: Path) -> None:
    head = trees.commit_of("HEAD")
    assert head is not None
    results, text = _bench(tmp_path, "--baseline", "HEAD")

    assert [(r["workload"], r["setup"], r["error"]) for r in results if not r["ok"]] == []
    ran = sorted((r["workload"], r["setup"], r["run"]) for r in results)
    assert ran == sorted((w, s, n) for w in ("W1", "W2", "W4-2000") for s in ("willi", "willi-base") for n in (1, 2))
    assert "- baseline (willi-base): willi " in text and f" at {head[:7]}: --baseline HEAD" in text
    section = text.split("## Against the baseline", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| W")]
    assert [row.split(" | ")[0] for row in rows] == ["| W1", "| W2", "| W4-2000"]
    # At this scale a W1 or W2 run lasts a fraction of a second: too short to judge.
    verdicts = {row.split(" | ")[0]: row.split(" | ")[-1] for row in rows}
    assert verdicts["| W1"] == verdicts["| W2"] == "runs under 1 s: too short to judge |", rows
    assert "spread" in verdicts["| W4-2000"], rows

    # The file now names the tree it measured; a run that rewrites it, with
    # the default (auto), runs that tree beside this one.
    results, text = _bench(tmp_path)
    assert {r["setup"] for r in results} == {"willi", "willi-base"}
    assert "the tree BENCHMARKS.md measured before this run" in text

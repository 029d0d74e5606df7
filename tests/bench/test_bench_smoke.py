"""`make bench` at a tiny scale, so the benchmark keeps running on a fresh clone.

The benchmark is only worth something when anyone can rerun it, and nothing
else in the suite would notice a missing template, a renamed option or a
configuration that no longer starts. This runs bench/run.py end to end, once
per configuration and workload, at a scale where each run takes a fraction of
a second, and checks that every run completed (the sink counted every message,
every load generator exited 0, the proxy survived) and that the report
renders with a section for every workload. It never looks at a rate or a CPU
figure: on a shared machine those say nothing, and a test must not depend on
timing.
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
SCALE = "0.002"  # W1 and W2: 50 messages; W3: 4 x 10 MiB; W4: 20 idle sessions; W7: 100 rows
# Every workload once; of W4, W5 and W7 one variant each, since at this scale they are alike.
WORKLOADS = "W1,W2,W3,W4-2000,W5-W1,W6,W7-10k"


def _have(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def _configurations() -> list[str]:
    """Every configuration whose programs are installed (make test installs them all;
    on CI a missing one is a failure, not a skip)."""
    wanted = {
        "direct": True,
        "haproxy": _have("haproxy"),
        "nginx": _have("nginx") and Path("/usr/lib/nginx/modules/ngx_mail_module.so").exists(),
        "willi": True,
        "willi-w2": True,
        "willi-nopool": True,
        "willi-noresume": True,
        "willi-resume": True,
        "willi-info": True,
        "willi-pass": True,
    }
    missing = [name for name, ok in wanted.items() if not ok]
    if missing and os.environ.get("CI"):
        pytest.fail(f"not installed: {missing} (make system-test-deps installs them)")
    return [name for name, ok in wanted.items() if ok]


@pytest.mark.skipif(not _have("smtp-source") or not _have("smtp-sink"), reason="needs Postfix's smtp-source")
def test_every_configuration_completes_every_workload_and_the_report_renders(tmp_path: Path) -> None:
    configs = _configurations()
    workloads = WORKLOADS
    if not (_have("mariadbd") or _have("mysqld")):  # W6's database
        if os.environ.get("CI"):
            pytest.fail("mariadb-server is not installed (make system-test-deps installs it)")
        workloads = WORKLOADS.replace(",W6", "")
    output, numbers = tmp_path / "BENCHMARKS.md", tmp_path / "last-run.json"
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--only", ",".join(configs),
            "--workload", workloads, "--runs", "1", "--scale", SCALE, "--pause", "0", "--timeout", "60",
            "--output", str(output), "--write", "--json", str(numbers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "WILLI_"))}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(numbers.read_text())["results"]
    failed = [(r["workload"], r["setup"], r["error"]) for r in results if not r["ok"]]
    assert failed == []
    ran = {(r["workload"], r["setup"].replace("direct-tls", "direct")) for r in results}
    willi = {"willi", "willi-w2"}
    # W5-W1's, W1's and W3's own configurations:
    plain = set(configs) - {"willi-noresume", "willi-resume", "willi-info", "willi-pass"}
    expected = {
        "W1": plain | {"willi-info"}, "W2": plain, "W3": (plain - {"willi-nopool"}) | {"willi-pass"},
        "W4-2000": plain - {"direct", "willi-nopool"},
        "W5-W1": set(configs) - {"haproxy", "willi-info", "willi-pass"},
        "W6-cached": willi, "W6-distinct": willi, "W7-10k": willi,
    }
    if "W6" not in workloads:
        del expected["W6-cached"], expected["W6-distinct"]
    for workload, names in expected.items():
        assert {name for w, name in ran if w == workload} == names, workload
    report = output.read_text()
    for heading in ("## Results", "### W1:", "### W2:", "### W3:", "#### W3's strict body checks alone",
                    "| count CRLF |", "### W4-2000:", "### W5-W1:",
                    *(("### W6-cached:", "### W6-distinct:", "Beside W1") if "W6" in workloads else ()),
                    "### W7-10k:",
                    "## Targets", "## Method", "## History"):
        assert heading in report

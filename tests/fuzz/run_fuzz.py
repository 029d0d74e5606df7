"""`make fuzz`: a long fuzz run against a live Willi (issue 9).

Bounded in count (--inputs, FUZZ_INPUTS) and in time (--seconds,
FUZZ_SECONDS), run in --parallel connections, seeded (--seed, FUZZ_SEED;
random when unset, and printed so the run can be repeated). Prints inputs,
time and every violation; exits 1 when one was found that is not a known bug
(known ones are listed too), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fuzz import Campaign, Report  # noqa: E402


_shown = {"seconds": 0.0, "violations": 0}


def _progress(report: Report) -> None:
    """A line every 30 s, and each new violation in one line as it is found."""
    for violation in report.violations[_shown["violations"] :]:
        print(f"fuzz: found {str(violation)[:300]!r}", flush=True)
    _shown["violations"] = len(report.violations)
    if report.seconds - _shown["seconds"] >= 30:
        _shown["seconds"] = report.seconds
        print(f"fuzz: {report.inputs} inputs, {report.seconds:.0f} s, {len(report.violations)} violations "
              f"so far ({len(report.unknown())} unknown)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=int(os.environ.get("FUZZ_INPUTS") or 50_000))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS") or 3600))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED") or random.randrange(10**6)))
    parser.add_argument("--parallel", type=int, default=int(os.environ.get("FUZZ_PARALLEL") or 8))
    parser.add_argument("--first", type=int, default=0, help="index of the first input (to replay one)")
    parser.add_argument("--show", type=int, default=20, help="violations printed in full")
    args = parser.parse_args(argv)
    print(f"fuzz: seed {args.seed}, up to {args.inputs} inputs from {args.first}, {args.parallel} in parallel, "
          f"at most {args.seconds:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="willi-fuzz-") as tmp:
        with Campaign(Path(tmp), args.seed, parallel=args.parallel) as campaign:
            report = campaign.run(args.inputs, args.seconds, first=args.first, progress=_progress)
    for violation in report.violations[: args.show]:
        print(f"\n- {violation}")
    if len(report.violations) > args.show:
        print(f"\n... and {len(report.violations) - args.show} more")
    print(f"\nfuzz: seed {args.seed}: {report.summary()}")
    return 1 if report.unknown() else 0


if __name__ == "__main__":
    sys.exit(main())

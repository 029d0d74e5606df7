"""BENCHMARKS.md: the tables, the targets, the method; the History kept.

Everything above the `## History` heading is rewritten by each run; the
History section and everything under it is carried over as it is, so the
record of what each optimisation bought survives the next run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from workloads import Result, Workload

HISTORY = "## History"
HISTORY_DEFAULT = f"""{HISTORY}

What each change to Willi bought, newest first. `bench/run.py` keeps this
section as it is when it rewrites the rest of the file.

| date | change | W1 msg/s | W2 msg/s | W3 MB/s | W4 kB/session | note |
| --- | --- | --- | --- | --- | --- | --- |
"""

# (workload, what, comparison, other, threshold[, Willi's configuration]): the
# targets of the performance issues. "cpu-vs" is proxy CPU per unit against
# `other`'s, so it holds on any machine (issue 12 item 3: within 1.5× nginx's).
TARGETS = [
    ("W1", "msg/s ≥ 1.0× nginx", "ratio", "nginx", 1.0),
    ("W1", "proxy CPU ≤ 0.30 ms/msg", "cpu", None, 0.30),
    ("W2", "msg/s ≥ 1.0× nginx", "ratio", "nginx", 1.0),
    ("W2", "proxy CPU ≤ 0.12 ms/msg", "cpu", None, 0.12),
    ("W2", "proxy CPU ≤ 1.5× nginx's", "cpu-vs", "nginx", 1.5),
    ("W3", "MB/s ≥ 0.97× haproxy", "ratio", "haproxy", 0.97),
    ("W3", "proxy CPU ≤ 2.0 s/GB with the strict checks", "cpu", None, 2.0),
    ("W3", "proxy CPU ≤ 1.0 s/GB in pass mode (`willi-pass`)", "cpu", None, 1.0, "willi-pass"),
    ("W4-2000", "≤ 3.3 kB per idle session", "mem", None, 3.3),
    ("W4-9000", "≤ 3.3 kB per idle session", "mem", None, 3.3),
    ("W6-distinct", "msg/s ≥ 0.7× CSV W1", "vs-W1", None, 0.7),
]


TLS_NOTE = (
    "STARTTLS between the client and the proxy (bench/tlsrelay.py in client mode in front of "
    "smtp-source) and between the proxy and the sink side (tlsrelay.py in server mode in front "
    "of smtp-sink); `direct-tls` is the two relays back to back (the ceiling with TLS on the "
    "path). **nginx's upstream leg is plaintext** (its mail proxy has no STARTTLS towards the "
    "backend), so nginx does one TLS side less than Willi. HAProxy cannot speak STARTTLS and is "
    "not run. Willi: `WILLI_UPSTREAM_STARTTLS=required`, certificate verified against the "
    "throwaway CA. \"proxy CPU\" is the proxy's own processes; \"tls relays CPU\" the two "
    "relays together (the server relay does not run for nginx).")


TABLE_NOTE = (
    "\"load s\", \"bytes per row\" (VmRSS after less before, over the rows) and \"peak while "
    "loading\" (VmHWM less VmRSS before) are Willi's own `load_csv` in a child interpreter "
    "(bench/tables.py load). \"re-read s\" is from the rewrite of the file to the "
    "`mapping_reloaded` line in Willi's log (up to a second of it is the stat interval); "
    "\"worst NOOP during the re-read\" is the longest NOOP round trip of one open session over "
    "that time and 3.5 s more (Willi frees the replaced table 3 s after the swap), \"before\" the longest over one second before the rewrite.")


@dataclass
class Summary:
    runs: int
    ok: list[Result]
    every: list[Result]

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.ok]
        return statistics.median(values) if values else float("nan")

    def median_all(self, attr: str) -> float:
        """Over every run, failed ones too (for what the machine was doing)."""
        values = [getattr(r, attr) for r in self.every]
        return statistics.median(values) if values else float("nan")

    def span(self, attr: str) -> tuple[float, float]:
        values = [getattr(r, attr) for r in self.ok]
        return (min(values), max(values)) if values else (float("nan"), float("nan"))


def summarise(results: list[Result]) -> dict[tuple[str, str], Summary]:
    table: dict[tuple[str, str], Summary] = {}
    for res in results:
        entry = table.setdefault((res.workload, res.setup), Summary(0, [], []))
        entry.runs += 1
        entry.every.append(res)
        if res.ok:
            entry.ok.append(res)
    return table


def num(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:,.{digits}f}"


def digits_for(unit: str) -> int:
    return {"msg/s": 0, "MB/s": 1, "kB/session": 2}.get(unit, 1)


# --- the tables --------------------------------------------------------------------
def ratio(summaries: dict, wl: str, setup: str, other: str) -> str:
    mine, theirs = summaries.get((wl, setup)), summaries.get((wl, other))
    if not mine or not theirs or not mine.ok or not theirs.ok or setup == other:
        return "–"
    return f"{mine.median('rate') / theirs.median('rate'):.2f}×"


def smtp_table(wl: Workload, setups: list[str], summaries: dict) -> list[str]:
    cpu_unit = "s/GB" if wl.unit == "MB/s" else "ms/msg"
    d = digits_for(wl.unit)
    tls = " | tls relays CPU " + cpu_unit if wl.tls else ""
    busy = "proxy+sink+source" + ("+relays" if wl.tls else "")
    lines = [
        f"| configuration | runs ok | {wl.unit} median | min – max | × nginx | × haproxy "
        f"| proxy CPU {cpu_unit}{tls} | cores busy ({busy}) | other load on the host |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if wl.tls else ""),
    ]
    for setup in setups:
        s = summaries.get((wl.key, setup))
        if s is None:
            continue
        lo, hi = s.span("rate")
        cpu = "–" if setup.startswith("direct") else num(statistics.median(
            [r.cpu_per_unit for r in s.ok]) if s.ok else float("nan"), 3)
        status = f"{len(s.ok)}/{s.runs}" + ("" if len(s.ok) == s.runs else " **FAILED runs**")
        tls_cpu = ""
        if wl.tls:
            per = [r.tls_cpu / (r.bytes / 1e9) if wl.unit == "MB/s" else r.tls_cpu * 1000 / r.count
                   for r in s.ok if r.count]
            tls_cpu = f" | {num(statistics.median(per) if per else float('nan'), 3)}"
        lines.append(
            f"| {setup} | {status} | {num(s.median('rate'), d)} | {num(lo, d)} – {num(hi, d)} "
            f"| {ratio(summaries, wl.key, setup, 'nginx')} | {ratio(summaries, wl.key, setup, 'haproxy')} "
            f"| {cpu}{tls_cpu} | {pct(s.median('busy_procs'))} | {pct(s.median_all('busy_other'))} |"
        )
    return lines


def idle_table(wl: Workload, setups: list[str], summaries: dict) -> list[str]:
    lines = [
        "| configuration | runs ok | kB/session median | min – max | × nginx | × haproxy "
        "| RSS before → with the sessions (MB) | seconds to open all |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for setup in setups:
        s = summaries.get((wl.key, setup))
        if s is None:
            continue
        lo, hi = s.span("rate")
        status = f"{len(s.ok)}/{s.runs}" + ("" if len(s.ok) == s.runs else " **FAILED runs**")
        lines.append(
            f"| {setup} | {status} | {num(s.median('rate'), 2)} | {num(lo, 2)} – {num(hi, 2)} "
            f"| {ratio(summaries, wl.key, setup, 'nginx')} | {ratio(summaries, wl.key, setup, 'haproxy')} "
            f"| {num(s.median('rss_before_kb') / 1024, 1)} → {num(s.median('rss_after_kb') / 1024, 1)} "
            f"| {num(s.median('wall'), 1)} |"
        )
    return lines


def beside_w1(wl: Workload, setups: list[str], summaries: dict) -> list[str]:
    """W6: each configuration's rate and CPU next to the same configuration's CSV W1."""
    lines = ["Beside W1 (the same configuration with the csv: mapping, this run):", "",
             "| configuration | W6 msg/s | CSV W1 msg/s | × CSV W1 | W6 proxy CPU ms/msg | CSV W1 proxy CPU ms/msg |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for setup in setups:
        mine, w1 = summaries.get((wl.key, setup)), summaries.get(("W1", setup))
        if mine is None or not mine.ok:
            continue
        cpu = statistics.median([r.cpu_per_unit for r in mine.ok])
        if w1 is None or not w1.ok:
            lines.append(f"| {setup} | {num(mine.median('rate'))} | – | – | {num(cpu, 3)} | – |")
            continue
        w1_cpu = statistics.median([r.cpu_per_unit for r in w1.ok])
        lines.append(f"| {setup} | {num(mine.median('rate'))} | {num(w1.median('rate'))} "
                     f"| {mine.median('rate') / w1.median('rate'):.2f}× | {num(cpu, 3)} | {num(w1_cpu, 3)} |")
    return lines


def table_table(wl: Workload, setups: list[str], summaries: dict) -> list[str]:
    """W7: load time, memory per row, and what a session waits during a reload."""
    lines = ["| configuration | runs ok | rows | load s | bytes per row | peak while loading MB "
             "| Willi RSS MB | re-read s | worst NOOP during the re-read ms | min – max | worst NOOP before ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for setup in setups:
        s = summaries.get((wl.key, setup))
        if s is None:
            continue
        status = f"{len(s.ok)}/{s.runs}" + ("" if len(s.ok) == s.runs else " **FAILED runs**")

        def med(key: str) -> float:
            values = [r.extra[key] for r in s.ok if key in r.extra]
            return statistics.median(values) if values else float("nan")

        lo, hi = s.span("rate")
        rows = next((r.count for r in s.every), 0)
        lines.append(f"| {setup} | {status} | {rows:,} | {num(med('load_s'), 2)} | {num(med('bytes_per_row'))} "
                     f"| {num(med('peak_mb'), 1)} | {num(s.median('rss_after_kb') / 1024, 1)} "
                     f"| {num(med('reload_s'), 2)} | {num(s.median('rate'), 1)} | {num(lo, 1)} – {num(hi, 1)} "
                     f"| {num(med('baseline_ms'), 1)} |")
    return lines


def pct(value: float) -> str:
    return "–" if value != value else f"{value * 100:.0f}%"


def targets_table(summaries: dict, willi: str) -> list[str]:
    lines = [f"Measured on `{willi}`, medians of the runs that passed.", "",
             "| workload | target | measured | met |", "| --- | --- | ---: | --- |"]
    for wl, text, kind, other, limit, *config in TARGETS:
        mine = summaries.get((wl, config[0] if config else willi))
        theirs = summaries.get((wl, other)) if other else None
        if not mine or not mine.ok or (other and (not theirs or not theirs.ok)):
            lines.append(f"| {wl} | {text} | no data | – |")
            continue
        if kind == "vs-W1":
            w1 = summaries.get(("W1", willi))
            if not w1 or not w1.ok:
                lines.append(f"| {wl} | {text} | no data | – |")
                continue
            value = mine.median("rate") / w1.median("rate")
            shown, met = f"{value:.2f}×", value >= limit
        elif kind == "ratio":
            value = mine.median("rate") / theirs.median("rate")
            shown, met = f"{value:.2f}×", value >= limit
        elif kind == "cpu":
            value = statistics.median([r.cpu_per_unit for r in mine.ok])
            shown, met = f"{value:.3f}", value <= limit
        elif kind == "cpu-vs":
            value = (statistics.median([r.cpu_per_unit for r in mine.ok])
                     / statistics.median([r.cpu_per_unit for r in theirs.ok]))
            shown, met = f"{value:.2f}×", value <= limit
        else:
            value = mine.median("rate")
            shown, met = f"{value:.2f} kB", value <= limit
        lines.append(f"| {wl} | {text} | {shown} | {'met' if met else '**not met**'} |")
    return lines


MIN_WALL = 1.0  # seconds of load below which start-up and ordering outweigh the code


def spread_of(mine: Summary, base: Summary) -> float:
    """The run-to-run spread: the wider of the two min-max ranges."""
    return max(hi - lo for lo, hi in (mine.span("rate"), base.span("rate")))


def baseline_verdict(mine: Summary, base: Summary, higher_is_better: bool) -> str:
    """Whether `mine` is worse than `base` by more than the run-to-run spread:
    the medians' difference against the wider of the two min-max ranges."""
    if min(len(mine.ok), len(base.ok)) < 2:
        return "one run: no spread to compare with"
    if higher_is_better and min(mine.median("wall"), base.median("wall")) < MIN_WALL:
        # Measured: two runs of one tree at BENCH_SCALE=0.02 (0.1 s each) came out 9% apart.
        return f"runs under {MIN_WALL:.0f} s: too short to judge"
    worse = base.median("rate") - mine.median("rate")
    if not higher_is_better:
        worse = -worse
    spread = spread_of(mine, base)
    if worse > spread:
        return "**worse by more than the spread**"
    if -worse > spread:
        return "better by more than the spread"
    return "within the spread"


def baseline_table(workloads: list[Workload], summaries: dict, willi: str, base: str) -> list[str]:
    """`willi` beside the baseline revision, workload by workload."""
    lines = ["| workload | unit | willi median | min – max | willi-base median | min – max "
             "| willi ÷ base | proxy CPU willi ÷ base | spread (wider range) | verdict |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for wl in workloads:
        mine, theirs = summaries.get((wl.key, willi)), summaries.get((wl.key, base))
        if not mine or not theirs:
            continue
        if not mine.ok or not theirs.ok:
            lines.append(f"| {wl.key} | {wl.unit} | no data | | | | | | | – |")
            continue
        d = digits_for(wl.unit)
        (lo, hi), (blo, bhi) = mine.span("rate"), theirs.span("rate")
        cpu = "–"
        if wl.unit != "kB/session":
            cpu = f"{mine.median('cpu_per_unit') / theirs.median('cpu_per_unit'):.2f}×"
        lines.append(
            f"| {wl.key} | {wl.unit} | {num(mine.median('rate'), d)} | {num(lo, d)} – {num(hi, d)} "
            f"| {num(theirs.median('rate'), d)} | {num(blo, d)} – {num(bhi, d)} "
            f"| {mine.median('rate') / theirs.median('rate'):.2f}× | {cpu} | {num(spread_of(mine, theirs), d)} "
            f"| {baseline_verdict(mine, theirs, wl.unit != 'kB/session')} |")
    return lines


BASELINE_NOTE = (
    "`willi-base` is the baseline revision (see the facts above) run from a `git archive` of "
    "its commit with the same env file, alternated run by run with `willi`: what a number in "
    "an earlier BENCHMARKS.md would be on this machine today. The verdict compares the "
    "difference of the medians with the run-to-run spread, taken as the wider of the two "
    "min – max ranges; for W4 lower is better, for the rest higher. Runs of less than a "
    "second of load are not judged: start-up and the order of the runs outweigh the code "
    "there (two runs of one tree at BENCH_SCALE=0.02 came out 9% apart; at 0.5, 2%).")


# --- the file ----------------------------------------------------------------------
def runs_table(results: list[Result]) -> list[str]:
    lines = ["| # | workload | configuration | result | rate | proxy CPU s | sink CPU s "
             "| source CPU s | tls relays CPU s | wall s | other load | proxy peak RSS MB | warnings logged |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(results, 1):
        verdict = "ok" if r.ok else f"**FAILED**: {r.error}".replace("|", "\\|")[:300]
        lines.append(
            f"| {i} | {r.workload} | {r.setup} | {verdict} | {num(r.rate, digits_for(r.unit))} {r.unit} "
            f"| {r.proxy_cpu:.2f} | {r.sink_cpu:.2f} | {r.source_cpu:.2f} "
            f"| {num(r.tls_cpu, 2) if r.tls_cpu else '–'} | {r.wall:.2f} "
            f"| {pct(r.busy_other) if r.unit != 'kB/session' else '–'} "
            f"| {num(r.hwm_kb / 1024, 1)} | {r.log_problems} |"
        )
    return lines


def problems(results: list[Result]) -> list[str]:
    out = []
    for i, r in enumerate(results, 1):
        if r.ok and not r.log_problems:
            continue
        head = f"- run {i} ({r.workload}, {r.setup}): " + ("ok" if r.ok else f"FAILED: {r.error}")
        out.append(head + (f"; {r.log_problems} warning/error lines logged" if r.log_problems else ""))
        if r.log_excerpt:
            out += ["", "  ```", *("  " + line[:400] for line in r.log_excerpt), "  ```", ""]
    return out or ["None: every run passed and no proxy logged a warning."]


def history_of(path: Path) -> str:
    if path.exists():
        text = path.read_text()
        at = text.find("\n" + HISTORY + "\n")
        if at >= 0:
            return text[at + 1 :]
        if text.startswith(HISTORY + "\n"):
            return text
    return HISTORY_DEFAULT


SCANNER_NOTE = (
    "Willi's strict body scanner (`willi/smtp/body.py` `DataScanner`, the default "
    "`WILLI_BARE_LF=reject`) alone, on 10 MiB of realistic mail (headers with Received and "
    "DKIM lines, a quoted-printable part, a base64 attachment in 76-character lines), fed in "
    "the reactor's 256 KiB chunks and in TLS-record-sized 16 KiB ones; each of its C-level "
    "checks also timed alone over the same chunks (bench/scanner.py, best of 5 passes). "
    "Seconds of one core per GB of payload, to set beside W3's proxy CPU per GB.")


def render(meta: dict, workloads: list[Workload], setups: list[str], results: list[Result],
           method: list[str], willi: str, history: str, scanner: list[str] | None = None,
           base: str | None = None) -> str:
    summaries = summarise(results)
    out = [
        "# Benchmarks",
        "",
        "<!-- Written by `make bench` (bench/run.py). Everything above \"## History\" is",
        "     rewritten on each run; the History section is kept as it is. -->",
        "",
        f"Willi against nginx's mail proxy and HAProxy in TCP mode, with `smtp-source` "
        f"sending to `smtp-sink` on loopback; \"direct\" is smtp-source straight to the sink "
        f"(the ceiling). Run {meta['date']}, {meta['duration']}.",
        "",
        *(f"- {k}: {v}" for k, v in meta["facts"].items()),
        "",
        "## Results",
        "",
        "Median and range over the runs that passed; a run in which the sink did not count "
        "every message, a load generator failed or the proxy died is FAILED and left out "
        "of the medians (see *Failed runs and warnings*). Ratios compare medians. "
        "\"proxy CPU\" is utime+stime of the proxy's processes over the load "
        "(ms per message = s per 1,000 messages; s per GB of payload for W3). "
        "\"cores busy\" is the CPU time of proxy + sink + smtp-source (utime+stime from "
        "/proc and wait4) over the wall time of the load, divided by the number of cores; "
        "\"other load\" is the busy share of all cores from /proc/stat over the same "
        "interval less that: whatever else ran on the machine (the driver, other users).",
        "",
    ]
    others = [r.busy_other for r in results if r.unit != "kB/session" and r.wall > 0]
    if others and statistics.median(others) > 0.10:
        out += [f"**Caution: the machine was not quiet.** Other processes kept a median "
                f"{statistics.median(others) * 100:.0f}% of the cores busy during the loads "
                f"(\"other load on the host\"), so the absolute figures are low and noisy; "
                f"the alternation spreads that load over the configurations, so the ratios "
                f"hold up better. Rerun on a quiet machine for numbers to quote.", ""]
    for wl in workloads:
        out += [f"### {wl.key}: {wl.title}", ""]
        if wl.kind == "skip":
            out += [f"Not measured: {wl.reason}", ""]
            continue
        count = next((r.count for r in results if r.workload == wl.key), 0)
        if wl.kind != "table":
            out += [f"{count:,} {'idle sessions' if wl.kind == 'idle' else 'messages'} per run.", ""]
        present = list(dict.fromkeys(r.setup for r in results if r.workload == wl.key))
        if wl.tls and wl is next(w for w in workloads if w.tls):
            out += [TLS_NOTE, ""]
        if wl.kind == "table" and wl is next(w for w in workloads if w.kind == "table"):
            out += [TABLE_NOTE, ""]
        out += {"smtp": smtp_table, "table": table_table}.get(wl.kind, idle_table)(wl, present, summaries)
        out.append("")
        if wl.mapping != "csv":
            out += [*beside_w1(wl, present, summaries), ""]
        if wl.key == "W3" and scanner:
            out += ["#### W3's strict body checks alone", "", SCANNER_NOTE, "", *scanner, ""]
    if base and willi != base and any(key[1] == base for key in summaries):
        out += ["## Against the baseline", "", BASELINE_NOTE, "",
                *baseline_table(workloads, summaries, willi, base), ""]
    out += ["## Targets", "", *targets_table(summaries, willi), "",
            "W5 (TLS) has no target in the issue; it is reported above only.", "",
            "## Failed runs and warnings", "", *problems(results), "",
            "<details><summary>Every run, in the order run</summary>", "",
            *runs_table(results), "", "</details>", "",
            "## Method", "", *method, "", history.rstrip() + "\n"]
    return "\n".join(out)

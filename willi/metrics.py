"""Counters, gauges and histograms, rendered as Prometheus text (format 0.0.4).

The metric set is fixed and built once (`Metrics`), so a typo is an
AttributeError at start, not a silently new series. Labels carry only
values from code or configuration (a status word, a side, a mapping, a
target), never an address or a recipient, and each metric caps its label
sets anyway: past `MAX_SERIES` new combinations are counted under
`other`, so no input can grow memory or a scrape without bound.

Bumping is a dict update on the reactor thread (no locks: only the reactor
bumps, and the responder renders on the same thread). Values that another
component already knows (sessions open, the worker queue, dropped log lines)
are read at scrape time through a function instead of being mirrored.
The names follow Prometheus conventions: `_total` for counters, base units
(`_seconds`, `_bytes`), `willi_` first.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable, Iterable

MAX_SERIES = 64  # label combinations per metric; more become "other"
OTHER = "other"
LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, ...]


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), max_series: int = MAX_SERIES) -> None:
        self.name = name
        self.help = help
        self.labelnames: Labels = tuple(labels)
        self.max_series = max_series
        self._function: Callable[[], float] | None = None

    def _key(self, values: Labels, table: dict) -> Labels:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        if values in table or len(table) < self.max_series:
            return values
        return (OTHER,) * len(values)

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the (unlabelled) value from `function` at each scrape."""
        self._function = function

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        return lines + self._samples()

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """Only goes up; `inc(*label_values, amount=1)`."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), max_series: int = MAX_SERIES) -> None:
        super().__init__(name, help, labels, max_series)
        self.values: dict[Labels, float] = {} if self.labelnames else {(): 0.0}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        values = self.values
        if labels in values:  # every bump after a series' first
            values[labels] += amount
        else:
            key = self._key(labels, values)
            values[key] = values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        if self._function is not None and not labels:
            return float(self._function())
        return self.values.get(labels, 0.0)

    def _samples(self) -> list[str]:
        if self._function is not None:
            return [f"{self.name} {_number(self._function())}"]
        return [f"{self.name}{_labels(self.labelnames, key)} {_number(value)}"
                for key, value in sorted(self.values.items())]


class Gauge(Counter):
    """Goes up and down; or read from a function at scrape time."""

    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        self.values[self._key(labels, self.values)] = value

    def dec(self, *labels: str, amount: float = 1.0) -> None:
        self.inc(*labels, amount=-amount)


class Histogram(_Metric):
    """Cumulative buckets, a sum and a count (seconds, by convention)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = (),
                 max_series: int = MAX_SERIES) -> None:
        super().__init__(name, help, labels, max_series)
        self.buckets = tuple(sorted(buckets))
        # per label set: [count per bucket (not cumulative) ..., +Inf], sum
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        entry = self.series.get(labels)  # every observation after a series' first
        if entry is None:
            key = self._key(labels, self.series)
            entry = self.series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        counts, total = entry
        counts[bisect_left(self.buckets, value)] += 1  # the first bound >= value, or +Inf
        total[0] += value

    def count(self, *labels: str) -> int:
        entry = self.series.get(labels)
        return sum(entry[0]) if entry else 0

    def _samples(self) -> list[str]:
        lines = []
        for key, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                running += count
                le = _labels((*self.labelnames, "le"), (*key, _number(bound)))
                lines.append(f"{self.name}_bucket{le} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class Metrics:
    """Every metric Willi exports (README "Metrics"); one per process."""

    def __init__(self) -> None:
        self.sessions_open = Gauge("willi_sessions_open", "Client sessions open now.")
        self.sessions_accepted = Counter("willi_sessions_accepted_total", "Client connections accepted as sessions.")
        self.connections_refused = Counter(
            "willi_connections_refused_total", "Client connections refused before a session, by reason.",
            ("reason",))
        self.transactions = Counter(
            "willi_transactions_total", "Transactions that reached RCPT, by outcome.", ("status",))
        self.recipients = Counter(
            "willi_recipients_total", "Recipients by outcome and by who decided (willi or upstream).",
            ("status", "src"))
        self.bytes_received = Counter("willi_bytes_received_total", "Bytes received from clients.")
        self.bytes_sent = Counter("willi_bytes_sent_total", "Bytes sent to clients.")
        self.body_violations = Counter(
            "willi_body_violations_total", "Message bodies refused, by kind (bare_lf, bare_cr, nul, too_big).",
            ("kind",))
        self.upstream_connects = Counter(
            "willi_upstream_connects_total", "Upstream connections made or reused, by target.", ("target",))
        self.upstream_failures = Counter(
            "willi_upstream_failures_total", "Upstream connections or commands that failed, by target.",
            ("target",))
        self.pool_hits = Counter("willi_pool_hits_total", "Upstream connections taken from the pool.")
        self.tls_handshakes = Counter(
            "willi_tls_handshakes_total",
            "TLS handshakes completed, by side (client, upstream) and whether a session was resumed.",
            ("side", "resumed"))
        self.tls_failures = Counter(
            "willi_tls_failures_total", "TLS handshakes that failed, by side (client, upstream).", ("side",))
        self.lookups = Counter(
            "willi_lookups_total", "Mapping lookups, by mapping and result (hit, miss, stale, error).",
            ("mapping", "result"))
        self.lookup_duration = Histogram(
            "willi_lookup_duration_seconds", "Time a mapping lookup took, by mapping.", LOOKUP_BUCKETS,
            ("mapping",))
        self.worker_queue_depth = Gauge("willi_worker_queue_depth", "Jobs waiting for a lookup thread.")
        self.log_lines_dropped = Counter(
            "willi_log_lines_dropped_total", "Log lines dropped because the reader of stdout stalled.")
        self.session_faults = Counter(
            "willi_session_faults_total", "Sessions ended by an internal error (a bug: see the log).")
        self.protocol_errors = Counter(
            "willi_protocol_errors_total", "Client commands answered with an error reply, by code.", ("code",))

    def all(self) -> list[_Metric]:
        return [value for value in vars(self).values() if isinstance(value, _Metric)]

    def render(self) -> str:
        """The whole exposition, ending with a newline."""
        return "".join(line + "\n" for metric in self.all() for line in metric.render())


def _labels(names: Labels, values: Iterable[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{name}="{_escape_value(str(value))}"' for name, value in zip(names, values)) + "}"


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)

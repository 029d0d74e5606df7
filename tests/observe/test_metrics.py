"""Metrics: the exposition parses as Prometheus text 0.0.4, counts what was
bumped, and no label can grow without bound."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from willi.metrics import MAX_SERIES, Counter, Histogram, Metrics


def parsed(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_metric_is_exported_with_help_and_type_even_before_traffic() -> None:
    text = Metrics().render()
    families = parsed(text)
    # prometheus_client strips _total from counter family names
    assert {"willi_sessions_open", "willi_sessions_accepted", "willi_connections_refused", "willi_transactions",
            "willi_recipients", "willi_bytes_received", "willi_bytes_sent", "willi_body_violations",
            "willi_upstream_connects", "willi_upstream_failures", "willi_pool_hits", "willi_tls_handshakes",
            "willi_tls_failures", "willi_lookups", "willi_lookup_duration_seconds", "willi_worker_queue_depth",
            "willi_log_lines_dropped", "willi_session_faults"} <= set(families)
    assert samples(text)[("willi_sessions_accepted_total", ())] == 0
    assert families["willi_lookup_duration_seconds"].type == "histogram"
    assert all(line.startswith(("# HELP willi_", "# TYPE willi_", "willi_")) for line in text.splitlines())


def test_counters_gauges_and_functions_show_what_was_counted() -> None:
    metrics = Metrics()
    metrics.sessions_accepted.inc()
    metrics.sessions_accepted.inc()
    metrics.recipients.inc("sent", "upstream")
    metrics.recipients.inc("refused", "willi", amount=3)
    metrics.bytes_received.inc(amount=1234)
    metrics.sessions_open.set_function(lambda: 7)
    metrics.connections_refused.inc('odd "reason"\\\n')
    values = samples(metrics.render())
    assert values[("willi_sessions_accepted_total", ())] == 2
    assert values[("willi_recipients_total", (("src", "upstream"), ("status", "sent")))] == 1
    assert values[("willi_recipients_total", (("src", "willi"), ("status", "refused")))] == 3
    assert values[("willi_bytes_received_total", ())] == 1234
    assert values[("willi_sessions_open", ())] == 7
    assert values[("willi_connections_refused_total", (("reason", 'odd "reason"\\\n'),))] == 1


def test_a_histogram_has_cumulative_buckets_a_sum_and_a_count() -> None:
    histogram = Histogram("t_seconds", "test", (0.1, 1.0), ("mapping",))
    for value in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(value, "m1")
    values = samples("\n".join(histogram.render()) + "\n")
    bucket = "t_seconds_bucket"
    assert [values[(bucket, (("le", le), ("mapping", "m1")))] for le in ("0.1", "1", "+Inf")] == [1, 3, 4]
    assert values[("t_seconds_sum", (("mapping", "m1"),))] == 4.05
    assert values[("t_seconds_count", (("mapping", "m1"),))] == 4


def test_label_sets_are_capped_so_no_input_grows_a_metric_without_bound() -> None:
    counter = Counter("t_total", "test", ("target",))
    for number in range(MAX_SERIES * 3):
        counter.inc(f"target{number}")
    assert len(counter.values) == MAX_SERIES + 1
    assert counter.value("other") == MAX_SERIES * 2
    counter.inc("target0")  # a known one still counts as itself
    assert counter.value("target0") == 2


def test_the_readme_lists_every_metric_with_its_type_and_labels() -> None:
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    for metric in Metrics().all():
        row = f"| `{metric.name}` | {metric.kind} | {', '.join(metric.labelnames) or '—'} | {metric.help} |"
        assert row in readme, row

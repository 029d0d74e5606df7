"""The Observer: hand-built records in, the log lines an operator greps and
the counters an alert reads out. Producers are tested elsewhere against
ListObserver; here only what the Observer makes of what they report."""

from __future__ import annotations

from willi.log import Logger
from willi.metrics import Metrics
from willi.observe import Observer
from willi.records import DEFERRED, REFUSED, SENT, UPSTREAM, WILLI, RecipientRecord, SessionRecord, \
    TransactionRecord
from tests.support.willi_process import parse_log_line


class Lines:
    dropped = 0

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    def records(self) -> list[dict[str, str]]:
        return [parse_log_line(line) for line in self.lines]


def observer(level: str = "info") -> tuple[Observer, Lines]:
    sink = Lines()
    return Observer(Logger(None, level=level, sink=sink, clock=lambda: 0.0), Metrics()), sink  # type: ignore[arg-type]


def fields(record: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in record.items() if k not in ("_raw", "ts")}


def txn(**changes: object) -> TransactionRecord:
    base: dict[str, object] = dict(
        session="1f.3", txn="1f.3.1", client="192.0.2.7", helo="mx.client.test", tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
        sender="alice@origin.test", accepted=("bob@a.test", "carol@a.test"), refused=1,
        upstream="smtp://192.0.2.25:25", upstream_tls=None, status=SENT, code=250,
        text="2.0.0 Ok: queued as 4Bx", src=UPSTREAM, size=1234, duration=0.04567)
    base.update(changes)
    return TransactionRecord(**base)  # type: ignore[arg-type]


def test_a_recipient_line_says_its_fate_the_reply_and_who_decided() -> None:
    obs, sink = observer()
    obs.recipient(RecipientRecord("1f.3", "1f.3.1", "bob@a.test", SENT, 250, "2.0.0 Ok: queued as 4Bx", UPSTREAM,
                                  "smtp://192.0.2.25:25"))
    obs.recipient(RecipientRecord("1f.3", "1f.3.1", "nobody@b.test", REFUSED, 554,
                                  "5.7.1 <nobody@b.test>: Relay access denied", WILLI))
    sent, refused = (fields(r) for r in sink.records())
    assert sent == {"level": "info", "event": "recipient", "session": "1f.3", "txn": "1f.3.1", "to": "bob@a.test",
                    "status": "sent", "code": "250", "text": "2.0.0 Ok: queued as 4Bx", "src": "upstream",
                    "upstream": "smtp://192.0.2.25:25"}
    assert (refused["status"], refused["code"], refused["src"]) == ("refused", "554", "willi")
    assert "upstream" not in refused
    values = obs.metrics.recipients
    assert (values.value("sent", "upstream"), values.value("refused", "willi")) == (1, 1)


def test_a_transaction_line_has_the_envelope_the_upstream_and_the_final_reply() -> None:
    obs, sink = observer()
    obs.transaction(txn())
    assert fields(sink.records()[0]) == {
        "level": "info", "event": "transaction", "session": "1f.3", "txn": "1f.3.1", "client": "192.0.2.7",
        "helo": "mx.client.test", "tls": "TLSv1.3 TLS_AES_256_GCM_SHA384", "sender": "alice@origin.test",
        "rcpts": "bob@a.test,carol@a.test", "nrcpt": "2", "refused": "1", "upstream": "smtp://192.0.2.25:25",
        "status": "sent", "code": "250", "text": "2.0.0 Ok: queued as 4Bx", "src": "upstream", "size": "1234",
        "duration": "0.046"}
    assert obs.metrics.transactions.value("sent") == 1


def test_an_aborted_transaction_never_shows_a_reply_code() -> None:
    obs, sink = observer()
    obs.transaction(txn(status=DEFERRED, code=None, text=None, src=WILLI, size=None, aborted="client quit"))
    record = sink.records()[0]
    assert "code" not in record and "text" not in record and "size" not in record
    assert (record["status"], record["aborted"], record["src"]) == ("deferred", "client quit", "willi")
    assert "code=" not in sink.lines[0]
    assert obs.metrics.transactions.value("deferred") == 1


def test_session_lines_for_connect_and_disconnect_with_the_reason_and_bytes() -> None:
    obs, sink = observer()
    obs.session(SessionRecord("connect", "1f.3", "192.0.2.7", 40123, name="mx.client.test"))
    assert obs.metrics.sessions_open.value() == 1
    obs.session(SessionRecord("disconnect", "1f.3", "192.0.2.7", 40123, reason="idle timeout", transactions=2,
                              bytes_in=5000, bytes_out=700))
    connect, disconnect = (fields(r) for r in sink.records())
    assert connect == {"level": "info", "event": "connect", "session": "1f.3", "client": "192.0.2.7",
                       "port": "40123", "name": "mx.client.test"}
    assert disconnect == {"level": "info", "event": "disconnect", "session": "1f.3", "client": "192.0.2.7",
                          "port": "40123", "reason": "idle timeout", "transactions": "2", "bytes_in": "5000",
                          "bytes_out": "700"}
    metrics = obs.metrics
    assert (metrics.sessions_accepted.value(), metrics.sessions_open.value()) == (1, 0)
    assert (metrics.bytes_received.value(), metrics.bytes_sent.value()) == (5000, 700)


def test_events_are_logged_as_given_and_counted_by_their_bounded_label() -> None:
    obs, sink = observer()
    obs.event("connection_refused", client="192.0.2.9", reason="per_ip_limit")
    obs.event("tls_failed", level="info", session="1f.4", side="client", error="wrong version number")
    obs.event("body_refused", session="1f.5", kind="bare_lf")
    obs.event("upstream_failed", level="warning", session="1f.6", target="smtp://192.0.2.25:25", error="refused")
    obs.event("upstream_connected", target="smtp://192.0.2.25:25", reused=True)
    obs.event("protocol_error", session="1f.7", code=500, reply="500 5.5.2 Syntax error")
    obs.event("session_fault", level="error", session="1f.8", error="KeyError", traceback="Traceback...")
    lines = sink.records()
    assert [(r["event"], r["level"]) for r in lines] == [
        ("connection_refused", "info"), ("tls_failed", "info"), ("body_refused", "info"),
        ("upstream_failed", "warning"), ("upstream_connected", "info"), ("protocol_error", "info"),
        ("session_fault", "error")]
    assert lines[0]["client"] == "192.0.2.9"  # an address in the line, never in a label
    metrics = obs.metrics
    assert metrics.connections_refused.value("per_ip_limit") == 1
    assert metrics.tls_failures.value("client") == 1
    assert metrics.body_violations.value("bare_lf") == 1
    assert metrics.upstream_failures.value("smtp://192.0.2.25:25") == 1
    assert (metrics.upstream_connects.value("smtp://192.0.2.25:25"), metrics.pool_hits.value()) == (1, 1)
    assert metrics.protocol_errors.value("500") == 1 and metrics.session_faults.value() == 1


def test_lookups_are_counted_and_timed_but_written_only_at_debug_or_when_they_fail() -> None:
    obs, sink = observer()
    obs.lookup("mapping_1=csv:t.csv", "hit", 0.0002)
    obs.lookup("mapping_2=mysql://db/mail", "error", 1.5)
    assert [(r["event"], r["level"], r["result"]) for r in sink.records()] == [("lookup", "warning", "error")]
    metrics = obs.metrics
    assert metrics.lookups.value("mapping_1=csv:t.csv", "hit") == 1
    assert metrics.lookup_duration.count("mapping_2=mysql://db/mail") == 1


def test_commands_and_replies_are_for_debug_only() -> None:
    quiet, quiet_sink = observer("info")
    assert not quiet.debug_enabled
    quiet.event("command", level="debug", session="1f.3", line="MAIL FROM:<a@b.test>")
    assert quiet_sink.lines == []
    chatty, chatty_sink = observer("debug")
    assert chatty.debug_enabled
    chatty.event("command", level="debug", session="1f.3", line="MAIL FROM:<a@b.test>")
    chatty.event("reply", level="debug", session="1f.3", line="250 2.1.0 Ok")
    assert [(r["event"], r["line"]) for r in chatty_sink.records()] == [
        ("command", "MAIL FROM:<a@b.test>"), ("reply", "250 2.1.0 Ok")]


def test_a_field_cannot_pose_as_the_lines_own_level_or_event() -> None:
    obs, sink = observer()
    obs.event("protocol_error", session="1f.3", event="forged", level_="x", ts="0")
    obs.session(SessionRecord("connect", "1f.3", "192.0.2.7", 1, extra={"session": "forged", "level": "error"}))
    first, second = sink.records()
    assert (first["event"], first["event_"], first["ts_"]) == ("protocol_error", "forged", "0")
    assert (second["level"], second["session"], second["level_"]) == ("info", "1f.3", "error")


def test_json_lines_carry_the_same_fields() -> None:
    import json

    sink = Lines()
    obs = Observer(Logger(None, fmt="json", sink=sink, clock=lambda: 0.0))  # type: ignore[arg-type]
    obs.transaction(txn(status=DEFERRED, code=None, text=None, size=None, aborted="client quit"))
    record = json.loads(sink.lines[0])
    assert (record["event"], record["status"], record["nrcpt"], record["refused"]) == (
        "transaction", "deferred", 2, 1)
    assert "code" not in record and record["aborted"] == "client quit"

"""Prometheus metrics from a running Willi (SPEC §6, issue 11 item 3).

The test sends known traffic (sessions with a known number of bytes each
way, messages, connections over the per-IP limit) and reads the counters
back through `/metrics`, parsed by prometheus_client's own parser: each
counter must have moved by exactly what was sent. A scraper that holds the
metrics port costs the mail flow nothing, and with WILLI_WORKERS=N each
worker answers on a port of its own.
"""

from __future__ import annotations

import http.client
import smtplib
import socket
import ssl

from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port, wait_until
from tests.support.willi_process import WilliProcess

SENDER = "sender@origin.test"
BODY = b"Subject: metrics\r\n\r\nhello\r\n"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def samples(port: int) -> Samples:
    status, text = scrape(port)
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


class CountingClient:
    """A raw SMTP client that counts every byte it sends and receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sent = 0
        self.received = 0
        self.buffer = b""
        self.greeting = self.reply()

    def reply(self) -> bytes:
        while True:
            lines = self.buffer.split(b"\r\n")
            for index, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    done = b"\r\n".join(lines[: index + 1]) + b"\r\n"
                    self.buffer = self.buffer[len(done):]
                    return done
            chunk = self.sock.recv(4096)
            assert chunk, f"closed; got {self.buffer!r}"
            self.received += len(chunk)
            self.buffer += chunk

    def say(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        self.sent += len(data)
        return self.reply()

    def quit(self) -> None:
        assert self.say(b"QUIT\r\n").startswith(b"221")
        while chunk := self.sock.recv(4096):  # until Willi closes
            self.received += len(chunk)
        self.sock.close()


def deliver(client: CountingClient, rcpt: str) -> None:
    assert client.say(b"EHLO client.test\r\n").startswith(b"250")
    assert client.say(f"MAIL FROM:<{SENDER}>\r\n".encode()).startswith(b"250")
    assert client.say(f"RCPT TO:<{rcpt}>\r\n".encode()).startswith(b"250")
    assert client.say(b"DATA\r\n").startswith(b"354")
    assert client.say(BODY + b".\r\n").startswith(b"250")


def refused(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_counters_match_the_traffic_sent(launch) -> None:
    upstream = launch.upstream()
    metrics_port = free_port()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:127.0.0.1:{upstream.port}",
                          "WILLI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", "WILLI_MAX_CONNECTIONS_PER_IP": "2"})
    before = samples(metrics_port)
    # Three clients each deliver a message; two more hold the per-IP limit while two others are refused.
    clients = []
    for number in range(3):
        client = CountingClient(willi.port)
        deliver(client, f"user{number}@a.test")
        client.quit()
        clients.append(client)
    held = [CountingClient(willi.port), CountingClient(willi.port)]
    assert [refused(willi.port)[:3] for _ in range(2)] == [b"421", b"421"]
    for client in held:
        client.quit()
    upstream.wait_for_messages(3)
    after = samples(metrics_port)
    everyone = clients + held
    assert delta(before, after, "willi_sessions_accepted_total") == 5
    assert after[("willi_sessions_open", ())] == 0
    assert sum(delta(before, after, "willi_connections_refused_total", reason=reason)
               for reason in ("limit", "per_ip_limit")) == 2
    assert delta(before, after, "willi_bytes_received_total") == sum(c.sent for c in everyone)
    assert delta(before, after, "willi_bytes_sent_total") == sum(c.received for c in everyone)
    assert delta(before, after, "willi_transactions_total", status="sent") == 3
    assert delta(before, after, "willi_recipients_total", status="sent", src="upstream") == 3
    assert after[("willi_log_lines_dropped_total", ())] == 0
    # The log has a line per recipient and per session for the same traffic.
    lines = wait_until(lambda: len([r for r in willi.log_lines() if r.get("event") == "disconnect"]) >= 5 + 1
                       and willi.log_lines(), 5.0, 0.02, "the lines of every session")
    assert sorted(r["to"] for r in lines if r.get("event") == "recipient") == [
        "user0@a.test", "user1@a.test", "user2@a.test"]
    assert {r["status"] for r in lines if r.get("event") == "recipient"} == {"sent"}
    assert len([r for r in lines if r.get("event") == "connection_refused"]) == 2


def test_the_endpoint_answers_get_metrics_only(launch) -> None:
    metrics_port = free_port()
    launch.willi({"WILLI_MAPPING_1": "static:127.0.0.1:9", "WILLI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    assert scrape(metrics_port, "/")[0] == 404
    assert scrape(metrics_port, "/metrics")[0] == 200


def test_scrapers_that_hold_the_metrics_port_cost_the_mail_flow_nothing(launch) -> None:
    upstream = launch.upstream()
    metrics_port = free_port()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:127.0.0.1:{upstream.port}",
                          "WILLI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    hogs = [socket.create_connection(("127.0.0.1", metrics_port), timeout=5) for _ in range(8)]
    try:
        for hog in hogs:
            hog.sendall(b"GET /metr")  # half a request, then silence
        with smtplib.SMTP(willi.host, willi.port, timeout=5) as client:
            client.sendmail(SENDER, ["user@a.test"], BODY)
        upstream.wait_for_messages(1)
        # The scrapers beyond the endpoint's own limit were closed at once.
        closed = [hog for hog in hogs[4:] if _closed_within(hog, 2.0)]
        assert len(closed) == 4
    finally:
        for hog in hogs:
            hog.close()
    wait_until(lambda: _scrape_ok(metrics_port), 10.0, 0.05, "the endpoint to serve again")


def _closed_within(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True  # closed with our half request unread: a reset
    except socket.timeout:
        return False


def _scrape_ok(port: int) -> bool:
    try:
        return scrape(port)[0] == 200
    except OSError:
        return False


def test_each_worker_serves_its_own_metrics_on_port_plus_its_index(launch) -> None:
    metrics_port = free_port()
    while not _free(metrics_port + 1):
        metrics_port = free_port()
    willi: WilliProcess = launch.willi({"WILLI_MAPPING_1": "static:127.0.0.1:9", "WILLI_WORKERS": "2",
                                        "WILLI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    wait_until(lambda: _scrape_ok(metrics_port) and _scrape_ok(metrics_port + 1), 10.0, 0.05, "both workers")
    lines = willi.wait_for_log(lambda r: r.get("event") == "metrics_listening" and r.get("worker") == "1")
    assert lines["address"] == f"127.0.0.1:{metrics_port + 1}"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_upstream_failures_are_counted_by_target(launch) -> None:
    down = free_port()  # nothing listens there
    metrics_port = free_port()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:127.0.0.1:{down}",
                          "WILLI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    before = samples(metrics_port)
    client = CountingClient(willi.port)
    assert client.say(b"EHLO client.test\r\n").startswith(b"250")
    assert client.say(f"MAIL FROM:<{SENDER}>\r\n".encode()).startswith(b"250")
    assert client.say(b"RCPT TO:<user@a.test>\r\n").startswith(b"451")
    client.quit()
    after = samples(metrics_port)
    assert delta(before, after, "willi_upstream_failures_total", target=f"smtp://127.0.0.1:{down}") == 1
    assert delta(before, after, "willi_transactions_total", status="deferred") == 1


def test_client_starttls_handshakes_are_counted_and_a_failed_one_is_not(launch, pki) -> None:
    upstream = launch.upstream()
    metrics_port = free_port()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:127.0.0.1:{upstream.port}",
                          "WILLI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                          "WILLI_TLS_CERT": str(pki.willi_cert), "WILLI_TLS_KEY": str(pki.willi_key)})
    before = samples(metrics_port)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    for number in range(2):  # two clients say STARTTLS, finish the handshake and deliver
        with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.starttls(context=context)[0] == 220
            smtp.ehlo()
            assert smtp.sendmail(SENDER, [f"tls{number}@a.test"], BODY) == {}
    # A third says STARTTLS and then sends bytes that are no ClientHello.
    client = CountingClient(willi.port)
    assert client.say(b"EHLO client.test\r\n").startswith(b"250")
    assert client.say(b"STARTTLS\r\n").startswith(b"220")
    client.sock.sendall(b"this is not TLS\r\n" * 4)
    read_to_eof(client.sock)
    upstream.wait_for_messages(2)

    def failure_counted() -> Samples | None:
        now = samples(metrics_port)
        return now if delta(before, now, "willi_tls_failures_total", side="client") >= 1 else None

    after = wait_until(failure_counted, 5.0, 0.02, "the failed handshake counted")
    assert delta(before, after, "willi_tls_handshakes_total", side="client", resumed="false") == 2  # fresh clients: full handshakes
    assert delta(before, after, "willi_tls_failures_total", side="client") == 1


def read_to_eof(sock: socket.socket) -> None:
    """Willi ends the session (an alert, then EOF); the socket's timeout bounds the wait."""
    while sock.recv(4096):
        pass
    sock.close()

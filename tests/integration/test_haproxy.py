"""Willi behind a real HAProxy (Debian's haproxy), issues 10 and 13.

The test's client connects to HAProxy from 127.0.0.5, so that is the address
HAProxy sees; HAProxy connects to Willi from 127.0.0.1, the one trusted
balancer (WILLI_PROXY_PROTOCOL_FROM). With `send-proxy` and `send-proxy-v2`
the address Willi logs and forwards in XCLIENT is 127.0.0.5; HAProxy's own
SMTP health checks (a v1 header with its own addresses, a v2 LOCAL) keep the
servers UP; a client straight to Willi from outside the trusted list cannot
claim an address. Then two Willis behind one HAProxy: mail goes through
both, one is stopped with SIGTERM, and HAProxy keeps delivering through the
other with no message lost.
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.haproxy import HAProxy, find_haproxy
from tests.support.net import SmtpRawClient, wait_until
from tests.support.proxied import connect_from, connect_source, proxy_willi, proxy_willi_env, start_proxy_willi
from tests.support.upstream import DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY, ScriptableUpstream
from tests.support.willi_process import WilliProcess
from willi import replies
from willi.proxy_protocol import V2_MAX_LENGTH, ProxyHeaderParser, encode_v1

pytestmark = pytest.mark.skipif(find_haproxy() is None, reason="haproxy not installed (make system-test-deps)")

CLIENT = "127.0.0.5"  # what HAProxy sees
OUTSIDER = "127.0.0.2"  # not a trusted balancer


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptableUpstream]:
    with ScriptableUpstream(capabilities=[*DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY]) as server:
        yield server


@pytest.fixture(scope="module")
def willi(tmp_path_factory: pytest.TempPathFactory, upstream: ScriptableUpstream) -> Iterator[WilliProcess]:
    tmp = tmp_path_factory.mktemp("willi-haproxy")
    with proxy_willi(proxy_willi_env(tmp, upstream.port), tmp) as process:
        yield process


def through(haproxy: HAProxy, source: str = CLIENT) -> SmtpRawClient:
    return connect_source(haproxy.host, haproxy.port, source)


def start_message(client: SmtpRawClient, helo: str, recipient: str) -> None:
    """Up to the middle of the body; client says, Willi (through HAProxy) answers."""
    assert client.read_reply().code == 220
    assert client.command(f"EHLO {helo}").code == 250
    assert client.command("MAIL FROM:<s@origin.test>").code == 250
    assert client.command(f"RCPT TO:<{recipient}>").code == 250
    assert client.command("DATA").code == 354
    client.send(f"Subject: {recipient}\r\n\r\nvia haproxy\r\n".encode())


def finish_message(client: SmtpRawClient) -> None:
    client.send(b"the rest\r\n.\r\n")
    assert client.read_reply().code == 250
    assert client.command("QUIT").code in (221, 421)  # 421 4.3.2 from a Willi that is draining


def deliver(client: SmtpRawClient, helo: str, recipient: str = "r@a.test") -> None:
    start_message(client, helo, recipient)
    finish_message(client)


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_willi_logs_and_forwards_the_address_haproxy_saw(tmp_path, willi, upstream, send_proxy) -> None:
    with HAProxy(tmp_path, [(willi.host, willi.port)], send_proxy=send_proxy) as haproxy:
        haproxy.wait_for_state({"w1": True})  # its health checks pass: Willi took their headers
        helo = f"{send_proxy}.client.example"
        with through(haproxy) as client:
            deliver(client, helo)
        message = wait_until(lambda: next((m for m in upstream.messages if m.xclient.get("HELO") == helo.encode()),
                                          None), 5, 0.02, "the message at the upstream")
        assert message.xclient["ADDR"] == CLIENT.encode()  # XCLIENT names the client, not HAProxy
        record = willi.wait_for_log(lambda r: r.get("event") == "transaction" and r.get("helo") == helo)
        assert record["client"] == CLIENT
    refused = [r for r in willi.log_lines() if r.get("reason") == "proxy_header"]
    assert refused == [], refused  # not one health check was taken for a bad header


def test_a_client_straight_to_willi_from_outside_the_trusted_list_cannot_claim_an_address(willi, upstream) -> None:
    seen = len(upstream.sessions)
    with connect_from(willi, OUTSIDER) as client:
        client.send(encode_v1((CLIENT, 4242), (willi.host, willi.port)))
        assert client.read_reply().raw == replies.PROXY_REQUIRED
        assert client.expect_closed(timeout=5) == b""
    record = willi.wait_for_log(lambda r: r.get("reason") == "proxy_untrusted")
    assert record["client"] == OUTSIDER
    assert len(upstream.sessions) == seen


# --- two Willis behind one HAProxy (issue 13) -----------------------------------------
class Sender:
    """Clients that send numbered messages through HAProxy and, as an MTA
    does, try a message again when the attempt fails before its 250."""

    def __init__(self, haproxy: HAProxy, count: int, hold_from: int, threads: int = 3) -> None:
        self.haproxy = haproxy
        self.todo = list(range(count))
        self.hold_from = hold_from  # messages from this number on wait for `proceed`
        self.acked: list[int] = []
        self.retries = 0
        self.lock = threading.Lock()
        self.proceed = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _next(self) -> int | None:
        with self.lock:
            number = self.todo.pop(0) if self.todo else None
        if number is not None and number >= self.hold_from:
            assert self.proceed.wait(30)
        return number

    def _run(self) -> None:
        while (number := self._next()) is not None:
            for _attempt in range(10):
                try:
                    with through(self.haproxy) as client:
                        deliver(client, "mta.example", f"m{number}@a.test")
                except (AssertionError, OSError):
                    with self.lock:
                        self.retries += 1
                    continue
                with self.lock:
                    self.acked.append(number)
                break

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a sender did not finish in time"


def transactions(willi: WilliProcess) -> int:
    return sum(1 for r in willi.log_lines() if r.get("event") == "transaction" and r.get("code") == "250")


def test_two_willis_behind_haproxy_one_stopped_with_sigterm_and_no_message_lost(tmp_path: Path, upstream) -> None:
    first_tmp, second_tmp = tmp_path / "a", tmp_path / "b"
    first_tmp.mkdir()
    second_tmp.mkdir()
    first = start_proxy_willi(proxy_willi_env(first_tmp, upstream.port), first_tmp)
    second = start_proxy_willi(proxy_willi_env(second_tmp, upstream.port), second_tmp)
    held: list[SmtpRawClient] = []
    try:
        with HAProxy(tmp_path, [(first.host, first.port), (second.host, second.port)]) as haproxy:
            haproxy.wait_for_state({"w1": True, "w2": True})
            for name in ("held1", "held2"):  # round robin: one body in flight on each Willi
                held.append(through(haproxy))
                start_message(held[-1], "held.example", f"{name}@a.test")
            sender = Sender(haproxy, count=100, hold_from=40)
            sender.start()
            wait_until(lambda: transactions(first) >= 5 and transactions(second) >= 5, 20, 0.02,
                       "mail delivered through both Willis")
            wait_until(lambda: len(sender.acked) >= 30, 20, 0.02, "the first messages sent")
            first.signal(signal.SIGTERM)  # while the senders keep sending, and a body is in flight
            at_stop = transactions(second)
            sender.proceed.set()
            for client in held:  # the body in flight on the stopping Willi still gets its 250
                finish_message(client)
            assert first.wait(15) == 0
            sender.join(60)
            haproxy.wait_for_state({"w1": False, "w2": True})
        assert sorted(sender.acked) == list(range(100))  # every message got its 250, some after a retry
        delivered = {m.rcpt_tos[0] for m in upstream.messages}
        expected = {f"m{n}@a.test".encode() for n in range(100)} | {b"held1@a.test", b"held2@a.test"}
        assert expected <= delivered  # and every message that got a 250 is at the upstream
        # After the stop HAProxy delivered through the other: most of the 60 held back went there.
        assert transactions(second) - at_stop >= 30, (at_stop, transactions(second), sender.retries)
    finally:
        for client in held:
            client.close()
        first.stop()
        second.stop()


# --- the parser against HAProxy's own bytes --------------------------------------------
class HeaderCapture:
    """A backend for HAProxy that keeps a connection's header bytes."""

    def __init__(self, host: str) -> None:
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.bind((host, 0))
        self.listener.listen()
        self.listener.settimeout(10)
        self.host, self.port = host, self.listener.getsockname()[1]

    def take(self, client_port: int) -> bytes:
        """The header bytes of the connection HAProxy made for `client_port`
        (HAProxy's readiness probe went through it too, first)."""
        for _ in range(5):
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(5)
                data, parser, header = b"", ProxyHeaderParser(), None
                while header is None and len(data) < V2_MAX_LENGTH:
                    chunk = conn.recv(V2_MAX_LENGTH)
                    if not chunk:
                        break  # a connection that ended: the probe's
                    data += chunk
                    header = parser.feed(chunk)
            if header is not None and header.source is not None and header.source[1] == client_port:
                return data
        raise AssertionError("no connection from the client reached the capture")

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("family", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_the_parser_reads_haproxy_headers_byte_by_byte(tmp_path: Path, send_proxy: str, family: str) -> None:
    capture = HeaderCapture(family)
    source = CLIENT if family == "127.0.0.1" else "::1"
    try:
        with HAProxy(tmp_path, [(capture.host, capture.port)], send_proxy=send_proxy, host=family,
                     check=False) as haproxy:
            with connect_source(haproxy.host, haproxy.port, source) as client:
                client_port = client.sock.getsockname()[1]
                data = capture.take(client_port)
    finally:
        capture.close()
    parser = ProxyHeaderParser()
    results = [parser.feed(data[i:i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1])
    header = results[-1]
    assert header is not None and header.trailing == b""
    assert header.version == (1 if send_proxy == "send-proxy" else 2)
    assert header.source == (source, client_port)
    assert header.destination == (family, haproxy.port)

"""One non-blocking connection: queueing what the kernel does not take, water
marks that tell the owner to stop and resume, one fatal path, and TLS in the
path with plaintext sent before the switch kept in order."""

import socket

from tests.test_reactor import run_until
from willi.connection import HIGH_WATER, Connection
from willi.reactor import Reactor
from willi.tls import TLSEngine, client_context, server_context


class Owner:
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list = []
        self.events: list[str] = []

    def on_data(self, conn: Connection, data: memoryview) -> None:
        self.data += data

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def on_pause_writing(self, conn: Connection) -> None:
        self.events.append("pause")

    def on_resume_writing(self, conn: Connection) -> None:
        self.events.append("resume")


def pair(reactor: Reactor) -> tuple[Connection, Owner, Connection, Owner]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    oa, ob = Owner(), Owner()
    return Connection.accepted(reactor, a, oa), oa, Connection.accepted(reactor, b, ob), ob


def test_a_large_write_is_queued_paused_and_resumed_and_arrives_whole() -> None:
    reactor = Reactor()
    ca, oa, cb, ob = pair(reactor)
    cb.pause_reading()  # the peer does not read yet: the queue must grow
    payload = bytes(range(256)) * 8192  # 2 MiB
    ca.write(payload)
    assert ca.out_size > HIGH_WATER and oa.events == ["pause"]
    cb.resume_reading()
    run_until(reactor, lambda: len(ob.data) == len(payload))
    assert bytes(ob.data) == payload and oa.events == ["pause", "resume"] and ca.out_size == 0
    ca.close(), cb.close(), reactor.close()


def test_the_peer_closing_is_reported_once_and_close_is_idempotent() -> None:
    reactor = Reactor()
    ca, oa, cb, ob = pair(reactor)
    cb.close()
    run_until(reactor, lambda: bool(oa.lost))
    ca.close()
    ca.close()
    assert oa.lost == [None] and ca.closed
    reactor.close()


def test_close_when_flushed_sends_everything_queued_first() -> None:
    reactor = Reactor()
    ca, oa, cb, ob = pair(reactor)
    cb.pause_reading()
    ca.write(b"x" * (HIGH_WATER * 4))
    ca.write(b"221 bye\r\n")
    ca.close_when_flushed(linger=30)
    assert not ca.closed
    cb.resume_reading()
    run_until(reactor, lambda: bool(ob.lost))
    assert ob.data.endswith(b"221 bye\r\n") and len(ob.data) == HIGH_WATER * 4 + 9 and ca.closed
    cb.close(), reactor.close()


def test_a_peer_that_never_reads_its_last_reply_is_reset_after_the_linger_time() -> None:
    reactor = Reactor()
    ca, oa, cb, ob = pair(reactor)
    cb.pause_reading()  # never reads again
    ca.write(b"x" * (HIGH_WATER * 64))  # far more than the socket buffers hold
    ca.write(b"421 4.4.2 Timeout\r\n")
    fd = ca.sock.fileno()
    ca.close_when_flushed(linger=0.05)
    assert not ca.closed
    run_until(reactor, lambda: ca.closed)  # the socket is not kept for a peer that does not read
    assert ca.sock.fileno() == -1 and fd >= 0 and ca.out_size == 0
    cb.resume_reading()
    run_until(reactor, lambda: bool(ob.lost))  # the peer sees the end, without the rest
    assert len(ob.data) < HIGH_WATER * 64
    cb.close(), reactor.close()


def test_tls_starts_after_queued_plaintext_and_carries_data_both_ways(pki) -> None:
    reactor = Reactor()
    ca, oa, cb, ob = pair(reactor)
    done: dict[str, object] = {}
    ca.write(b"220 Ready to start TLS\r\n")
    ca.start_tls(TLSEngine(server_context(str(pki.willi_cert), str(pki.willi_key)), True),
                 lambda exc: done.setdefault("server", exc))
    run_until(reactor, lambda: ob.data == b"220 Ready to start TLS\r\n")
    cb.start_tls(TLSEngine(client_context(True, str(pki.ca_cert), None, None), False, "localhost"),
                 lambda exc: done.setdefault("client", exc))
    run_until(reactor, lambda: len(done) == 2)
    assert done == {"server": None, "client": None}
    ob.data.clear()
    big = b"0123456789abcdef" * 65536  # 1 MiB through TLS
    cb.write(big)
    ca.write(b"250 ok\r\n")
    run_until(reactor, lambda: len(oa.data) == len(big) and ob.data == b"250 ok\r\n")
    assert bytes(oa.data) == big
    ca.close(), cb.close(), reactor.close()


def test_a_failed_connect_is_reported_to_its_callback() -> None:
    reactor = Reactor()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    outcome: list = []
    conn = Connection.connect(reactor, socket.AF_INET, ("127.0.0.1", port), Owner(), outcome.append)
    run_until(reactor, lambda: bool(outcome))
    assert isinstance(outcome[0], OSError) and conn.closed
    reactor.close()


def test_a_peer_that_goes_away_during_the_handshake_fails_it_at_once(pki) -> None:
    for how in ("close", "reset"):
        reactor = Reactor()
        ca, oa, cb, ob = pair(reactor)
        done: list[BaseException | None] = []
        ca.start_tls(TLSEngine(client_context(True, str(pki.ca_cert), None, None), False, "localhost"),
                     done.append)  # the ClientHello goes out; no answer will come
        if how == "reset":
            cb.abort()
        else:
            cb.close()
        run_until(reactor, lambda: bool(done) and bool(oa.lost), timeout=2)  # not the handshake's timeout
        assert len(done) == 1 and "during the TLS handshake" in str(done[0]), how
        assert ca.closed and len(oa.lost) == 1, how
        reactor.close()

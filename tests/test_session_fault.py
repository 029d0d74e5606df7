"""A fault inside one session ends that session only (issue 9 item 1), shown
on real Session objects over socketpairs in one reactor: the faulty client
hears 421 4.3.0 and is closed, the fault is reported once with its
traceback, and the other session, served by the same reactor, goes on."""

from __future__ import annotations

import io
import socket

import pytest

from tests.test_reactor import run_until
from willi import replies
from willi.cli import _router, dial_settings
from willi.config import load_config
from willi.context import Context
from willi.log import Logger
from willi.reactor import Reactor
from willi.records import ListObserver
from willi.relay import Relay
from willi.session import Session
from willi.upstream import Dialer
from willi.workers import WorkerPool


class Broken(Relay):
    """A relay with a bug: what the issue's AttributeError was, injected."""

    def handle(self, event, now):  # type: ignore[no-untyped-def]
        raise AttributeError("'NoneType' object has no attribute 'write'")


def received(sock: socket.socket, into: bytearray) -> bytearray:
    try:
        while chunk := sock.recv(65536):
            into += chunk
    except BlockingIOError:
        pass
    return into


def context(observer: ListObserver) -> tuple[Context, Reactor, WorkerPool]:
    """A real Context on a real Reactor, its records going to `observer`."""
    config = load_config(None, {"WILLI_HOSTNAME": "willi.test", "WILLI_MAPPING_1": "static:127.0.0.1:9"})
    logger = Logger(io.StringIO())
    reactor = Reactor()
    workers = WorkerPool(reactor, 1, 10)
    dialer = Dialer(reactor, workers, dial_settings(config), lambda verify: None, logger)
    ctx = Context(config, reactor, workers, _router(config, logger), dialer, logger, observer=observer)
    return ctx, reactor, workers


def test_a_fault_in_one_session_ends_it_with_421_and_the_other_session_goes_on() -> None:
    observer = ListObserver()
    ctx, reactor, workers = context(observer)
    pairs = [socket.socketpair() for _ in range(2)]
    faulty, healthy = (Session(ctx, ours, ("192.0.2.1", 1000 + i)) for i, (ours, _) in enumerate(pairs))
    faulty.relay = Broken(faulty.id, "192.0.2.1", 1000)
    (_, faulty_client), (_, healthy_client) = pairs
    for client in (faulty_client, healthy_client):
        client.setblocking(False)
    got_faulty, got_healthy = bytearray(), bytearray()
    try:
        faulty_client.sendall(b"EHLO a.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
        run_until(reactor, lambda: faulty.closed and replies.SESSION_FAULT in received(faulty_client, got_faulty))
        healthy_client.sendall(b"EHLO b.test\r\nNOOP\r\n")
        run_until(reactor, lambda: received(healthy_client, got_healthy).endswith(replies.OK))
    finally:
        for ours, theirs in pairs:
            theirs.close()
        for session in (faulty, healthy):
            session.close("test over")
        workers.close()
        reactor.close()
    assert got_faulty.endswith(replies.SESSION_FAULT) and faulty.closed
    assert got_healthy.startswith(b"220 willi.test") and got_healthy.endswith(replies.OK)
    faults = [fields for name, fields in (r for r in observer.records if isinstance(r, tuple)) if name == "session_fault"]
    assert len(faults) == 1 and faults[0]["session"] == faulty.id
    assert "AttributeError" in faults[0]["traceback"] and "Traceback" in faults[0]["traceback"]
    ends = [(r.session, r.reason) for r in observer.records if getattr(r, "event", None) == "disconnect"]
    assert ends == [(faulty.id, "fault"), (healthy.id, "test over")]


class FailsAtConnect(ListObserver):
    """An Observer whose connect record raises: a fault before the greeting."""

    def session(self, record):  # type: ignore[no-untyped-def]
        if record.event == "connect":
            raise RuntimeError("observer broken")
        super().session(record)


def test_a_session_that_cannot_start_tells_its_client_421_and_leaves_nothing_behind() -> None:
    ctx, reactor, workers = context(FailsAtConnect())
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    try:
        with pytest.raises(RuntimeError, match="observer broken"):
            Session(ctx, ours, ("192.0.2.1", 1000))
        heard = b"".join(iter(lambda: theirs.recv(4096), b""))  # up to the close
    finally:
        theirs.close()
        workers.close()
        reactor.close()
    assert heard == replies.SESSION_FAULT  # no greeting, no silence: a clear 421, then the close
    assert ctx.open_sessions == 0 and ours.fileno() == -1


def test_each_command_error_is_reported_with_its_code_for_the_metric() -> None:
    # willi_protocol_errors_total{code}: the protocol counts them, the session reports them.
    observer = ListObserver()
    ctx, reactor, workers = context(observer)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    session = Session(ctx, ours, ("192.0.2.1", 1000))
    got = bytearray()
    try:
        theirs.sendall(b"BOGUS\r\nEHLO\r\nMAIL FROM:<a@b.test>\r\nEHLO c.test\r\nMAIL FROM:<a@b.test> X=1\r\nNOOP\r\n")
        run_until(reactor, lambda: received(theirs, got).endswith(replies.OK))
    finally:
        theirs.close()
        session.close("test over")
        workers.close()
        reactor.close()
    errors = [fields for name, fields in (r for r in observer.records if isinstance(r, tuple))
              if name == "protocol_error"]
    assert [(e["code"], e["session"]) for e in errors] == [("500", session.id), ("501", session.id),
                                                            ("503", session.id), ("555", session.id)]

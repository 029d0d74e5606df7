"""A client that pipelines without reading its replies (SPEC §7), on a real
Session over a socketpair: Willi answers only OUT_LIMIT of replies ahead of
what the client has read, then stops taking commands, so what it holds for
the client stays bounded however much was pipelined; once the client reads,
every command is answered, in order."""

from __future__ import annotations

import socket

from tests.test_reactor import run_until
from tests.test_session_fault import context
from willi.connection import HIGH_WATER
from willi.flow import CLIENT_FULL
from willi.records import ListObserver
from willi.session import Session
from willi.smtp.server import OUT_LIMIT

EHLO = b"EHLO client.test\r\n"
COMMANDS = 20_000  # 360 kB of commands, about 4 MB of EHLO replies


def test_pipelined_commands_wait_for_their_replies_to_be_read_and_all_are_answered() -> None:
    ctx, reactor, workers = context(ListObserver())
    ours, theirs = socket.socketpair()
    ours.setblocking(False)  # as the listener hands it over
    theirs.setblocking(False)
    session = Session(ctx, ours, ("192.0.2.1", 1000))
    commands, sent = EHLO * COMMANDS, 0
    try:
        # The client writes as long as Willi reads, and reads nothing.
        def stuck() -> bool:
            nonlocal sent
            try:
                sent += theirs.send(commands[sent:])
            except BlockingIOError:
                pass
            return sent == len(commands) or bool(session.flow.paused & CLIENT_FULL and sent > 2 * HIGH_WATER)

        run_until(reactor, stuck)
        run_until(reactor, lambda: False, timeout=0.2)  # and Willi has every chance to go on
        assert session.flow.paused & CLIENT_FULL and session.proto.buffered > 0  # commands wait
        held = session.client.out_size + len(session.proto.out)
        assert held <= HIGH_WATER + 2 * OUT_LIMIT, held  # not the 4 MB the commands ask for
        # The client reads: the rest is worked off, every command answered.
        got, finals = bytearray(), 0

        def read() -> bool:
            nonlocal sent
            if sent < len(commands):
                try:
                    sent += theirs.send(commands[sent:])
                except BlockingIOError:
                    pass
            try:
                while chunk := theirs.recv(1 << 20):
                    got.extend(chunk)
            except BlockingIOError:
                pass
            return got.count(b"\r\n250 ") >= COMMANDS

        run_until(reactor, read, timeout=30)
        finals = got.count(b"\r\n250 ")
    finally:
        theirs.close()
        session.close("test over")
        workers.close()
        reactor.close()
    assert got.startswith(b"220 willi.test") and finals == COMMANDS

"""XCLIENT NAME's reverse lookups (context.ReverseNames): one job for the
sessions that ask for the same address at once, each answered as its own,
so a fault in one session's callback ends that session, not the one that
happened to ask first."""

from __future__ import annotations

from tests.test_reactor import run_until
from willi.context import ReverseNames
from willi.reactor import Reactor
from willi.workers import WorkerPool


class Asker:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.faults: list[BaseException] = []

    def fatal(self, exc: BaseException) -> None:
        self.faults.append(exc)


def test_a_fault_in_one_askers_callback_ends_that_asker_only() -> None:
    reactor = Reactor()
    workers = WorkerPool(reactor, threads=1)
    names = ReverseNames(reactor, workers)
    first, second = Asker(), Asker()

    def broken(name: str) -> None:
        raise RuntimeError("the second asker's bug")

    # Both ask in the same turn of the loop (one job), each from a callback of its own.
    reactor.call_soon(names.lookup, "127.0.0.1", first.names.append, owner=first)
    reactor.call_soon(names.lookup, "127.0.0.1", broken, owner=second)
    run_until(reactor, lambda: bool(first.names) and bool(second.faults))
    workers.close()
    reactor.close()
    assert len(first.names) == 1 and first.faults == []
    assert [str(exc) for exc in second.faults] == ["the second asker's bug"]

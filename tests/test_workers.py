"""The worker pool: results and errors come back on the reactor thread; a full
queue refuses at once instead of growing."""

import threading

import pytest

from tests.test_reactor import run_until
from willi.reactor import Reactor
from willi.workers import PoolFull, WorkerPool


def test_results_and_errors_come_back_on_the_reactor_thread() -> None:
    reactor = Reactor()
    pool = WorkerPool(reactor, threads=2)
    results: list[tuple] = []

    def failing() -> None:
        raise ValueError("boom")

    pool.submit(lambda x: (x * 2, threading.get_ident()), (21,), lambda r, e: results.append((r, e, threading.get_ident())))
    pool.submit(failing, (), lambda r, e: results.append((r, e, threading.get_ident())))
    run_until(reactor, lambda: len(results) == 2)
    pool.close()
    reactor.close()
    by_kind = {type(e).__name__: (r, tid) for r, e, tid in results}
    (value, worker_tid), reactor_tid = by_kind["NoneType"][0], by_kind["NoneType"][1]
    assert value == 42 and worker_tid != threading.get_ident() and reactor_tid == threading.get_ident()
    assert by_kind["ValueError"] == (None, threading.get_ident())


def test_a_full_queue_refuses_new_jobs_at_once() -> None:
    reactor = Reactor()
    release = threading.Event()
    pool = WorkerPool(reactor, threads=1, queue_limit=1)
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(5)

    pool.submit(block, (), lambda r, e: None)
    assert started.wait(5)
    pool.submit(block, (), lambda r, e: None)  # waits in the queue
    with pytest.raises(PoolFull):
        pool.submit(block, (), lambda r, e: None)
    release.set()
    pool.close()
    reactor.close()


def test_a_fault_in_a_result_callback_ends_the_owner_that_submitted_the_job() -> None:
    # A session's lookup answered by a worker: if handling the answer raises, that
    # session ends (its fatal), it is not left waiting for ever with the fault only logged.
    reactor = Reactor()
    pool = WorkerPool(reactor, threads=1)
    ended: list[BaseException] = []

    class Session:
        def fatal(self, exc: BaseException) -> None:
            ended.append(exc)

        def submit(self) -> None:
            pool.submit(lambda: "route", (), self.answered)

        def answered(self, result: object, exc: BaseException | None) -> None:
            raise RuntimeError(f"cannot handle {result}")

    session = Session()
    reactor.call_soon(session.submit, owner=session)  # submitted from the session's own callback
    run_until(reactor, lambda: bool(ended))
    pool.close()
    reactor.close()
    assert [str(exc) for exc in ended] == ["cannot handle route"]

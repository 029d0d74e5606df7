"""The reactor: timers in order, cancellation, thread-safe wake-ups, signals."""

import os
import signal
import threading

from willi.reactor import Reactor


def run_until(reactor: Reactor, predicate, timeout: float = 5.0) -> None:
    deadline = reactor.time() + timeout
    guard = reactor.call_later(timeout, reactor.stop)

    def check() -> None:
        if predicate() or reactor.time() >= deadline:
            reactor.stop()
        else:
            reactor.call_later(0.001, check)

    reactor.call_soon(check)
    reactor.run()
    guard.cancel()


def test_timers_fire_in_deadline_order_and_cancelled_ones_never_fire() -> None:
    reactor = Reactor()
    fired: list[str] = []
    reactor.call_later(0.03, fired.append, "late")
    reactor.call_later(0.01, fired.append, "early")
    reactor.call_later(0.02, fired.append, "cancelled").cancel()
    run_until(reactor, lambda: len(fired) == 2)
    reactor.close()
    assert fired == ["early", "late"]


def test_a_worker_thread_wakes_the_reactor_through_the_socketpair() -> None:
    reactor = Reactor()
    seen: list[str] = []
    thread = threading.Thread(target=lambda: reactor.call_soon_threadsafe(seen.append, threading.current_thread().name))
    reactor.call_soon(thread.start)
    run_until(reactor, lambda: bool(seen))
    thread.join()
    reactor.close()
    assert seen and seen[0] != threading.main_thread().name


def test_a_signal_runs_its_handler_on_the_reactor_thread() -> None:
    reactor = Reactor()
    got: list[int] = []
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        reactor.add_signal_handler(signal.SIGUSR1, lambda: got.append(threading.get_ident()))
        reactor.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        run_until(reactor, lambda: bool(got))
    finally:
        signal.signal(signal.SIGUSR1, previous)
        reactor.close()
    assert got == [threading.get_ident()]


def test_callbacks_queued_by_callbacks_run_on_the_next_turn() -> None:
    reactor = Reactor()
    order: list[int] = []

    def first() -> None:
        order.append(1)
        reactor.call_soon(order.append, 3)

    reactor.call_soon(first)
    reactor.call_soon(order.append, 2)
    run_until(reactor, lambda: len(order) == 3)
    reactor.close()
    assert order == [1, 2, 3]


def test_cancelled_long_timers_do_not_pile_up_in_the_heap() -> None:
    reactor = Reactor()
    keep = reactor.call_later(300, lambda: None)
    for _ in range(10_000):
        reactor.call_later(300, lambda: None).cancel()
    assert len(reactor._timers) < 600 and not keep.cancelled
    fired: list[bool] = []
    reactor.call_later(0.001, fired.append, True)
    run_until(reactor, lambda: bool(fired))
    reactor.close()
    assert fired == [True]

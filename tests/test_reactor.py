"""The reactor: timers in order, cancellation, thread-safe wake-ups, signals."""

import os
import selectors
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


# --- the per-callback guard (issue 9 item 1) ------------------------------------
class Owner:
    """Stands for a session: a socket pair end it reads, and a fatal path."""

    def __init__(self, reactor: Reactor, name: str) -> None:
        import socket

        self.reactor = reactor
        self.name = name
        self.mine, self.peer = socket.socketpair()
        self.mine.setblocking(False)
        self.read: list[bytes] = []
        self.faults: list[BaseException] = []
        reactor.register(self.mine, selectors.EVENT_READ, self)

    def on_readable(self) -> None:
        data = self.mine.recv(100)
        if data == b"boom":
            raise RuntimeError(f"{self.name} broke")
        self.read.append(data)

    def on_writable(self) -> None:
        return None

    def fatal(self, exc: BaseException) -> None:
        self.faults.append(exc)
        self.reactor.unregister(self.mine)

    def close(self) -> None:
        self.reactor.unregister(self.mine)
        self.mine.close()
        self.peer.close()


def test_a_handler_that_raises_ends_only_itself_and_the_other_session_keeps_working() -> None:
    reactor = Reactor()
    unowned: list[BaseException] = []
    reactor.on_fault = lambda exc, owner: unowned.append(exc)
    broken, healthy = Owner(reactor, "broken"), Owner(reactor, "healthy")
    try:
        broken.peer.send(b"boom")
        healthy.peer.send(b"one")
        run_until(reactor, lambda: bool(broken.faults) and bool(healthy.read))
        healthy.peer.send(b"two")
        run_until(reactor, lambda: len(healthy.read) == 2)
    finally:
        broken.close()
        healthy.close()
        reactor.close()
    assert [str(e) for e in broken.faults] == ["broken broke"]
    assert healthy.read == [b"one", b"two"] and not healthy.faults
    assert not unowned and reactor.faults == 1


def test_a_timer_fault_goes_to_the_owner_it_was_scheduled_for_or_the_one_running_then() -> None:
    reactor = Reactor()
    explicit, inherited = Owner(reactor, "explicit"), Owner(reactor, "inherited")

    def boom() -> None:
        raise ValueError("timer broke")

    def schedule_from_inside() -> None:
        reactor.call_soon(boom)  # no owner given: the one whose callback runs now

    try:
        reactor.call_later(0.001, boom, owner=explicit)
        reactor.call_soon(schedule_from_inside, owner=inherited)
        run_until(reactor, lambda: bool(explicit.faults) and bool(inherited.faults))
    finally:
        explicit.close()
        inherited.close()
        reactor.close()
    assert [str(e) for e in explicit.faults] == ["timer broke"]
    assert [str(e) for e in inherited.faults] == ["timer broke"]


def test_a_fault_without_an_owner_is_reported_once_and_the_loop_goes_on() -> None:
    reactor = Reactor()
    reported: list[tuple[BaseException, object]] = []
    reactor.on_fault = lambda exc, owner: reported.append((exc, owner))
    after: list[str] = []

    def boom() -> None:
        raise KeyError("nobody's")

    reactor.call_soon(boom)
    reactor.call_soon(after.append, "still running")
    run_until(reactor, lambda: bool(after))
    reactor.close()
    assert [(repr(e), o) for e, o in reported] == [("KeyError(\"nobody's\")", None)]
    assert after == ["still running"]


def test_when_the_owners_fatal_path_fails_too_both_are_reported() -> None:
    reactor = Reactor()
    reported: list[BaseException] = []
    reactor.on_fault = lambda exc, owner: reported.append(exc)

    class Clumsy:
        def fatal(self, exc: BaseException) -> None:
            raise RuntimeError("fatal broke")

    def boom() -> None:
        raise ValueError("first")

    reactor.call_soon(boom, owner=Clumsy())
    run_until(reactor, lambda: bool(reported))
    reactor.close()
    assert str(reported[0]) == "fatal broke" and str(reported[0].__context__) == "first"


def test_a_timer_further_away_than_epoll_can_wait_is_waited_for_in_steps() -> None:
    # epoll takes at most 2**31 ms; WILLI_CLIENT_TIMEOUT=720h must not end the loop.
    reactor = Reactor()
    fired: list[str] = []
    far = reactor.call_later(30 * 24 * 3600.0, fired.append, "far")

    def woken() -> None:
        fired.append("woken")
        reactor.stop()

    waker = threading.Timer(0.05, reactor.call_soon_threadsafe, (woken,))
    waker.start()
    try:
        reactor.run()  # waits (no OverflowError from select), is woken by the other thread, returns
    finally:
        waker.join()
        far.cancel()
        reactor.close()
    assert fired == ["woken"]

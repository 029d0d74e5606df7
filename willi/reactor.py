"""The reactor: one selector, timers, and a wake-up socketpair.

Everything Willi does happens on this one thread. Worker threads and signal
handlers never touch sessions; they hand a callback to `call_soon_threadsafe`
(or the signal machinery), which queues it and writes one byte to the wake-up
socketpair so a blocked `select()` returns (the self-pipe trick of CPython's
selector event loop). Timers are a heap with lazy cancellation: cancelling
only flags the entry, so re-arming an idle timeout costs no heap surgery.

Every callback runs under a guard (CPython asyncio's per-transport fatal
path): an exception ends only its *owner*, never the loop. A registered
handler is its own owner; a timer or call_soon belongs to the owner passed
when it was scheduled, or else to the owner whose callback was running then
(so what a session schedules while handling its socket is the session's). An
owner with a `fatal(exc)` method is handed the exception and ends itself (a
session answers `421 4.3.0`, aborts its upstream and closes); anything else
is reported through `on_fault` and the loop goes on.

The receive buffer is owned by the reactor and shared by every connection:
data is handed to its consumer as a memoryview that is valid only until the
callback returns, so an idle session holds no buffer of its own.
"""

from __future__ import annotations

import collections
import heapq
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Protocol

RECV_BUFFER_SIZE = 256 * 1024
TLS_PLAIN_BUFFER_SIZE = 64 * 1024
COMPACT_AFTER = 256
MAX_WAIT = 3600.0  # seconds one select() may wait, whatever the next timer

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Handler(Protocol):
    """What a registered file object's owner implements."""

    def on_readable(self) -> None: ...

    def on_writable(self) -> None: ...


class Faultable(Protocol):
    """An owner that can end itself when one of its callbacks raised."""

    def fatal(self, exc: BaseException) -> None: ...


FaultHook = Callable[[BaseException, Any], None]


def print_fault(exc: BaseException, owner: Any) -> None:
    """The default `on_fault`: the traceback on stderr, once."""
    print(f"willi: fault in {type(owner).__name__}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)


class Timer:
    """A scheduled call; `cancel()` is O(1) and idempotent."""

    __slots__ = ("when", "callback", "args", "cancelled", "reactor", "owner")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple, reactor: "Reactor",
                 owner: Any = None) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.reactor = reactor
        self.owner = owner

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _noop
            self.args = ()
            self.reactor._timer_cancelled()

    def __lt__(self, other: "Timer") -> bool:
        return self.when < other.when


def _noop(*_args: Any) -> None:
    return None


class Reactor:
    """Selector loop with timers, thread-safe callbacks and signal delivery."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._ready: collections.deque[tuple[Callable[..., Any], tuple, Any]] = collections.deque()
        self._threadsafe: collections.deque[tuple[Callable[..., Any], tuple, Any]] = collections.deque()
        self._signals: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, READ, self)
        self._running = False
        self.recv_buffer = bytearray(RECV_BUFFER_SIZE)
        self.recv_view = memoryview(self.recv_buffer)
        # Decrypted plaintext lands here while recv_buffer still holds the
        # ciphertext it came from.
        self.tls_view = memoryview(bytearray(TLS_PLAIN_BUFFER_SIZE))
        self.time = time.monotonic
        self._owner: Any = None  # whose callback is running now
        self.on_fault: FaultHook = print_fault  # faults no owner took (Context routes them to the Observer)
        self.faults = 0

    # --- registration -------------------------------------------------------
    def register(self, fileobj: Any, events: int, handler: Handler) -> None:
        self._selector.register(fileobj, events, handler)

    def modify(self, fileobj: Any, events: int, handler: Handler) -> None:
        self._selector.modify(fileobj, events, handler)

    def unregister(self, fileobj: Any) -> None:
        try:
            self._selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # --- scheduling ---------------------------------------------------------
    def call_soon(self, callback: Callable[..., Any], *args: Any, owner: Any = None) -> None:
        """Run callback next turn; a fault in it ends `owner` (default: the
        owner whose callback is running now)."""
        self._ready.append((callback, args, owner if owner is not None else self._owner))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any, owner: Any = None) -> Timer:
        timer = Timer(self.time() + delay, callback, args, self, owner if owner is not None else self._owner)
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        """Cancelled timers stay in the heap until due; when they are the
        majority, rebuild it, so long timeouts that are almost always
        cancelled (300s per upstream command) do not pile up under load."""
        self._cancelled += 1
        if self._cancelled > COMPACT_AFTER and self._cancelled * 2 > len(self._timers):
            self._timers = [t for t in self._timers if not t.cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any, owner: Any = None) -> None:
        """From any thread: run callback on the reactor thread soon; a fault
        in it ends `owner` (None: it is only reported)."""
        self._threadsafe.append((callback, args, owner))  # deque.append is atomic
        self._wake()

    @property
    def owner(self) -> Any:
        """Whose callback is running now (None outside any): work handed to
        another thread and back belongs to it."""
        return self._owner

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full: the reactor is awake anyway
        except OSError:
            pass  # closed during shutdown

    # --- signals ------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[], None]) -> None:
        """Run callback on the reactor thread when signum arrives.

        The Python-level handler only records the signal; `set_wakeup_fd`
        makes the C handler write to our socketpair, so select() returns even
        though PEP 475 would otherwise retry it.
        """
        self._signals[signum] = callback
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        callback = self._signals.get(signum)
        if callback is not None:
            self._threadsafe.append((callback, (), None))

    # --- the loop -----------------------------------------------------------
    def on_readable(self) -> None:
        """The wake-up socket: drain it; queued callbacks run in `_run_ready`."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def on_writable(self) -> None:  # pragma: no cover - never registered for write
        return None

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        select = self._selector.select
        while self._running:
            events = select(self._timeout())
            for key, mask in events:
                handler = key.data
                self._owner = handler
                try:
                    if mask & READ:
                        handler.on_readable()
                    if mask & WRITE and key.fileobj.fileno() != -1:
                        handler.on_writable()
                except Exception as exc:
                    self._fault(handler, exc)
            self._owner = None
            self._run_timers()
            self._run_ready()

    def _fault(self, owner: Any, exc: Exception) -> None:
        """The guard: end the owner of the callback that raised, not the loop."""
        self.faults += 1
        self._owner = None
        fatal = getattr(owner, "fatal", None)
        if fatal is not None:
            try:
                fatal(exc)
                return
            except Exception as second:  # its fatal path failed too: report both
                second.__context__ = exc
                exc = second
        try:
            self.on_fault(exc, owner)
        except Exception:  # pragma: no cover - the reporter itself is broken
            print_fault(exc, owner)

    def _timeout(self) -> float | None:
        if self._ready or self._threadsafe:
            return 0
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
            self._cancelled -= 1
        if not timers:
            return None
        # epoll takes at most 2**31 ms (24.8 days): a longer timer is waited for in steps.
        return min(max(0.0, timers[0].when - self.time()), MAX_WAIT)

    def _run_timers(self) -> None:
        timers = self._timers
        if not timers:
            return
        now = self.time()
        while timers and timers[0].when <= now:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer.cancelled = True  # fired: a later cancel() is a no-op
                self._ready.append((timer.callback, timer.args, timer.owner))

    def _run_ready(self) -> None:
        threadsafe = self._threadsafe
        while threadsafe:
            self._ready.append(threadsafe.popleft())
        ready = self._ready
        # Only what is queued now: callbacks that queue more run next turn.
        for _ in range(len(ready)):
            callback, args, owner = ready.popleft()
            self._owner = owner
            try:
                callback(*args)
            except Exception as exc:
                self._fault(owner, exc)
        self._owner = None

    def close(self) -> None:
        if signal.getsignal(signal.SIGINT) is not None and self._signals:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass  # not the main thread
        self._selector.unregister(self._wake_r)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

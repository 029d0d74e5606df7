"""A small bounded pool of threads for blocking work (MySQL, DNS).

The reactor must never block, so anything that might (a database query, a
`getaddrinfo`) is submitted here. Results come back on the reactor thread
through `Reactor.call_soon_threadsafe`, i.e. through the wake-up socketpair.
The job queue is capped: when it is full, `submit` fails at once and the
caller answers with a temporary error instead of queueing without bound.
Callers that may move on before the answer arrives (a session that closed, a
lookup that timed out) guard their callback with a token of their own.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from willi.reactor import Reactor

Callback = Callable[[Any, BaseException | None], None]
_STOP = object()


class PoolFull(Exception):
    """The job queue is at its cap."""


class WorkerPool:
    """N daemon threads running submitted callables."""

    def __init__(self, reactor: Reactor, threads: int = 4, queue_limit: int = 1000) -> None:
        self._reactor = reactor
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=queue_limit)
        self._threads = [
            threading.Thread(target=self._work, name=f"willi-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for a thread (the willi_worker_queue_depth gauge)."""
        return self._jobs.qsize()

    def submit(self, fn: Callable[..., Any], args: tuple, callback: Callback) -> None:
        """Run fn(*args) in a thread; callback(result, exc) runs on the reactor,
        owned by whoever submitted it (a fault in it ends that session)."""
        try:
            self._jobs.put_nowait((fn, args, callback, self._reactor.owner))
        except queue.Full:
            raise PoolFull("worker queue full") from None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, callback, owner = job
            try:
                result, exc = fn(*args), None
            except Exception as error:  # handed to the reactor thread
                result, exc = None, error
            self._reactor.call_soon_threadsafe(callback, result, exc, owner=owner)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads; a thread stuck in a blocking call is left behind
        (daemon), which is why jobs must carry timeouts of their own."""
        for _ in self._threads:
            try:
                self._jobs.put(_STOP, timeout=timeout)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout)

"""Which targets failed recently (SPEC §4, WILLI_UPSTREAM_RETRY_AFTER).

A dead server should cost one session a connect timeout, not every session:
a target that failed is tried only after every other target of its list,
until `retry_after` seconds have passed.
"""

from __future__ import annotations

from typing import Callable

from willi.targets import Target


class TargetHealth:
    """Targets that failed recently, so the next session tries another first."""

    __slots__ = ("_failed", "_clock", "retry_after")

    def __init__(self, clock: Callable[[], float], retry_after: float) -> None:
        self._failed: dict[str, float] = {}
        self._clock = clock
        self.retry_after = retry_after

    def failed(self, target: Target) -> None:
        now = self._clock()
        if len(self._failed) > 10_000:
            self._failed = {k: t for k, t in self._failed.items() if now - t < self.retry_after}
        self._failed[str(target)] = now

    def succeeded(self, target: Target) -> None:
        self._failed.pop(str(target), None)

    def is_down(self, target: Target) -> bool:
        when = self._failed.get(str(target))
        return when is not None and self._clock() - when < self.retry_after

    def order(self, targets: tuple[Target, ...]) -> list[Target]:
        """Healthy targets first, in list order; those that failed recently
        only once every other one was tried."""
        up = [t for t in targets if not self.is_down(t)]
        return up + [t for t in targets if t not in up]

"""Flow control of one session's pair of connections (STYLE habit 6).

Backpressure belongs to the pair: while the upstream's out-queue is above its
high-water mark the client is not read, and while the client does not read
its replies (or has pipelined too much) it is not read either. Reading
resumes when every reason is gone; the reasons are a bitmask.
"""

from __future__ import annotations

from typing import Any

UPSTREAM_FULL = 1
CLIENT_FULL = 2
BACKLOG = 4
BACKLOG_LIMIT = 64 * 1024  # unprocessed pipelined input that stops reading


class Flow:
    """Why the client connection is not being read, and the switch."""

    __slots__ = ("conn", "paused")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.paused = 0

    def pause(self, reason: int) -> None:
        if not self.paused:
            self.conn.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.conn.closed:
                self.conn.resume_reading()

    def backlog(self, buffered: int) -> None:
        """Too much pipelined input waiting: stop reading until it is worked off."""
        if buffered > BACKLOG_LIMIT:
            self.pause(BACKLOG)
        elif self.paused & BACKLOG:
            self.resume(BACKLOG)

    @property
    def upstream_full(self) -> bool:
        return bool(self.paused & UPSTREAM_FULL)

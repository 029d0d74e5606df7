"""How long a client may take, per record rather than per byte (issue 9 item 3).

An idle timeout that every received byte re-arms is no limit at all: a
client sending one byte every few seconds holds its slot for ever, and a few
hundred such clients hold every slot. Postfix answers this with
`smtpd_per_record_deadline` (the timeout bounds each command line as a
whole, however it trickles in), `smtpd_min_data_rate` (a message body earns
time only as fast as it arrives) and stress-dependent timeouts
(`smtpd_timeout = ${stress?10}:300`: near the connection limit every client
gets the short one). `ClientDeadline` is that policy for one session:

- A command record (a line) must be complete `timeout` seconds after it
  began, which is when the previous one was read, or when Willi started
  listening again after a wait of its own (`release`). Bytes that do not
  complete the line change nothing.
- The body starts with `timeout` seconds in hand and each body chunk of n
  octets earns n / min_data_rate more, never more than `timeout` ahead of
  now: a body of S octets must arrive within timeout + S / rate, and a
  slow start is forgiven only up to `timeout` (the grace window).
- While Willi is not reading the client (waiting for the upstream, the
  client's replies unread), the client is not late: `hold` ... `release`.
- Under stress, `stress_timeout` replaces `timeout`, also for a deadline
  already running: `due()` shrinks as soon as the session asks again.

With `record_deadline` off, the old idle timeout: any byte re-arms it.

Sans-IO: the caller passes `now` (the reactor's clock) to every call and
arms its own timer at `due(now)`; nothing here touches a socket, a thread
or a log. `Stress` is the shared judgement of "near the connection limit".

How a session uses it (the hook lives in session.py): build one
`ClientDeadline(settings, stressed, now)` where the client timer is armed
today; after each feed of the command phase call `fed(lines_read, now)`
with the protocol's count of complete lines (or `line_completed` /
`command_bytes` directly),
`body_started` / `body_bytes` / `body_ended` around the streamed body,
`hold` / `release` around its own waits (an event awaiting the router or the
upstream, the upstream's back-pressure); when the timer fires, close with
421 4.4.2 if `expired(now)` gives a reason, else re-arm it at
min(due(now), now + stress_timeout), so that stress is noticed within the
stress timeout. The STARTTLS timer uses `handshake_timeout(stressed())`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    """The configuration keys behind the deadlines (README "Security")."""

    timeout: float = 300.0  # WILLI_CLIENT_TIMEOUT
    record_deadline: bool = True  # WILLI_CLIENT_RECORD_DEADLINE
    stress_timeout: float = 10.0  # WILLI_STRESS_CLIENT_TIMEOUT
    min_data_rate: int = 500  # WILLI_MIN_DATA_RATE, octets/second; 0: off
    tls_handshake_timeout: float = 30.0  # WILLI_TLS_HANDSHAKE_TIMEOUT

    def client_timeout(self, stressed: bool) -> float:
        return min(self.timeout, self.stress_timeout) if stressed else self.timeout

    def handshake_timeout(self, stressed: bool) -> float:
        """A STARTTLS handshake is bounded by the client timeout too (SPEC §2),
        and under stress by the stress value (Postfix's smtpd_starttls_timeout)."""
        return min(self.tls_handshake_timeout, self.client_timeout(stressed))


@dataclass(frozen=True, slots=True)
class Stress:
    """"Near WILLI_MAX_CONNECTIONS": at least `threshold` percent of it in use
    (WILLI_STRESS_THRESHOLD). One per process, asked with the session count."""

    max_connections: int
    threshold: int = 80  # percent

    def __call__(self, sessions: int) -> bool:
        return sessions * 100 >= self.max_connections * self.threshold


IDLE = "client timeout"
RECORD = "command line deadline"
DATA_RATE = "body below the minimum data rate"


class ClientDeadline:
    """One session's client deadline; see the module docstring for the rules."""

    __slots__ = ("settings", "_stressed", "_deadline", "_stress_deadline", "_held", "_body", "_lines",
                 "_timeout", "_stress_timeout")

    def __init__(self, settings: DeadlineSettings, stressed: Callable[[], bool], now: float) -> None:
        self.settings = settings
        # Re-armed for every line: the settings are frozen, so read them once.
        self._timeout = settings.client_timeout(False)
        self._stress_timeout = settings.client_timeout(True)
        self._stressed = stressed
        self._held = 0
        self._body = False
        # Two clocks run side by side, so that stress can shorten a deadline
        # already running to exactly what it would have been under stress.
        self._deadline = 0.0
        self._stress_deadline = 0.0
        self._lines = 0
        self.record_started(now)

    # --- what the session reports ------------------------------------------------
    def record_started(self, now: float) -> None:
        """A new command record begins: the greeting went out, or a line was read."""
        self._arm(now)

    def line_completed(self, now: float) -> None:
        """A whole command line was read (call once per line taken from the
        line buffer): the next record starts now."""
        self._body = False
        self._arm(now)

    def command_bytes(self, now: float) -> None:
        """Bytes arrived that did not complete a line. Per record: no effect."""
        if not self.settings.record_deadline:
            self._arm(now)

    def fed(self, lines_read: int, now: float) -> None:
        """After a feed in the command phase, with the protocol's running count
        of complete (LF-ended) lines: line_completed if it moved, else
        command_bytes. The count must not move for the bytes skipped of an
        over-long line, or a line without end would re-arm the deadline."""
        if lines_read != self._lines:
            self._lines = lines_read
            self._body = False  # line_completed
        elif self.settings.record_deadline:
            return  # command_bytes: per record, no effect
        self._arm(now)

    def body_started(self, now: float) -> None:
        """The 354 went out: the body has `timeout` seconds in hand."""
        self._body = True
        self._arm(now)

    def body_bytes(self, n: int, now: float) -> None:
        """n octets of body arrived: earn n / min_data_rate seconds, at most
        up to `timeout` from now (without a rate, or per byte: re-arm)."""
        rate = self.settings.min_data_rate
        if not self.settings.record_deadline or rate <= 0:
            self._arm(now)
            return
        earned = n / rate
        self._deadline = min(self._deadline + earned, now + self._timeout)
        self._stress_deadline = min(self._stress_deadline + earned, now + self._stress_timeout)

    def body_ended(self, now: float) -> None:
        """The end of data was read: commands again, a fresh record."""
        self.line_completed(now)

    def hold(self, now: float) -> None:
        """Willi stopped reading the client for reasons of its own (nested: each
        hold needs its release)."""
        self._held += 1

    def release(self, now: float) -> None:
        """Willi listens again: the client gets a full `timeout` from now."""
        if self._held:
            self._held -= 1
            if not self._held:
                self._arm(now)

    # --- what the session asks -------------------------------------------------------
    def due(self, now: float) -> float:
        """When the session's timer should fire (math.inf while held)."""
        if self._held:
            return math.inf
        # Under stress a running deadline shrinks to the stress one.
        return self._stress_deadline if self._stressed() else self._deadline

    def expired(self, now: float) -> str | None:
        """Why the client is out of time (for the log), or None."""
        if now < self.due(now):
            return None
        if not self.settings.record_deadline:
            why = IDLE
        elif self._body and self.settings.min_data_rate > 0:
            why = DATA_RATE
        else:
            why = RECORD
        return why + " (under stress)" if self._stressed() else why

    @property
    def held(self) -> bool:
        return bool(self._held)

    # --- inside -------------------------------------------------------------------------
    def _arm(self, now: float) -> None:
        self._deadline = now + self._timeout
        self._stress_deadline = now + self._stress_timeout

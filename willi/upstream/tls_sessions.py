"""TLS sessions kept per upstream target, so the next handshake is resumed.

A full TLS handshake costs the proxy an ECDHE key exchange and a
certificate chain check; a resumed one (a session ticket, RFC 8446 §2.2)
costs neither. Postfix keeps `smtp_tls_session_cache_database` for the same
reason. Here the cache is a small LRU in memory, one entry per key:

* The key is what a session may be offered for: the target (scheme, host,
  port, so the SNI name too) and whether the route verifies. A session is
  also bound to the SSLContext it came from (CPython refuses it on another),
  so each entry remembers its context and a lookup with any other context
  finds nothing and drops the entry. The client certificate presented
  (WILLI_UPSTREAM_TLS_CERT) lives in that context, one per verify mode,
  rebuilt by a SIGHUP: a session is never offered under another identity.
* Bounded: past `max_entries` the least recently used entry goes.
* A failed handshake drops the target's entry: the next one is full.
* Expired sessions (OpenSSL's `time + timeout`, wall-clock seconds) are
  not offered.

When the session is taken matters under TLS 1.3: the server sends its
tickets after the handshake, so `sslobj.session` right after it holds nothing
to resume with. The dialer takes it when the upstream's first reply after the
handshake has been read (the EHLO reply after STARTTLS, the greeting with
implicit TLS): the server writes its tickets before it answers, so they have
been processed by then. `resumable()` checks that a ticket (or, under TLS
1.2, a session id) is there.

Taking a session is not free in CPython: under TLS 1.3 the `session` getter
copies it (a serialise/parse round trip that parses the peer certificate
again, about 0.2 ms, as much as resuming saves in the handshake). So after a
resumed handshake the kept session stays and is offered again, as long as it
is younger than half its lifetime; a new one is taken after a full handshake,
for an old one, and always for a target that declined a session it had
accepted before (single-use tickets, RFC 8446 §8.1, or rotated keys). Reusing
a ticket lets an observer link the connections (RFC 8446 §C.4), which between
a proxy and its own upstreams tells nothing the addresses do not.
"""

from __future__ import annotations

import collections
import ssl
import time
from collections.abc import Hashable
from typing import Callable

DEFAULT_MAX_ENTRIES = 1024  # targets: a session is a few hundred bytes


def resumable(session: ssl.SSLSession | None) -> bool:
    """True if offering this session can resume (it carries a ticket or an id)."""
    return session is not None and (session.has_ticket or bool(session.id))


class _Entry:
    __slots__ = ("context", "session", "uses", "single_use")

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession, single_use: bool) -> None:
        self.context = context
        self.session = session
        self.uses = 0  # handshakes that resumed it
        self.single_use = single_use  # the target declined it once after accepting it


class SessionCache:
    """An LRU of (context, SSLSession) per key; all calls on the reactor thread."""

    __slots__ = ("max_entries", "_clock", "_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock  # wall clock: SSLSession.time is seconds since the epoch
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session to offer for key with this context, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.context is not context or self._expired(entry.session):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.session

    def put(self, key: Hashable, context: ssl.SSLContext, session: ssl.SSLSession | None,
            single_use: bool = False) -> bool:
        """Keep session for key (replacing the older one); False if it cannot resume."""
        if session is None or not resumable(session) or self._expired(session):
            return False
        self._entries[key] = _Entry(context, session, single_use)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def completed(self, key: Hashable, context: ssl.SSLContext, offered: ssl.SSLSession | None,
                  resumed: bool, current: Callable[[], ssl.SSLSession | None]) -> None:
        """A handshake for key finished (and its first reply was read): keep the
        offered session if it resumed and may serve again, else take `current()`."""
        entry = self._entries.get(key)
        ours = entry is not None and offered is not None and entry.session is offered
        if resumed and ours and entry is not None and not entry.single_use \
                and not self._aging(entry.session):
            entry.uses += 1
            return
        declined_again = ours and entry is not None and not resumed and entry.uses > 0
        single_use = declined_again or (entry is not None and entry.single_use)
        if not self.put(key, context, current(), single_use):
            self._entries.pop(key, None)

    def drop(self, key: Hashable) -> None:
        """Forget key's session (its handshake failed)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def _expired(self, session: ssl.SSLSession) -> bool:
        return session.time + session.timeout <= self._clock()

    def _aging(self, session: ssl.SSLSession) -> bool:
        """Past half its lifetime: time to take the fresher one the server sent."""
        return session.time + session.timeout / 2 <= self._clock()

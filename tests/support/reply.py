"""One complete upstream reply parsed from its bytes, for the tests that drive
Willi's sans-IO upstream code with scripted replies."""

from __future__ import annotations

from willi.smtp.reply import Reply, ReplyReader


def reply(raw: bytes) -> Reply:
    """The Reply `raw` holds: exactly one, nothing left over."""
    reader = ReplyReader()
    reader.feed(raw)
    parsed = reader.next_reply()
    assert parsed is not None and not reader.pending
    return parsed

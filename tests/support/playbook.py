"""A Playbook for the relay machine (mitmproxy's tutils.Playbook, small).

A test writes the conversation: `>> event` is what happens (the client
says, the router answers, the upstream says), `<< command` is what Willi
must do next, in order. `assert playbook` plays it against a fresh machine
and fails with both sides side by side at the first difference. Records
(Emit) and notices are left out of the comparison unless asked for; they
are kept in `playbook.records` / `playbook.notices` for their own asserts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from willi.relay import Relay
from willi.relay import commands as c
from willi.relay import events as e
from willi.routing import Route
from willi.smtp.address import Address
from willi.smtp.reply import ReplyReader


def addr(text: str) -> Address:
    local, _, domain = text.partition("@")
    return Address(local, domain)


def reply(raw: bytes) -> e.UpstreamReplied:
    """The upstream says `raw` (one complete reply)."""
    reader = ReplyReader()
    reader.feed(raw)
    parsed = reader.next_reply()
    assert parsed is not None, raw
    return e.UpstreamReplied(parsed)


def rcpt(to: str, sender: str = "s@origin.test", **params: str | None) -> e.ClientRcpt:
    return e.ClientRcpt(addr(to), addr(sender), dict(params), "client.test", None)


@dataclass
class FakeLink:
    """What the relay reads of a link; `closed` can be flipped by a test."""

    route: Route
    capabilities: dict[str, str] = field(default_factory=lambda: {"PIPELINING": "", "SIZE": "100000000",
                                                                   "8BITMIME": "", "SMTPUTF8": ""})
    reused: bool = False
    is_lmtp: bool = False
    is_closed: bool = False
    tls: str | None = None
    tls_verified: bool = False

    @property
    def target(self) -> str:
        return f"smtp://{self.route.server}"

    @property
    def name(self) -> str:
        return self.target

    @property
    def lmtp(self) -> bool:
        return self.is_lmtp

    @property
    def closed(self) -> bool:
        return self.is_closed


def machine(max_size: int = 1000, strict: bool = True, split: bool = True, max_recipients: int = 100) -> Relay:
    return Relay("s1", "192.0.2.7", max_size, strict, split, max_recipients)


class Playbook:
    """`pb >> event << command << command ...`; `assert pb` plays it."""

    def __init__(self, relay: Relay | None = None, hide: tuple[type, ...] = (c.Emit, c.Notice)) -> None:
        self.relay = relay if relay is not None else machine()
        self.hide = hide
        self.script: list[tuple[e.Event, list[c.Command]]] = []
        self.records: list[Any] = []
        self.notices: list[c.Notice] = []
        self.now = 100.0
        self._played = 0

    def __rshift__(self, event: e.Event) -> "Playbook":
        self.script.append((event, []))
        return self

    def __lshift__(self, command: c.Command) -> "Playbook":
        assert self.script, "a command before any event"
        self.script[-1][1].append(command)
        return self

    def __bool__(self) -> bool:
        for index in range(self._played, len(self.script)):
            event, expected = self.script[index]
            self.now += 1.0
            got = self.relay.handle(event, self.now)
            self.records += [record for cmd in got if isinstance(cmd, c.Emit) for record in cmd.records]
            self.notices += [cmd for cmd in got if isinstance(cmd, c.Notice)]
            shown = [cmd for cmd in got if not isinstance(cmd, self.hide)]
            if _normal(shown) != _normal(expected):
                raise AssertionError(_diff(self.script[: index + 1], shown))
        self._played = len(self.script)
        return True


def _normal(commands: list[c.Command]) -> list[Any]:
    """Memoryviews compare by their bytes."""
    out = []
    for cmd in commands:
        if isinstance(cmd, c.SendBody):
            out.append(("SendBody", bytes(cmd.data)))
        elif isinstance(cmd, c.FeedClient):
            out.append(("FeedClient", bytes(cmd.data)))
        else:
            out.append(cmd)
    return out


def _diff(played: list[tuple[e.Event, list[c.Command]]], got: list[c.Command]) -> str:
    lines = ["the conversation so far:"]
    for event, expected in played[:-1]:
        lines.append(f"  >> {event}")
        lines += [f"  << {cmd}" for cmd in expected]
    event, expected = played[-1]
    lines.append(f"  >> {event}")
    lines.append("  expected:")
    lines += [f"    << {x}" for x in _normal(expected)] or ["    (nothing)"]
    lines.append("  but Willi did:")
    lines += [f"    << {x}" for x in _normal(got)] or ["    (nothing)"]
    return "\n".join(lines)

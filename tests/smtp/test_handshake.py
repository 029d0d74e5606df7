"""The upstream handshake (SPEC §4), driven over scripted replies, no
sockets: greeting, EHLO/LHLO/HELO, STARTTLS policies, XCLIENT and the
greeting after it, the PROXY header, AUTH. Each test reads as the
conversation: Willi sends, the upstream answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.reply import reply
from willi import replies
from willi.errors import UpstreamError, UpstreamUnavailable
from willi.smtp import handshake as hs
from willi.smtp import xtext
from willi.smtp.handshake import Credentials, Greeted, Handshake, HandshakeSettings
from willi.smtp.reply import Reply
from willi.smtp.upstream import ClientInfo, xclient_commands

EXPECT, START_TLS, NEED_NAME = hs.Expect(), hs.StartTLS(), hs.NeedName()
XCLIENT_ALL = "XCLIENT NAME ADDR PORT PROTO HELO"
CLIENT = ClientInfo("192.0.2.7", 40123, "client.example", True)


def ehlo_reply(name: str, caps: list[str]) -> Reply:
    return reply(replies.ehlo(name, caps))


class Upstream:
    """A scripted upstream: answers each step of the handshake and records it."""

    def __init__(self, caps: list[str] | None = None, *, tls_caps: list[str] | None = None,
                 xclient_caps: list[str] | None = None, greeting: bytes = b"220 up.example ESMTP\r\n",
                 ehlo: bytes | None = None, helo: bytes = b"250 up.example\r\n",
                 starttls: bytes = b"220 2.0.0 Ready to start TLS\r\n",
                 xclient: bytes = b"220 up.example ESMTP\r\n", name: str | None = "client.example",
                 auth: bytes = b"235 2.7.0 Authentication successful\r\n") -> None:
        self.caps = caps if caps is not None else ["PIPELINING", "SIZE 1000"]
        self.tls_caps = tls_caps if tls_caps is not None else [c for c in self.caps if c != "STARTTLS"]
        self.xclient_caps = xclient_caps
        self.greeting, self.ehlo, self.helo = greeting, ehlo, helo
        self.starttls, self.xclient, self.name, self.auth = starttls, xclient, name, auth
        self.written: list[bytes] = []  # bytes before the greeting (the PROXY header)
        self.steps: list[Any] = []
        self.tls = False
        self.xclient_done = False

    def respond(self, command: hs.Command) -> hs.Event:
        """What the upstream (or the driver) answers to one command."""
        step: Any = command.data if isinstance(command, hs.Send) else command
        self.steps.append(step)
        if step == EXPECT:
            return reply(self.greeting)
        if step == START_TLS:
            self.tls = True
            return hs.TLSDone()
        if step == NEED_NAME:
            return hs.NameResolved(self.name or "[UNAVAILABLE]")
        if getattr(self, "challenged", False):  # the SASL response to our 334 (RFC 4954 §4)
            self.challenged = False
            return reply(self.auth)
        assert isinstance(step, bytes) and step.endswith(b"\r\n") and len(step) <= 512, step
        verb = step.split()[0]
        if verb in (b"EHLO", b"LHLO"):
            if self.ehlo is not None:
                return reply(self.ehlo)
            if self.xclient_done and self.xclient_caps is not None:
                return ehlo_reply("up.example", self.xclient_caps)
            return ehlo_reply("up.example", self.tls_caps if self.tls else self.caps)
        if verb == b"HELO":
            return reply(self.helo)
        if verb == b"STARTTLS":
            return reply(self.starttls)
        if verb == b"XCLIENT":
            self.xclient_done = True
            return reply(self.xclient)
        if step == b"AUTH PLAIN\r\n":
            self.challenged = True
            return reply(b"334 \r\n")
        if verb == b"AUTH":
            return reply(self.auth)
        raise AssertionError(f"unexpected command {step!r}")

    @property
    def commands(self) -> list[bytes]:
        return [step for step in self.steps if isinstance(step, bytes)]

    @property
    def verbs(self) -> list[str]:
        names = {EXPECT: "EXPECT", START_TLS: "START_TLS", NEED_NAME: "NEED_NAME"}
        return [s.split()[0].decode() if isinstance(s, bytes) else names[s] for s in self.steps]

    @property
    def xclient_lines(self) -> list[bytes]:
        return [c for c in self.commands if c.startswith(b"XCLIENT")]


def run(upstream: Upstream, client: ClientInfo = CLIENT, **options: Any) -> Greeted:
    """Drive a Handshake over the scripted upstream: its Done, or its error raised."""
    handshake = Handshake(HandshakeSettings("willi.example", **options), client)
    pending = list(handshake.start())
    for _ in range(100):
        command = pending.pop(0)
        if isinstance(command, hs.Done):
            assert not pending and handshake.state is hs.State.DONE
            return command.greeted
        if isinstance(command, hs.Failed):
            assert not pending and handshake.state is hs.State.DONE
            raise command.error
        if isinstance(command, hs.Write):
            assert not upstream.steps, "a Write after the conversation began"
            upstream.written.append(command.data)
            continue
        pending += handshake.handle(upstream.respond(command))
    raise AssertionError("the handshake did not end")


def xclient_pairs(lines: list[bytes]) -> dict[str, bytes]:
    pairs: dict[str, bytes] = {}
    for line in lines:
        for item in line[:-2].split(b" ")[1:]:
            key, _, value = item.partition(b"=")
            assert key.decode() not in pairs, f"{key!r} sent twice"
            pairs[key.decode()] = value
    return pairs


# --- greeting and EHLO ------------------------------------------------------------
def test_plain_handshake_greeting_then_ehlo_with_our_hostname() -> None:
    upstream = Upstream(["PIPELINING", "SIZE 1000", "8BITMIME"])
    greeted = run(upstream)
    assert upstream.steps == [EXPECT, b"EHLO willi.example\r\n"]
    assert greeted.capabilities == {"PIPELINING": "", "SIZE": "1000", "8BITMIME": ""}
    assert not greeted.tls and not greeted.xclient


@pytest.mark.parametrize("greeting", [b"554 5.7.1 go away\r\n", b"421 4.3.2 busy\r\n", b"250 hello\r\n",
                                      b"221 bye\r\n"])
def test_greeting_other_than_220_fails_the_target(greeting: bytes) -> None:
    upstream = Upstream(greeting=greeting)
    with pytest.raises(UpstreamError):
        run(upstream)
    assert upstream.steps == [EXPECT]


def test_multi_line_220_greeting_is_fine() -> None:
    assert run(Upstream(greeting=b"220-up.example\r\n220 ESMTP\r\n")).capabilities


def test_ehlo_refused_with_5xx_falls_back_to_helo() -> None:
    upstream = Upstream(ehlo=b"502 5.5.1 EHLO not implemented\r\n")
    greeted = run(upstream)
    assert upstream.commands == [b"EHLO willi.example\r\n", b"HELO willi.example\r\n"]
    assert greeted.capabilities == {}


def test_ehlo_refused_with_4xx_fails_without_helo() -> None:
    upstream = Upstream(ehlo=b"421 4.3.2 busy\r\n")
    with pytest.raises(UpstreamError):
        run(upstream)
    assert upstream.verbs == ["EXPECT", "EHLO"]


def test_helo_refused_too_fails_the_target() -> None:
    with pytest.raises(UpstreamError):
        run(Upstream(ehlo=b"500 5.5.2 what\r\n", helo=b"501 5.5.4 no\r\n"))


def test_lmtp_says_lhlo() -> None:
    upstream = Upstream()
    run(upstream, lmtp=True)
    assert upstream.commands == [b"LHLO willi.example\r\n"]


def test_lmtp_never_falls_back_to_helo() -> None:
    upstream = Upstream(ehlo=b"500 5.5.2 what\r\n")
    with pytest.raises(UpstreamError):
        run(upstream, lmtp=True)
    assert upstream.verbs == ["EXPECT", "LHLO"]


def test_lmtp_says_lhlo_again_after_starttls_and_xclient() -> None:
    upstream = Upstream(["STARTTLS", XCLIENT_ALL])
    run(upstream, lmtp=True, starttls="opportunistic")
    assert "EHLO" not in upstream.verbs and "HELO" not in upstream.verbs
    assert upstream.verbs.count("LHLO") == 3


# --- STARTTLS ------------------------------------------------------------------------
def test_if_client_without_client_tls_stays_plain() -> None:
    upstream = Upstream(["STARTTLS"])
    greeted = run(upstream, starttls="if-client", client_tls=False)
    assert "STARTTLS" not in upstream.verbs and not greeted.tls


def test_if_client_with_client_tls_uses_starttls_and_says_ehlo_again() -> None:
    upstream = Upstream(["STARTTLS", "SIZE 10"], tls_caps=["SIZE 20", "AUTH PLAIN"])
    greeted = run(upstream, starttls="if-client", client_tls=True)
    assert upstream.verbs == ["EXPECT", "EHLO", "STARTTLS", "START_TLS", "EHLO"]
    assert greeted.tls
    assert greeted.capabilities == {"SIZE": "20", "AUTH": "PLAIN"}  # read after the handshake


def test_if_client_with_client_tls_but_not_offered_stays_plain() -> None:
    upstream = Upstream(["SIZE 10"])
    greeted = run(upstream, starttls="if-client", client_tls=True)
    assert "STARTTLS" not in upstream.verbs and not greeted.tls


def test_opportunistic_uses_starttls_whenever_offered() -> None:
    upstream = Upstream(["STARTTLS"])
    assert run(upstream, starttls="opportunistic", client_tls=False).tls
    assert "START_TLS" in upstream.verbs


def test_opportunistic_without_offer_stays_plain() -> None:
    upstream = Upstream(["SIZE 10"])
    assert not run(upstream, starttls="opportunistic").tls
    assert upstream.verbs == ["EXPECT", "EHLO"]


def test_opportunistic_refused_starttls_goes_on_in_plaintext() -> None:
    upstream = Upstream(["STARTTLS", "SIZE 10"], starttls=b"454 4.7.0 TLS not available\r\n")
    greeted = run(upstream, starttls="opportunistic")
    assert not greeted.tls
    assert "START_TLS" not in upstream.verbs
    assert greeted.capabilities == {"STARTTLS": "", "SIZE": "10"}


def test_required_with_starttls_offered_uses_it() -> None:
    upstream = Upstream(["STARTTLS"])
    assert run(upstream, starttls="required").tls


def test_required_without_starttls_offered_fails() -> None:
    upstream = Upstream(["SIZE 10"])
    with pytest.raises(UpstreamError):
        run(upstream, starttls="required")
    assert upstream.verbs == ["EXPECT", "EHLO"]


def test_required_with_starttls_refused_fails() -> None:
    with pytest.raises(UpstreamError):
        run(Upstream(["STARTTLS"], starttls=b"454 4.7.0 no\r\n"), starttls="required")


def test_required_after_helo_fallback_fails() -> None:
    with pytest.raises(UpstreamError):
        run(Upstream(ehlo=b"500 5.5.2 what\r\n"), starttls="required")


def test_off_never_uses_starttls() -> None:
    upstream = Upstream(["STARTTLS"])
    assert not run(upstream, starttls="off", client_tls=True).tls
    assert "STARTTLS" not in upstream.verbs


def test_implicit_tls_needs_no_starttls_and_satisfies_required() -> None:
    upstream = Upstream(["STARTTLS"])
    greeted = run(upstream, starttls="required", tls_active=True)
    assert greeted.tls and "STARTTLS" not in upstream.verbs


# --- XCLIENT --------------------------------------------------------------------------
def test_xclient_is_sent_when_offered_then_ehlo_again() -> None:
    upstream = Upstream(["PIPELINING", XCLIENT_ALL], xclient_caps=["PIPELINING", "SIZE 5"])
    greeted = run(upstream)
    assert upstream.verbs == ["EXPECT", "EHLO", "NEED_NAME", "XCLIENT", "EHLO"]
    assert greeted.xclient
    assert greeted.capabilities == {"PIPELINING": "", "SIZE": "5"}
    assert xclient_pairs(upstream.xclient_lines) == {
        "HELO": b"client.example", "PROTO": b"ESMTP", "NAME": b"client.example", "PORT": b"40123", "ADDR": b"192.0.2.7",
    }


def test_xclient_not_offered_is_not_sent() -> None:
    upstream = Upstream(["PIPELINING"])
    assert not run(upstream).xclient
    assert "XCLIENT" not in upstream.verbs and "NEED_NAME" not in upstream.verbs


def test_xclient_off_is_not_sent_even_when_offered() -> None:
    upstream = Upstream([XCLIENT_ALL])
    assert not run(upstream, xclient="off").xclient
    assert upstream.verbs == ["EXPECT", "EHLO"]


def test_xclient_required_but_not_offered_fails() -> None:
    with pytest.raises(UpstreamError):
        run(Upstream(["PIPELINING"]), xclient="required")


def test_xclient_required_and_offered_succeeds() -> None:
    assert run(Upstream([XCLIENT_ALL]), xclient="required").xclient


def test_xclient_offered_without_attributes_we_know_counts_as_not_offered() -> None:
    upstream = Upstream(["XCLIENT LOGIN DESTADDR"])
    assert not run(upstream).xclient
    assert upstream.verbs == ["EXPECT", "EHLO"]
    with pytest.raises(UpstreamError):
        run(Upstream(["XCLIENT"]), xclient="required")


def test_only_offered_attributes_are_sent_and_name_is_not_asked_for() -> None:
    upstream = Upstream(["XCLIENT ADDR port"])
    run(upstream)
    assert "NEED_NAME" not in upstream.verbs
    assert upstream.xclient_lines == [b"XCLIENT PORT=40123 ADDR=192.0.2.7\r\n"]


def test_xclient_values_are_xtext_encoded() -> None:
    upstream = Upstream(["XCLIENT HELO"])
    run(upstream, ClientInfo("192.0.2.7", 1, "a+b=c d\x01é", True))
    assert upstream.xclient_lines == [b"XCLIENT HELO=a+2Bb+3Dc+20d+01+C3+A9\r\n"]
    assert xtext.decode(xclient_pairs(upstream.xclient_lines)["HELO"]) == "a+b=c d\x01é".encode()


def test_ipv6_addr_has_the_ipv6_prefix_and_compressed_form() -> None:
    upstream = Upstream(["XCLIENT ADDR"])
    run(upstream, ClientInfo("2001:db8:0:0:0:0:0:1", 25))
    assert upstream.xclient_lines == [b"XCLIENT ADDR=IPV6:2001:db8::1\r\n"]


def test_ipv4_mapped_ipv6_addr_is_sent_as_ipv4() -> None:
    upstream = Upstream(["XCLIENT ADDR"])
    run(upstream, ClientInfo("::ffff:192.0.2.7", 25))
    assert upstream.xclient_lines == [b"XCLIENT ADDR=192.0.2.7\r\n"]


@pytest.mark.parametrize("name, sent", [("host.example", b"host.example"), (None, b"[UNAVAILABLE]"),
                                        ("[TEMPUNAVAIL]", b"[TEMPUNAVAIL]")])
def test_name_comes_from_need_name(name: str | None, sent: bytes) -> None:
    upstream = Upstream(["XCLIENT NAME"], name=name)
    run(upstream)
    assert upstream.xclient_lines == [b"XCLIENT NAME=" + sent + b"\r\n"]


def test_missing_helo_is_unavailable_and_helo_client_is_proto_smtp() -> None:
    upstream = Upstream(["XCLIENT HELO PROTO"])
    run(upstream, ClientInfo("192.0.2.7", 25, None, esmtp=False))
    assert xclient_pairs(upstream.xclient_lines) == {"HELO": b"[UNAVAILABLE]", "PROTO": b"SMTP"}


@pytest.mark.parametrize("answer", [b"550 5.7.0 Error: insufficient authorization\r\n", b"421 4.3.2 busy\r\n",
                                    b"451 4.3.0 later\r\n"])
def test_refused_xclient_fails_the_target(answer: bytes) -> None:
    upstream = Upstream([XCLIENT_ALL], xclient=answer)
    with pytest.raises(UpstreamError):
        run(upstream)
    assert upstream.verbs[-1] == "XCLIENT"


@pytest.mark.parametrize("answer", [b"220 up.example ESMTP\r\n", b"250 2.0.0 Ok\r\n"])
def test_any_2xx_answer_to_xclient_is_success(answer: bytes) -> None:
    assert run(Upstream([XCLIENT_ALL], xclient=answer)).xclient


def test_starttls_then_xclient_each_followed_by_ehlo() -> None:
    upstream = Upstream(["STARTTLS", XCLIENT_ALL])
    greeted = run(upstream, starttls="opportunistic")
    assert upstream.verbs == ["EXPECT", "EHLO", "STARTTLS", "START_TLS", "EHLO", "NEED_NAME", "XCLIENT", "EHLO"]
    assert greeted.tls and greeted.xclient


def test_xclient_offered_only_after_tls_is_used() -> None:
    upstream = Upstream(["STARTTLS"], tls_caps=[XCLIENT_ALL])
    assert run(upstream, starttls="opportunistic").xclient


def test_xclient_offered_only_before_tls_is_not_used() -> None:
    upstream = Upstream(["STARTTLS", XCLIENT_ALL], tls_caps=["SIZE 5"])
    greeted = run(upstream, starttls="opportunistic")
    assert not greeted.xclient and "XCLIENT" not in upstream.verbs


def test_long_helo_and_name_split_xclient_into_lines_of_at_most_512_octets_addr_last() -> None:
    helo = "h" * 255
    upstream = Upstream([XCLIENT_ALL], name="n" * 255)
    run(upstream, ClientInfo("2001:db8::1", 65535, helo))
    lines = upstream.xclient_lines
    assert len(lines) >= 2
    assert all(len(line) <= 512 and line.endswith(b"\r\n") for line in lines)
    assert b" ADDR=IPV6:2001:db8::1\r\n" in lines[-1]
    assert all(b"ADDR=" not in line for line in lines[:-1])
    assert xclient_pairs(lines) == {"HELO": b"h" * 255, "PROTO": b"ESMTP", "NAME": b"n" * 255, "PORT": b"65535",
                                    "ADDR": b"IPV6:2001:db8::1"}
    assert upstream.verbs == ["EXPECT", "EHLO", "NEED_NAME"] + ["XCLIENT"] * len(lines) + ["EHLO"]


def test_values_longer_than_255_octets_after_encoding_are_cut() -> None:
    [line] = xclient_commands({"HELO"}, ClientInfo("192.0.2.7", 1, "+" * 300), None)
    value = xclient_pairs([line])["HELO"]
    assert value == b"+2B" * 85 and len(value) == 255
    [line] = xclient_commands({"HELO"}, ClientInfo("192.0.2.7", 1, "ab+" * 100), None)
    assert xclient_pairs([line])["HELO"] == b"ab+2B" * 51  # whole octets: 255 exactly, no half escape


def test_cutting_a_line_long_helo_name_of_escapes_is_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # EHLO with 4 KB of undecodable octets (12 KB of U+FFFD, 36 KB as xtext): cut by one
    # octet at a time and re-encoded each time, it held the reactor for seconds.
    name = (b"\x80" * 4089).decode("utf-8", "replace")
    counted = []
    real_encode = xtext.encode

    def encode(value: bytes) -> bytes:
        counted.append(len(value))
        return real_encode(value)

    monkeypatch.setattr(xtext, "encode", encode)  # counts the octets encoded
    [line] = xclient_commands({"HELO"}, ClientInfo("192.0.2.7", 1, name), None)
    assert xclient_pairs([line])["HELO"] == b"+EF+BF+BD" * 28 + b"+EF"  # 85 whole octets as xtext: 255
    assert sum(counted) < 2 * len(name.encode())  # linear in the name, not quadratic


@settings(database=None, max_examples=200)
@given(helo=st.text(max_size=600), name=st.one_of(st.none(), st.text(max_size=600)),
       offered=st.sets(st.sampled_from(["ADDR", "PORT", "NAME", "HELO", "PROTO"]), min_size=1),
       v6=st.booleans())
def test_xclient_lines_always_fit_and_carry_each_offered_attribute_once(
    helo: str, name: str | None, offered: set[str], v6: bool
) -> None:
    client = ClientInfo("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff" if v6 else "255.255.255.255", 65535, helo)
    lines = xclient_commands(offered, client, name)
    assert all(len(line) <= 512 and line.startswith(b"XCLIENT ") and line.endswith(b"\r\n") for line in lines)
    assert all(b"\r" not in line[:-2] and b"\n" not in line[:-2] for line in lines)
    pairs = xclient_pairs(lines)
    assert set(pairs) == offered
    assert all(len(value) <= 255 for value in pairs.values())
    if "ADDR" in offered:
        assert b" ADDR=" in lines[-1]




# --- the greeting after XCLIENT: the client's own name and verb (issue 10) ----------
def greetings(upstream: Upstream) -> list[bytes]:
    return [c for c in upstream.commands if c.split()[0] in (b"EHLO", b"HELO", b"LHLO")]


def test_after_xclient_willi_says_ehlo_with_the_clients_own_name() -> None:
    upstream = Upstream([XCLIENT_ALL])
    run(upstream)
    assert greetings(upstream) == [b"EHLO willi.example\r\n", b"EHLO client.example\r\n"]
    assert upstream.commands.index(b"EHLO client.example\r\n") > upstream.commands.index(upstream.xclient_lines[-1])


def test_after_xclient_a_client_that_said_helo_is_greeted_for_with_helo_so_proto_stays_smtp() -> None:
    upstream = Upstream([XCLIENT_ALL], xclient_caps=["PIPELINING"])
    greeted = run(upstream, ClientInfo("192.0.2.7", 25, "old.example", esmtp=False))
    assert greetings(upstream) == [b"EHLO willi.example\r\n", b"HELO old.example\r\n"]
    assert xclient_pairs(upstream.xclient_lines)["PROTO"] == b"SMTP"
    assert greeted.xclient and greeted.capabilities == {}  # HELO: no extensions, as the client has none


def test_after_xclient_a_helo_client_is_greeted_for_with_ehlo_when_auth_follows() -> None:
    upstream = Upstream(["STARTTLS", XCLIENT_ALL, "AUTH PLAIN"], tls_caps=[XCLIENT_ALL, "AUTH PLAIN"])
    run(upstream, ClientInfo("192.0.2.7", 25, "old.example", esmtp=False), starttls="opportunistic",
        auth="plain", credentials=Credentials("willi", "s3cret"))
    assert greetings(upstream)[-1] == b"EHLO old.example\r\n"


def test_after_xclient_lmtp_says_lhlo_with_the_clients_name() -> None:
    upstream = Upstream(["XCLIENT ADDR PORT HELO"])
    run(upstream, ClientInfo("192.0.2.7", 25, "client.example", esmtp=False), lmtp=True)
    assert greetings(upstream) == [b"LHLO willi.example\r\n", b"LHLO client.example\r\n"]


def test_a_client_name_with_spaces_or_controls_is_one_printable_word_in_the_greeting() -> None:
    upstream = Upstream(["XCLIENT ADDR HELO"])
    run(upstream, ClientInfo("192.0.2.7", 25, "bad name\x01é"))
    assert greetings(upstream)[-1] == b"EHLO bad?name??\r\n"


def test_without_xclient_the_greeting_stays_willis_own() -> None:
    upstream = Upstream(["PIPELINING"])
    run(upstream)
    assert greetings(upstream) == [b"EHLO willi.example\r\n"]


def test_xclient_required_fails_an_upstream_that_does_not_take_addr() -> None:
    upstream = Upstream(["XCLIENT NAME HELO PROTO"])
    with pytest.raises(UpstreamUnavailable, match="ADDR"):
        run(upstream, xclient="required")
    assert "XCLIENT" not in upstream.verbs


def test_xclient_auto_sends_what_is_offered_even_without_addr() -> None:
    upstream = Upstream(["XCLIENT HELO PROTO"])
    assert run(upstream).xclient
    assert xclient_pairs(upstream.xclient_lines) == {"HELO": b"client.example", "PROTO": b"ESMTP"}


def test_xclient_lines_go_one_at_a_time_each_after_the_reply_to_the_last() -> None:
    handshake = Handshake(HandshakeSettings("willi.example"), ClientInfo("2001:db8::1", 65535, "h" * 255))
    handshake.start()
    handshake.handle(reply(b"220 up.example\r\n"))
    assert handshake.handle(ehlo_reply("up.example", [XCLIENT_ALL])) == (NEED_NAME,)
    [first] = handshake.handle(hs.NameResolved("n" * 255))
    assert isinstance(first, hs.Send) and first.data.startswith(b"XCLIENT ") and b"ADDR=" not in first.data
    [second] = handshake.handle(reply(b"220 up.example\r\n"))
    assert isinstance(second, hs.Send) and b"ADDR=" in second.data


# --- the PROXY header (issue 10) ------------------------------------------------------
HEADER = b"PROXY TCP4 192.0.2.7 198.51.100.1 40123 25\r\n"


def test_proxy_header_is_written_before_the_greeting_is_awaited() -> None:
    handshake = Handshake(HandshakeSettings("willi.example", proxy_header=HEADER), CLIENT)
    assert handshake.start() == (hs.Write(HEADER), EXPECT)


def test_proxy_header_goes_before_implicit_tls() -> None:
    handshake = Handshake(HandshakeSettings("willi.example", proxy_header=HEADER, tls_active=True), CLIENT)
    assert handshake.start() == (hs.Write(HEADER), START_TLS)
    assert handshake.handle(hs.TLSDone()) == (EXPECT,)


def test_a_proxied_handshake_says_so_and_without_a_header_nothing_is_written() -> None:
    upstream = Upstream()
    assert run(upstream, proxy_header=HEADER).proxied
    assert upstream.written == [HEADER] and upstream.steps[0] == EXPECT
    plain = Upstream()
    assert not run(plain).proxied and plain.written == []


# --- AUTH (issue 10) -----------------------------------------------------------------
LOGIN = Credentials("willi@example.org", "pa55 wörd")
PLAIN = b"AUTH PLAIN AHdpbGxpQGV4YW1wbGUub3JnAHBhNTUgd8O2cmQ=\r\n"  # \0user\0password


def test_auth_plain_after_starttls_with_the_credentials() -> None:
    upstream = Upstream(["STARTTLS"], tls_caps=["AUTH LOGIN PLAIN", "SIZE 5"])
    greeted = run(upstream, starttls="required", auth="plain", credentials=LOGIN)
    assert upstream.verbs == ["EXPECT", "EHLO", "STARTTLS", "START_TLS", "EHLO", "AUTH"]
    assert upstream.commands[-1] == PLAIN
    assert greeted.authenticated and greeted.capabilities == {"AUTH": "LOGIN PLAIN", "SIZE": "5"}


def test_credentials_too_long_for_one_line_go_after_an_empty_challenge() -> None:
    # RFC 4954 §4: an initial response that would make the command line longer
    # than 512 octets is left out; the server's 334 asks for it.
    long = Credentials("u" * 200 + "@example.org", "p" * 200)
    upstream = Upstream(["AUTH PLAIN"])
    assert run(upstream, tls_active=True, auth="plain", credentials=long).authenticated
    command, response = upstream.commands[-2:]
    assert command == b"AUTH PLAIN\r\n"
    assert response == hs.auth_plain_response(long) + b"\r\n" and len(response) > 512


def test_a_refused_empty_challenge_fails_the_target() -> None:
    long = Credentials("u" * 400, "p")
    upstream = Upstream(["AUTH PLAIN"])
    upstream.respond = _refuse_auth(upstream.respond)  # type: ignore[method-assign]
    with pytest.raises(UpstreamUnavailable, match="504"):
        run(upstream, tls_active=True, auth="plain", credentials=long)


def _refuse_auth(respond: Any) -> Any:
    def refusing(command: hs.Command) -> hs.Event:
        if isinstance(command, hs.Send) and command.data == b"AUTH PLAIN\r\n":
            return reply(b"504 5.5.4 Unrecognized authentication type\r\n")
        return respond(command)
    return refusing


def test_auth_plain_on_implicit_tls() -> None:
    upstream = Upstream(["AUTH PLAIN"])
    assert run(upstream, tls_active=True, auth="plain", credentials=LOGIN).authenticated


def test_auth_comes_after_xclient_and_its_greeting() -> None:
    upstream = Upstream(["STARTTLS", XCLIENT_ALL, "AUTH PLAIN"], tls_caps=[XCLIENT_ALL, "AUTH PLAIN"])
    run(upstream, starttls="opportunistic", auth="plain", credentials=LOGIN)
    assert upstream.verbs[-3:] == ["XCLIENT", "EHLO", "AUTH"]


@pytest.mark.parametrize("starttls", ["off", "if-client", "opportunistic"])
def test_auth_plain_is_never_sent_without_tls(starttls: str) -> None:
    upstream = Upstream(["AUTH PLAIN"])  # STARTTLS not offered, or not used
    with pytest.raises(UpstreamUnavailable, match="needs TLS"):
        run(upstream, starttls=starttls, auth="plain", credentials=LOGIN)
    assert "AUTH" not in upstream.verbs


def test_auth_plain_refused_after_a_refused_starttls() -> None:
    upstream = Upstream(["STARTTLS", "AUTH PLAIN"], starttls=b"454 4.7.0 TLS not available\r\n")
    with pytest.raises(UpstreamUnavailable, match="needs TLS"):
        run(upstream, starttls="opportunistic", auth="plain", credentials=LOGIN)
    assert "AUTH" not in upstream.verbs


def test_auth_mechanism_not_offered_fails_the_target() -> None:
    upstream = Upstream(["AUTH LOGIN"])
    with pytest.raises(UpstreamUnavailable, match="AUTH PLAIN not offered"):
        run(upstream, tls_active=True, auth="plain", credentials=LOGIN)


def test_rejected_credentials_fail_the_target_naming_the_user_never_the_password() -> None:
    upstream = Upstream(["AUTH PLAIN"], auth=b"535 5.7.8 Error: authentication failed\r\n")
    with pytest.raises(UpstreamUnavailable) as caught:
        run(upstream, tls_active=True, auth="plain", credentials=LOGIN)
    message = str(caught.value)
    assert "535" in message and "willi@example.org" in message
    assert "pa55" not in message and "AHdpbGxp" not in message
    assert caught.value.reply == replies.UPSTREAM_UNAVAILABLE


def test_auth_external_sends_an_empty_authorisation_identity() -> None:
    upstream = Upstream(["AUTH EXTERNAL PLAIN"])
    assert run(upstream, tls_active=True, auth="external").authenticated
    assert upstream.commands[-1] == b"AUTH EXTERNAL =\r\n"


def test_credentials_never_show_the_password() -> None:
    assert "pa55" not in repr(LOGIN) and "pa55" not in str(LOGIN)
    assert "pa55" not in repr(HandshakeSettings("w", auth="plain", credentials=LOGIN))
    assert LOGIN == Credentials("willi@example.org", "pa55 wörd") != Credentials("willi@example.org", "other")


# --- the machine itself -------------------------------------------------------------
def test_an_event_the_state_does_not_expect_is_a_programming_error() -> None:
    handshake = Handshake(HandshakeSettings("willi.example"), CLIENT)
    handshake.start()
    with pytest.raises(ValueError, match="TLSDone in handshake state greeting"):
        handshake.handle(hs.TLSDone())


def test_a_failed_handshake_takes_no_further_event() -> None:
    handshake = Handshake(HandshakeSettings("willi.example"), CLIENT)
    handshake.start()
    [failed] = handshake.handle(reply(b"554 5.7.1 go away\r\n"))
    assert isinstance(failed, hs.Failed) and isinstance(failed.error, UpstreamError)
    with pytest.raises(ValueError):
        handshake.handle(reply(b"220 late\r\n"))

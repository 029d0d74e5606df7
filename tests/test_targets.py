"""Upstream target strings (SPEC §4): each form, its defaults, and what is refused."""

from __future__ import annotations

import pytest

from willi.targets import Target, parse_targets


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("mx.example.org", Target("smtp", "mx.example.org", 25)),
        ("mx.example.org:2525", Target("smtp", "mx.example.org", 2525)),
        ("192.0.2.1:26", Target("smtp", "192.0.2.1", 26)),
        ("[2001:db8::1]:2525", Target("smtp", "2001:db8::1", 2525)),
        ("[2001:db8::1]", Target("smtp", "2001:db8::1", 25)),
        ("[2001:DB8:0::1]", Target("smtp", "2001:db8::1", 25)),
        ("[mx.example.org]:25", Target("smtp", "mx.example.org", 25)),
        ("smtp://mx.example.org", Target("smtp", "mx.example.org", 25)),
        ("smtp://mx.example.org:587", Target("smtp", "mx.example.org", 587)),
        ("smtps://mx.example.org", Target("smtps", "mx.example.org", 465)),
        ("smtps://[2001:db8::2]:4650", Target("smtps", "2001:db8::2", 4650)),
        ("lmtp://store.example.org", Target("lmtp", "store.example.org", 24)),
        ("LMTP://store.example.org:2424", Target("lmtp", "store.example.org", 2424)),
        ("lmtp+unix:/run/dovecot/lmtp", Target("lmtp+unix", "", 0, "/run/dovecot/lmtp")),
        ("lmtp+unix:///run/dovecot/lmtp", Target("lmtp+unix", "", 0, "/run/dovecot/lmtp")),
        ("MX.Example.ORG", Target("smtp", "mx.example.org", 25)),
    ],
)
def test_each_form_parses_with_its_default_port(text: str, target: Target) -> None:
    assert parse_targets(text) == (target,)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("smtp:[mx.example.org]:2525", Target("smtp", "mx.example.org", 2525)),
        ("smtp:[mx.example.org]", Target("smtp", "mx.example.org", 25)),
        ("smtp:mx.example.org:2525", Target("smtp", "mx.example.org", 2525)),
        ("smtp:mx.example.org", Target("smtp", "mx.example.org", 25)),
        ("smtp:[192.0.2.1]:26", Target("smtp", "192.0.2.1", 26)),
        ("smtp:[ipv6:2001:db8::1]:25", Target("smtp", "2001:db8::1", 25)),
        ("SMTP:[2001:db8::1]", Target("smtp", "2001:db8::1", 25)),
        ("relay:[mx.example.org]:587", Target("smtp", "mx.example.org", 587)),
        ("lmtp:unix:/run/dovecot/lmtp", Target("lmtp+unix", "", 0, "/run/dovecot/lmtp")),
        ("lmtp:[store.example.org]:2424", Target("lmtp", "store.example.org", 2424)),
        ("lmtp:store.example.org", Target("lmtp", "store.example.org", 24)),
        ("lmtp:inet:store.example.org:24", Target("lmtp", "store.example.org", 24)),
        ("lmtp:inet:[192.0.2.5]", Target("lmtp", "192.0.2.5", 24)),
        # a host called smtp with a port is still a host called smtp
        ("smtp:2525", Target("smtp", "smtp", 2525)),
        ("lmtp:24", Target("smtp", "lmtp", 24)),
    ],
)
def test_postfix_transport_forms_parse_as_they_do_in_a_transport_map(text: str, target: Target) -> None:
    assert parse_targets(text) == (target,)


def test_postfix_forms_mix_with_the_others_in_one_list() -> None:
    assert parse_targets("smtp:[a.example]:25, lmtp:unix:/run/l, smtps://c.example") == (
        Target("smtp", "a.example", 25),
        Target("lmtp+unix", "", 0, "/run/l"),
        Target("smtps", "c.example", 465),
    )


def test_list_is_comma_separated_in_order_with_spaces_allowed() -> None:
    assert parse_targets("a.example , smtps://b.example,lmtp+unix:/s") == (
        Target("smtp", "a.example", 25),
        Target("smtps", "b.example", 465),
        Target("lmtp+unix", "", 0, "/s"),
    )


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("mx", "smtp://mx:25"),
        ("[2001:db8::1]", "smtp://[2001:db8::1]:25"),
        ("smtps://mx", "smtps://mx:465"),
        ("lmtp://mx:2", "lmtp://mx:2"),
        ("lmtp+unix:/run/x.sock", "lmtp+unix:/run/x.sock"),
    ],
)
def test_str_gives_the_canonical_form(text: str, canonical: str) -> None:
    (target,) = parse_targets(text)
    assert str(target) == canonical
    assert parse_targets(canonical) == (target,)


def test_lmtp_and_implicit_tls_flags() -> None:
    smtp, smtps, lmtp, unix = parse_targets("a,smtps://b,lmtp://c,lmtp+unix:/d")
    assert [t.is_lmtp for t in (smtp, smtps, lmtp, unix)] == [False, False, True, True]
    assert [t.implicit_tls for t in (smtp, smtps, lmtp, unix)] == [False, True, False, False]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty server"),
        (" , ", "empty server"),
        ("a,,b", "empty target"),
        ("mx:", "bad port"),
        ("mx:0", "bad port"),
        ("mx:65536", "bad port"),
        ("mx:twenty", "bad port"),
        ("mx:²", "bad port"),
        ("2001:db8::1", "brackets"),
        ("2001:db8::1:25", "brackets"),
        ("[2001:db8::1", "missing"),
        ("[2001:db8::1]25", "after"),
        ("http://mx", "unknown scheme"),
        ("lmtp+unix:", "absolute"),
        ("lmtp+unix:run/x", "absolute"),
        ("mx example", "bad host"),
        ("mx..example", "bad host"),
        ("user@mx", "bad host"),
        ("smtp://", "empty host"),
        ("smtp://mx/path", "bad host"),
        ("smtp:", "empty host"),
        ("smtp:[mx.example.org]:x", "bad port"),
        ("lmtp:unix:private/dovecot-lmtp", "absolute"),
        ("lmtp:unix:", "absolute"),
        ("smtp:unix:/run/x", "bad"),
        ("smtp:[mx", "missing"),
    ],
)
def test_bad_targets_raise_value_error_saying_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as info:
        parse_targets(text)
    assert repr(text) in str(info.value)


def test_results_are_cached_by_string() -> None:
    assert parse_targets("cached.example:2525") is parse_targets("cached.example:2525")

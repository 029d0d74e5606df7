"""The MAIL FROM / RCPT TO path parser: where an address splits, what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi import replies
from willi.smtp.address import Address, AddressError, ParameterError, parse_params, parse_path_argument


def test_bracketed_address_splits_into_local_and_domain() -> None:
    assert parse_path_argument("<user@example.org>") == (Address("user", "example.org"), [])


def test_leading_spaces_before_the_bracket_are_allowed() -> None:
    assert parse_path_argument("  <user@example.org>")[0] == Address("user", "example.org")


def test_bare_address_without_brackets_is_accepted_like_postfix() -> None:
    assert parse_path_argument("user@example.org SIZE=10") == (Address("user", "example.org"), ["SIZE=10"])


def test_null_path_is_the_null_address() -> None:
    address, params = parse_path_argument("<> BODY=8BITMIME")
    assert address.is_null and str(address) == ""
    assert params == ["BODY=8BITMIME"]


def test_ordinary_address_is_not_null() -> None:
    assert not Address("user", "example.org").is_null


def test_parameters_after_the_path_are_split_on_spaces() -> None:
    _, params = parse_path_argument("<a@example.org> SIZE=100  BODY=8BITMIME SMTPUTF8")
    assert params == ["SIZE=100", "BODY=8BITMIME", "SMTPUTF8"]


def test_source_route_is_stripped() -> None:
    address, _ = parse_path_argument("<@relay.example,@other.example:user@example.org>")
    assert address == Address("user", "example.org")


def test_source_route_with_an_address_literal_is_stripped() -> None:
    address, _ = parse_path_argument("<@[IPv6:2001:db8::1]:user@example.org>")
    assert address == Address("user", "example.org")


def test_quoted_local_part_may_hold_at_and_spaces_and_keeps_its_quotes() -> None:
    address, params = parse_path_argument('<"a b@c"@example.org> SIZE=1')
    assert address == Address('"a b@c"', "example.org")
    assert str(address) == '"a b@c"@example.org'
    assert params == ["SIZE=1"]


def test_domain_follows_the_last_unquoted_at() -> None:
    assert parse_path_argument('<"x@y"@example.org>')[0].domain == "example.org"


def test_quoted_local_part_may_hold_escaped_quote_and_bracket() -> None:
    address, _ = parse_path_argument(r'<"a\"b>"@example.org>')
    assert address == Address(r'"a\"b>"', "example.org")


def test_bare_quoted_local_part_with_space_is_one_path() -> None:
    address, params = parse_path_argument('"a b"@example.org SIZE=5')
    assert address == Address('"a b"', "example.org")
    assert params == ["SIZE=5"]


def test_address_without_domain_has_empty_domain_and_prints_bare() -> None:
    address, _ = parse_path_argument("<Postmaster>")
    assert address == Address("Postmaster", "")
    assert str(address) == "Postmaster"


def test_case_is_kept_as_written() -> None:
    assert parse_path_argument("<User@Example.ORG>")[0] == Address("User", "Example.ORG")


def test_utf8_local_part_and_domain_are_accepted() -> None:
    assert parse_path_argument("<jörg@bücher.example>")[0] == Address("jörg", "bücher.example")


def test_address_literal_domain_is_accepted() -> None:
    assert parse_path_argument("<u@[192.0.2.1]>")[0] == Address("u", "[192.0.2.1]")


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "   ",
        "<user@example.org",
        "user@example.org>",
        '<"unbalanced@example.org>',
        "<user@>",
        "<@example.org>",
        "<user@exa mple.org>",
        "<user@example..org>",
        "<user@example.org.>",
        "<<user@example.org>>",
        "<user@example.org>SIZE=1",
        "<us\x00er@example.org>",
        "<user@example.org\x0b>",
        "<user\x85@example.org>",
        "<us\udcffer@example.org>",
        "<a b@example.org>",
        "<a,b@example.org>",
        "<@relay.example>",
        "<@relay.example:>",
        "<@relay.example,user@example.org>",
        "<u@[1.2.3.4>",
        "<u@[]>",
        '<"a\\>',
    ],
)
def test_bad_syntax_raises_address_error(arg: str) -> None:
    with pytest.raises(AddressError):
        parse_path_argument(arg)


def test_address_error_carries_the_bad_address_reply() -> None:
    with pytest.raises(AddressError) as info:
        parse_path_argument("<user@>")
    assert info.value.reply == replies.SYNTAX_ADDRESS


def test_params_become_a_dict_with_upper_cased_keys() -> None:
    assert parse_params(["size=100", "SMTPUTF8", "Body=8BITMIME"]) == {
        "SIZE": "100",
        "SMTPUTF8": None,
        "BODY": "8BITMIME",
    }


def test_param_values_keep_their_case() -> None:
    assert parse_params(["ENVID=AbC"]) == {"ENVID": "AbC"}


@pytest.mark.parametrize("param", ["=1", "-X=1", "SI_ZE=1", "SIZE=", "SIZE=a=b", "KEY=\x7f", "KÉY=1"])
def test_malformed_param_raises_parameter_error_with_its_own_reply(param: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_params([param])
    assert isinstance(info.value, AddressError)
    assert info.value.reply == replies.SYNTAX_PARAMETER


def test_duplicate_param_is_refused() -> None:
    with pytest.raises(ParameterError):
        parse_params(["SIZE=1", "size=2"])


_PATH_ALPHABET = st.sampled_from(list('<>@"\\,:;[]. aZ9+-=é\x00\x0b\udcff'))


@settings(database=None)  # no .hypothesis/ directory in the shared tree
@given(st.text(_PATH_ALPHABET, max_size=40))
def test_any_path_text_parses_or_raises_address_error(arg: str) -> None:
    try:
        address, params = parse_path_argument(arg)
    except AddressError:
        return
    assert isinstance(address, Address)
    assert all(param and " " not in param for param in params)


@settings(database=None)
@given(st.text(max_size=60))
def test_any_unicode_text_parses_or_raises_address_error(arg: str) -> None:
    try:
        parse_path_argument(arg)
    except AddressError:
        pass


_ATOM = st.text(st.sampled_from(list("abcXYZ019!#$%&'*+-/=?^_`{|}~")), min_size=1, max_size=10)
_LABEL = st.text(st.sampled_from(list("abcXYZ019-")), min_size=1, max_size=10)


@settings(database=None)
@given(_ATOM, st.lists(_LABEL, min_size=1, max_size=4))
def test_well_formed_addresses_round_trip(local: str, labels: list[str]) -> None:
    domain = ".".join(labels)
    address, params = parse_path_argument(f"<{local}@{domain}>")
    assert address == Address(local, domain)
    assert str(address) == f"{local}@{domain}"
    assert params == []


# --- the fast path ---------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from willi.smtp.address import _FORBIDDEN, _parse_path  # noqa: E402

_PATHLIKE = st.text(alphabet=st.sampled_from(list("ab.-_+=@<>\" \\[]:,é\u0085")), max_size=20)


@settings(database=None, max_examples=2000)
@given(local=_PATHLIKE, domain=_PATHLIKE, params=st.sampled_from(["", " SIZE=10", " BODY=8BITMIME SMTPUTF8", "x"]))
def test_the_fast_path_agrees_with_the_general_parser(local: str, domain: str, params: str) -> None:
    text = f"<{local}@{domain}>{params}"
    try:
        general = None if _FORBIDDEN.search(text) else _parse_path(text)
    except AddressError:
        general = None
    try:
        fast = parse_path_argument(text)
    except AddressError:
        fast = None
    assert fast == general

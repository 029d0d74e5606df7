"""Lookup keys: which keys a recipient is tried under, and in which order (SPEC §3)."""

from __future__ import annotations

from willi.routing.keys import lookup_keys
from willi.smtp.address import Address


def test_keys_run_from_full_address_to_top_level_domain() -> None:
    assert lookup_keys(Address("u", "a.example.org"), "") == [
        "u@a.example.org",
        "a.example.org",
        ".example.org",
        ".org",
    ]


def test_a_dot_key_names_subdomains_only_so_the_domain_itself_never_gets_one() -> None:
    # SPEC §3, as Postfix's transport maps: ".example.org" routes
    # user@mail.example.org, not user@example.org.
    keys = lookup_keys(Address("u", "example.org"), "")
    assert keys == ["u@example.org", "example.org", ".org"]
    assert ".example.org" in lookup_keys(Address("u", "mail.example.org"), "")


def test_extension_is_cut_off_after_the_full_address() -> None:
    assert lookup_keys(Address("user+ext", "example.org"), "+")[:3] == [
        "user+ext@example.org",
        "user@example.org",
        "example.org",
    ]


def test_no_extension_key_without_a_delimiter() -> None:
    assert "user@example.org" not in lookup_keys(Address("user+ext", "example.org"), "")


def test_every_character_of_the_delimiter_is_a_delimiter() -> None:
    assert lookup_keys(Address("user-ext", "example.org"), "+-")[1] == "user@example.org"
    assert lookup_keys(Address("user+ext", "example.org"), "+-")[1] == "user@example.org"


def test_local_part_is_cut_at_the_first_delimiter_of_any_kind() -> None:
    assert lookup_keys(Address("a-b+c", "example.org"), "+-")[1] == "a@example.org"


def test_address_without_extension_gives_no_duplicate_key() -> None:
    keys = lookup_keys(Address("user", "example.org"), "+")
    assert keys == ["user@example.org", "example.org", ".org"]


def test_leading_delimiter_is_not_cut_as_in_postfix() -> None:
    # Cutting "+user" would leave an empty local part.
    assert lookup_keys(Address("+user", "example.org"), "+")[:2] == ["+user@example.org", "example.org"]


def test_quoted_local_part_keeps_its_delimiter() -> None:
    assert lookup_keys(Address('"a+b"', "example.org"), "+")[:2] == ['"a+b"@example.org', "example.org"]


def test_keys_are_lower_cased() -> None:
    assert lookup_keys(Address("User+Ext", "Example.ORG"), "+") == [
        "user+ext@example.org",
        "user@example.org",
        "example.org",
        ".org",
    ]


def test_address_without_domain_gives_only_the_full_address() -> None:
    assert lookup_keys(Address("Postmaster", ""), "+") == ["postmaster"]


def test_address_literal_has_no_parent_domain_keys() -> None:
    assert lookup_keys(Address("u", "[192.0.2.1]"), "") == ["u@[192.0.2.1]", "[192.0.2.1]"]

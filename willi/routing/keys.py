"""The keys one recipient is looked up under, in the order SPEC §3 gives.

Every mapping is asked with the same list, most specific first: the full
address, the address without its extension (Postfix's recipient_delimiter),
the domain, then each parent as `.parent` (a leading dot matches subdomains
only, never the domain itself, as in Postfix's transport maps: `.example.org`
routes `user@mail.example.org`, not `user@example.org`). Keys are lower-cased so mapping tables can be written in one case.
"""

from __future__ import annotations

from willi.smtp.address import Address


def lookup_keys(address: Address, delimiter: str) -> list[str]:
    """Keys for `address`, most specific first, lower-cased, without duplicates."""
    full = str(address).lower()
    if not address.domain:
        return [full]
    domain = address.domain.lower()
    keys = [full]
    base = _without_extension(address.local, delimiter)
    if base is not None:
        keys.append(f"{base}@{domain}".lower())
    keys.append(domain)
    if not domain.startswith("["):
        # An address literal has no parents; a host name has one per label
        # above its own (".mail.example.org" would name mail.example.org's
        # subdomains, not mail.example.org): each from one of its dots on.
        dot = domain.find(".")
        while dot >= 0:
            keys.append(domain[dot:])
            dot = domain.find(".", dot + 1)
    return list(dict.fromkeys(keys))


def _without_extension(local: str, delimiter: str) -> str | None:
    """The local part cut at the first delimiter character, None if unchanged.

    Like Postfix's split_addr(): each character of `delimiter` is a delimiter,
    and nothing is cut when that would leave an empty local part. A quoted
    local part is left alone: cutting inside the quotes would unbalance them.
    """
    if not delimiter or local.startswith('"'):
        return None
    if len(delimiter) == 1:  # the common case: one character, one search
        cut = local.find(delimiter)
    else:
        cut = min((i for i in (local.find(ch) for ch in delimiter) if i >= 0), default=-1)
    if cut <= 0:
        return None
    return local[:cut]

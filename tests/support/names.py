"""Host names of an exact length, for the tests of Willi's length limits."""

from __future__ import annotations


def domain_of(octets: int) -> str:
    """A well-formed host name of exactly `octets` octets (labels of 50)."""
    labels, left = [], octets
    while left > 51:
        labels.append("d" * 50)
        left -= 51
    labels.append("e" * left)
    return ".".join(labels)

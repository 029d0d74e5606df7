"""Willi: an SMTP proxy for inbound mail that routes each transaction by recipient."""

__version__ = "0.2.3"

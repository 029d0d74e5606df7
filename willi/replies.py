"""Every reply Willi itself sends, in one catalogue.

Replies are pre-rendered bytes so the hot path never formats a string; the few
that carry a value (host name, address, size) are built by the functions at
the bottom. Upstream replies are never listed here: they are relayed verbatim.
Codes follow RFC 5321 §4.2 and the enhanced status codes of RFC 3463.
Tests check the catalogue itself (tests/test_replies.py).
"""

from __future__ import annotations

# --- greetings and session -------------------------------------------------
CLOSING = b"221 2.0.0 Bye\r\n"
READY_FOR_TLS = b"220 2.0.0 Ready to start TLS\r\n"
HELP = b"214 2.0.0 See RFC 5321\r\n"
OK = b"250 2.0.0 Ok\r\n"
RESET_OK = b"250 2.0.0 Ok\r\n"
SENDER_OK = b"250 2.1.0 Ok\r\n"
CANNOT_VRFY = b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"

# --- temporary failures -----------------------------------------------------
TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"
CONNECTION_RATE_EXCEEDED = b"421 4.7.0 Too many connections from your address, slow down and try again later\r\n"
PROXY_REQUIRED = b"421 4.7.0 Connections are accepted through the load balancer only\r\n"
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
CLIENT_TIMEOUT = b"421 4.4.2 Timeout exceeded, closing connection\r\n"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down, closing connection\r\n"
SESSION_FAULT = b"421 4.3.0 Internal error, closing connection\r\n"
UPSTREAM_UNAVAILABLE = b"451 4.4.1 Upstream unavailable, try again later\r\n"
UPSTREAM_TIMEOUT = b"451 4.4.2 Upstream timed out, try again later\r\n"
UPSTREAM_LOST = b"451 4.4.2 Upstream connection lost, try again later\r\n"
UPSTREAM_PROTOCOL = b"451 4.5.0 Upstream protocol error, try again later\r\n"
LOOKUP_FAILED = b"451 4.3.0 Recipient lookup failed, try again later\r\n"
TOO_MANY_RECIPIENTS = b"452 4.5.3 Too many recipients\r\n"
OTHER_UPSTREAM = b"452 4.5.3 Recipient routes elsewhere, try again in a new transaction\r\n"
ONE_RCPT_FOR_LMTP = b"452 4.5.3 One recipient per transaction here, try again in a new transaction\r\n"

# --- permanent failures -----------------------------------------------------
LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
UNRECOGNIZED = b"500 5.5.2 Error: command not recognized\r\n"
BARE_LF_COMMAND = b"500 5.5.2 Error: bare <LF> received\r\n"
SYNTAX_HELO = b"501 5.5.4 Syntax: EHLO hostname\r\n"
SYNTAX_MAIL = b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
SYNTAX_RCPT = b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"
SYNTAX_NO_ARGS = b"501 5.5.4 Syntax error, no parameters allowed\r\n"
SYNTAX_ADDRESS = b"501 5.1.3 Bad address syntax\r\n"
ADDRESS_TOO_LONG = b"501 5.1.3 Bad address syntax: address too long\r\n"
SYNTAX_PARAMETER = b"501 5.5.4 Bad parameter\r\n"
SYNTAX_SIZE = b"501 5.5.4 Bad SIZE parameter\r\n"
UNKNOWN_PARAMETER = b"555 5.5.4 Unsupported parameter\r\n"
NOT_IMPLEMENTED = b"502 5.5.1 Error: command not implemented\r\n"
NO_AUTH = b"502 5.5.1 Error: authentication not enabled\r\n"
NEED_HELO = b"503 5.5.1 Error: send HELO/EHLO first\r\n"
NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
NESTED_MAIL = b"503 5.5.1 Error: nested MAIL command\r\n"
TLS_ALREADY_ACTIVE = b"503 5.5.1 Error: TLS already active\r\n"
TRANSACTION_IN_PROGRESS = b"503 5.5.1 Error: MAIL transaction in progress\r\n"
NO_VALID_RECIPIENTS = b"554 5.5.1 Error: no valid recipients\r\n"
SYNTAX_BDAT = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"
BDAT_UNFRAMED = b"501 5.5.4 Syntax: BDAT size [LAST]; the chunk cannot be framed, closing connection\r\n"
DATA_IN_BDAT = b"503 5.5.1 Error: DATA inside a BDAT transaction\r\n"
RCPT_AFTER_BDAT = b"503 5.5.1 Error: RCPT after BDAT\r\n"
MESSAGE_TOO_BIG = b"552 5.3.4 Message size exceeds fixed limit\r\n"
BAD_BODY = b"550 5.5.2 Message refused: bare <CR> or <LF> or NUL in message body\r\n"
NEED_SMTPUTF8 = b"553 5.6.7 Upstream does not support SMTPUTF8\r\n"
UNDECLARED_UTF8 = b"553 5.6.7 Must declare SMTPUTF8 to send unicode address\r\n"  # RFC 6531 §3.5, Postfix's words


def greeting(hostname: str) -> bytes:
    return b"220 %s ESMTP\r\n" % hostname.encode("ascii", "replace")


MAX_REPLY_LINE = 512  # RFC 5321 §4.5.3.1.5, the CRLF included


def relay_denied(address: str) -> bytes:
    """Postfix's wording, so operators' log greps keep working. A command line
    may be 4096 octets, a reply line only 512: a long address is cut short."""
    template = b"554 5.7.1 <%s>: Relay access denied\r\n"
    room = MAX_REPLY_LINE - (len(template) - 2)
    raw = address.encode("utf-8", "replace")
    if len(raw) > room:
        raw = raw[:room].decode("utf-8", "ignore").encode("utf-8")  # no half character
    return template % raw


def chunk_received(size: int) -> bytes:
    """A BDAT chunk taken while translating to DATA (RFC 3030 §2): the
    message is not yet accepted, only this chunk received."""
    return b"250 2.0.0 %d octets received\r\n" % size


def ehlo(hostname: str, capabilities: list[str]) -> bytes:
    """Multi-line EHLO reply: the host name, then one capability per line."""
    lines = [hostname, *capabilities]
    out = [b"250-%s\r\n" % line.encode("ascii", "replace") for line in lines[:-1]]
    out.append(b"250 %s\r\n" % lines[-1].encode("ascii", "replace"))
    return b"".join(out)


def helo(hostname: str) -> bytes:
    return b"250 %s\r\n" % hostname.encode("ascii", "replace")

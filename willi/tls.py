"""A sans-IO TLS engine: ciphertext in, plaintext out, ciphertext back.

Willi runs every connection on one reactor thread, so a blocking
``wrap_socket`` handshake is out of the question, and STARTTLS has to switch a
connection that is already open. The engine therefore never touches a socket
or a clock: it owns two ``ssl.MemoryBIO`` objects and an ``ssl.SSLObject``
(the shape of CPython's old ``_SSLPipe`` and of mitmproxy's TLS layer), and
the connection object moves bytes between them and the socket.

The contract for the caller, in the order things happen:

1. ``feed()`` every chunk received from the socket (``b""`` for EOF).
2. Until ``handshake()`` returns True, call it after each feed; send
   ``take_output()`` after every call, *including one that raised* (the bytes
   are the alert that tells the peer why).
3. Right after ``handshake()`` first returns True, call ``read_into()``: the
   peer may have pipelined application data behind its Finished message, and
   it is already in the engine, so no socket event will announce it.
4. Send ``take_output()`` after reads as well as writes: reading can produce
   ciphertext (key updates, alerts).
5. After pausing reads for flow control, call ``read_into()`` once on resume,
   for the same reason as in 3 (``buffered_input`` tells whether it may pay).

The handshake timeout belongs to the reactor; this module has no clock.
"""

from __future__ import annotations

import ssl
from typing import Any

from willi.errors import TLSError

# TLS 1.3 tickets sent after each handshake (OpenSSL's default): a client may
# open parallel connections, and each resumption consumes one.
SERVER_TICKETS = 2

# Largest single read asked of OpenSSL when read() collects everything; a TLS
# record carries at most 16 KiB, so this is several records per call.
_READ_CHUNK = 65536


def _reason(exc: BaseException) -> str:
    """The most useful words of an ssl exception, for a log line."""
    verify_message = getattr(exc, "verify_message", None)
    if verify_message:
        return f"certificate verify failed: {verify_message}"
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    return str(exc) or type(exc).__name__


class TLSEngine:
    """One side of one TLS session, driven entirely by its caller.

    ``peer_closed`` becomes True when the peer ended the stream: by
    close_notify (``truncated`` stays False) or by a transport EOF without it
    (``truncated`` becomes True; for SMTP that is a close, not an error,
    because the protocol has its own end-of-message markers).
    """

    __slots__ = (
        "_incoming",
        "_outgoing",
        "_sslobj",
        "_established",
        "_error",
        "_closing",
        "peer_closed",
        "truncated",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        if not server_side and context.check_hostname and not server_hostname:
            # SSLSocket refuses this combination; SSLObject silently checks
            # the chain only, so any certificate from the CA would pass.
            raise TLSError("TLS setup failed: check_hostname requires server_hostname")
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        try:
            self._sslobj = self._wrap(context, server_side, server_hostname, session)
        except (ValueError, ssl.SSLError) as exc:
            # e.g. a server_hostname that is not a valid name: a setup mistake
            # that must surface as a TLS failure of this target, not a crash.
            raise TLSError(f"TLS setup failed: {_reason(exc)}") from exc
        self._established = False
        self._error: TLSError | None = None
        self._closing = False
        self.peer_closed = False
        self.truncated = False

    def _wrap(
        self,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None,
        session: ssl.SSLSession | None,
    ) -> ssl.SSLObject:
        """The SSLObject, offering `session` for resumption when one is given.

        A session the object refuses (one of another context, say) is not a
        reason to fail the connection: the handshake is then a full one.
        """
        if session is not None:
            try:
                return context.wrap_bio(
                    self._incoming, self._outgoing, server_side=server_side,
                    server_hostname=server_hostname, session=session,
                )
            except ValueError:
                pass
        return context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )

    # --- ciphertext side -------------------------------------------------

    def feed(self, ciphertext: bytes | bytearray | memoryview) -> None:
        """Hand over bytes received from the socket; empty means EOF.

        The bytes are copied, so a view of a reused receive buffer is fine.
        """
        if not ciphertext:
            self._incoming.write_eof()
            return
        if self._incoming.eof:
            # Bytes after EOF cannot come from a well-behaved caller; drop
            # them rather than let the BIO raise a bare ssl.SSLError.
            return
        self._incoming.write(ciphertext)

    def take_output(self) -> bytes:
        """Ciphertext waiting to be sent, or b"" if there is none."""
        return self._outgoing.read()

    @property
    def pending_output(self) -> int:
        """Bytes of ciphertext waiting in the engine (counts toward flow control)."""
        return self._outgoing.pending

    @property
    def buffered_input(self) -> int:
        """Ciphertext not yet decrypted plus plaintext not yet read.

        Non-zero does not promise plaintext (it may be half a record), only
        that a read_into() may return some without a new socket event.
        """
        return self._incoming.pending + self._sslobj.pending()

    # --- handshake -------------------------------------------------------

    def handshake(self) -> bool:
        """Advance the handshake with what has been fed; True once complete.

        Safe to call any number of times. A failure is sticky: every later
        call raises the same TLSError. Send take_output() even after a
        failure, so the peer receives the alert.
        """
        if self._established:
            return True
        if self._error is not None:
            raise self._error
        try:
            self._sslobj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except ssl.SSLError as exc:
            self._error = TLSError(f"TLS handshake failed: {_reason(exc)}")
            raise self._error from exc
        self._established = True
        return True

    @property
    def established(self) -> bool:
        """True once handshake() has returned True."""
        return self._established

    # --- plaintext side --------------------------------------------------

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Decrypt into buf as much plaintext as is available; return the count.

        0 means nothing is decryptable yet, or the peer has closed (check
        ``peer_closed``). Bytes returned by the call that noticed the close
        are valid data. If it returns len(buf), call again: more may wait.
        Raises TLSError on a bad record or an alert from the peer.
        """
        if self.peer_closed:
            return 0
        if not self._established:
            raise RuntimeError("TLSEngine.read_into() before the handshake completed")
        view = memoryview(buf)
        size = len(view)
        total = 0
        read = self._sslobj.read
        try:
            # One SSL_read yields at most one record (16 KiB); loop so a
            # 64 KiB buffer is filled in one call from the caller's view.
            while total < size:
                count = read(size - total, view[total:])
                if not count:
                    # CPython reports close_notify as an empty read, not as
                    # SSLZeroReturnError (that only comes on later reads).
                    self.peer_closed = True
                    break
                total += count
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError as exc:
            self._read_failed(exc)
        return total

    def read(self) -> bytes:
        """All plaintext available now, as bytes (b"" if none); see read_into."""
        if self.peer_closed:
            return b""
        if not self._established:
            raise RuntimeError("TLSEngine.read() before the handshake completed")
        chunks: list[bytes] = []
        try:
            while True:
                chunk = self._sslobj.read(_READ_CHUNK)
                if not chunk:
                    self.peer_closed = True  # close_notify, as in read_into
                    break
                chunks.append(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError as exc:
            self._read_failed(exc)
        return b"".join(chunks)

    def _read_failed(self, exc: ssl.SSLError) -> None:
        """Turn an ssl read exception into a close or a TLSError."""
        if isinstance(exc, ssl.SSLZeroReturnError):
            self.peer_closed = True
        elif isinstance(exc, ssl.SSLEOFError):
            self.peer_closed = True
            self.truncated = True
        else:
            raise TLSError(f"TLS read failed: {_reason(exc)}") from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt plaintext; the ciphertext then waits in take_output()."""
        if not self._established:
            raise RuntimeError("TLSEngine.write() before the handshake completed")
        view = memoryview(data)
        write = self._sslobj.write
        try:
            # A memory BIO never blocks, so OpenSSL takes everything; the
            # loop only guards against a partial count all the same.
            while view:
                view = view[write(view):]
        except ssl.SSLError as exc:
            raise TLSError(f"TLS write failed: {_reason(exc)}") from exc

    def close(self) -> None:
        """Queue close_notify (then send take_output()); idempotent, never raises.

        The engine does not wait for the peer's close_notify: SMTP has ended
        by then, and a close reply would only delay freeing the socket.
        """
        if self._closing:
            return
        self._closing = True
        try:
            self._sslobj.unwrap()
        except (ssl.SSLError, ValueError):
            # WantRead is the normal answer (our close_notify is queued, the
            # peer's has not come); before the handshake there is nothing to do.
            pass

    # --- for logs --------------------------------------------------------

    @property
    def version(self) -> str | None:
        """Negotiated protocol, e.g. "TLSv1.3"; None before the handshake."""
        return self._sslobj.version()

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite name; None before the handshake."""
        cipher = self._sslobj.cipher()
        return cipher[0] if cipher else None

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session to offer next time (client side), or None.

        Under TLS 1.3 the server sends its tickets after the handshake, so a
        session taken right after handshake() is not resumable yet; take it
        after the first reply has been read (see SessionCache.resumable).
        """
        if not self._established:
            return None
        return self._sslobj.session

    @property
    def session_reused(self) -> bool:
        """True if the handshake resumed an earlier session (abbreviated)."""
        return self._established and self._sslobj.session_reused

    @property
    def verified(self) -> bool:
        """True if the peer presented a certificate the context verified.

        A context that verifies aborts the handshake on a bad certificate, so
        an established session with verification on and a peer certificate
        present was verified.
        """
        return (
            self._established
            and self._sslobj.context.verify_mode != ssl.CERT_NONE
            and self._sslobj.getpeercert(binary_form=True) is not None
        )

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's decoded certificate if it was verified, else None."""
        if not self.verified:
            return None
        return self._sslobj.getpeercert()

    @property
    def peer_certificate_der(self) -> bytes | None:
        """The peer's certificate in DER, verified or not; None if absent."""
        if not self._established:
            return None
        return self._sslobj.getpeercert(binary_form=True)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """Context for Willi's STARTTLS towards clients (SPEC §5: TLS 1.2 or newer).

    OpenSSL's default cipher list is kept; the server's preference order wins
    so a client offering weak suites first still gets a strong one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Compression invites CRIME; client-initiated renegotiation costs the
    # reactor CPU for nothing an SMTP client needs.
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    # Clients resume with session tickets (stateless: nothing kept per client).
    # The ticket keys are random per context and live as long as it does: the
    # process, or until a SIGHUP builds a new context, after which an old
    # ticket is simply declined and the handshake is a full one.
    context.options &= ~ssl.OP_NO_TICKET
    context.num_tickets = SERVER_TICKETS
    _load_chain(context, cert, key)
    return context


def client_context(
    verify: bool,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> ssl.SSLContext:
    """Context for Willi's STARTTLS or implicit TLS towards an upstream (SPEC §4).

    With verify the certificate chain and the host name are checked against
    ca_file, or the system store when there is none; without it anything is
    accepted (a route with tls_verify=false still gets encryption).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        try:
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load CA file {ca_file}: {_reason(exc)}") from exc
    else:
        # check_hostname must be switched off before verify_mode may drop.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        _load_chain(context, cert, key)
    elif key:
        raise TLSError(f"client key {key} given without a client certificate")
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """Load a certificate chain and key, failing with a message naming both."""
    try:
        # An explicit empty password stops OpenSSL from prompting on the
        # terminal for an encrypted key (which would freeze the reactor).
        context.load_cert_chain(cert, key, password=b"")
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(
            f"cannot load certificate {cert} with key {key or cert}: {_reason(exc)}"
        ) from exc

"""The TLS engine, driven engine against engine with no sockets, then once
over a real non-blocking socket pair to prove the contract holds there too."""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest

from tests.support.certs import Pki
from tests.support.engines import handshake, shuttle
from willi.errors import TLSError
from willi.tls import TLSEngine, client_context, server_context

CHUNK = 65536


# --- helpers -------------------------------------------------------------


def _server(pki: Pki, require_client_cert: bool = False) -> TLSEngine:
    context = server_context(str(pki.willi_cert), str(pki.willi_key))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.ca_cert))
    return TLSEngine(context, server_side=True)


def _server_with(cert: Path, key: Path) -> TLSEngine:
    return TLSEngine(server_context(str(cert), str(key)), server_side=True)


def _client(
    pki: Pki, verify: bool = True, host: str | None = "localhost", with_cert: bool = False
) -> TLSEngine:
    context = client_context(
        verify,
        str(pki.ca_cert),
        str(pki.client_cert) if with_cert else None,
        str(pki.client_key) if with_cert else None,
    )
    return TLSEngine(context, server_side=False, server_hostname=host)


def _pair(pki: Pki, **client_args: object) -> tuple[TLSEngine, TLSEngine]:
    client, server = _client(pki, **client_args), _server(pki)  # type: ignore[arg-type]
    handshake(client, server)
    return client, server


def _transfer(src: TLSEngine, dst: TLSEngine, payload: bytes) -> bytes:
    """Send payload in 64 KiB writes, read it with read_into a fixed buffer."""
    received = bytearray()
    buf = bytearray(CHUNK)
    view = memoryview(payload)
    for start in range(0, len(view), CHUNK):
        src.write(view[start : start + CHUNK])
        dst.feed(src.take_output())
        while count := dst.read_into(buf):
            received += buf[:count]
    return bytes(received)


# --- handshake and data ----------------------------------------------------


def test_handshake_completes_and_reports_session(pki: Pki) -> None:
    client, server = _pair(pki)
    assert client.established and server.established
    assert client.version in ("TLSv1.2", "TLSv1.3")
    assert client.version == server.version
    assert client.cipher and client.cipher == server.cipher
    assert client.verified
    assert client.peer_certificate is not None
    assert dict(x[0] for x in client.peer_certificate["subject"])["commonName"] == "willi.test"
    assert not server.verified  # the server asked for no client certificate
    assert server.peer_certificate is None
    assert client.pending_output == 0 and server.pending_output == 0


def test_before_handshake_reports_nothing(pki: Pki) -> None:
    client = _client(pki)
    assert client.version is None and client.cipher is None
    assert not client.verified and client.peer_certificate_der is None
    with pytest.raises(RuntimeError):
        client.write(b"x")
    with pytest.raises(RuntimeError):
        client.read_into(bytearray(10))


def test_small_data_both_ways(pki: Pki) -> None:
    client, server = _pair(pki)
    client.write(b"EHLO client.example\r\n")
    server.feed(client.take_output())
    assert server.read() == b"EHLO client.example\r\n"
    assert server.read() == b""
    buf = bytearray(100)
    assert server.read_into(buf) == 0
    server.write(memoryview(b"250 willi.test\r\n"))
    client.feed(server.take_output())
    assert client.read() == b"250 willi.test\r\n"


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
def test_multi_megabyte_payload_is_byte_identical(pki: Pki, direction: str) -> None:
    client, server = _pair(pki)
    src, dst = (client, server) if direction == "client_to_server" else (server, client)
    payload = os.urandom(5 * 1024 * 1024 + 123)
    assert _transfer(src, dst, payload) == payload


def test_read_into_fills_a_large_buffer_in_one_call(pki: Pki) -> None:
    # Several records decrypted by one call: the hot path asks once per 64 KiB.
    client, server = _pair(pki)
    client.write(b"a" * (CHUNK + 10))
    server.feed(client.take_output())
    buf = bytearray(CHUNK)
    assert server.read_into(buf) == CHUNK
    assert server.read_into(memoryview(buf)[:20]) == 10
    assert server.read_into(buf) == 0


def test_ciphertext_fed_byte_by_byte(pki: Pki) -> None:
    # Records split at every possible point: handshake() after each byte.
    client, server = _client(pki), _server(pki)
    client.handshake()
    for _ in range(20):
        for src, dst in ((client, server), (server, client)):
            for byte in src.take_output():
                dst.feed(bytes([byte]))
                dst.handshake()
        if client.established and server.established:
            break
    assert client.established and server.established
    client.write(b"MAIL FROM:<a@b.example>\r\n")
    got = bytearray()
    for byte in client.take_output():
        server.feed(bytes([byte]))
        got += server.read()
    assert bytes(got) == b"MAIL FROM:<a@b.example>\r\n"


def test_data_pipelined_behind_handshake_must_be_read_at_once(pki: Pki) -> None:
    # The client's Finished and its first command arrive in one feed; the
    # server's handshake() consumes the Finished and leaves the command in
    # the engine, where only an immediate read finds it.
    client, server = _client(pki), _server(pki)
    while not client.handshake():
        shuttle(client, server)
        server.handshake()
    client.write(b"EHLO again\r\n")
    server.feed(client.take_output())
    assert server.handshake() is True
    assert server.buffered_input > 0
    assert server.read() == b"EHLO again\r\n"


def test_handshake_is_idempotent(pki: Pki) -> None:
    client, server = _pair(pki)
    assert client.handshake() and client.handshake()
    assert server.handshake() and server.handshake()
    assert client.take_output() == b"" and server.take_output() == b""


# --- verification ----------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verify_against_ca_succeeds_for_upstream(pki: Pki, host: str) -> None:
    client = _client(pki, host=host)
    server = _server_with(pki.upstream_cert, pki.upstream_key)
    handshake(client, server)
    assert client.verified


def test_verify_willi_cert_over_ipv6_literal(pki: Pki) -> None:
    client, _ = _pair(pki, host="::1")
    assert client.verified


def test_verify_fails_on_wrong_host_name(pki: Pki) -> None:
    client, server = _client(pki, host="mx.example.org"), _server(pki)
    with pytest.raises(TLSError, match="Hostname mismatch"):
        handshake(client, server)
    # Sticky: a second call fails the same way.
    with pytest.raises(TLSError, match="Hostname mismatch"):
        client.handshake()


def test_verify_fails_against_untrusted_certificate(pki: Pki) -> None:
    client = _client(pki)
    server = _server_with(pki.untrusted_cert, pki.untrusted_key)
    with pytest.raises(TLSError, match="self-signed"):
        handshake(client, server)
    # The alert was queued for the peer, which then fails too.
    server.feed(client.take_output())
    with pytest.raises(TLSError):
        server.handshake()


def test_no_verify_accepts_untrusted_certificate(pki: Pki) -> None:
    client = _client(pki, verify=False)
    server = _server_with(pki.untrusted_cert, pki.untrusted_key)
    handshake(client, server)
    assert not client.verified
    assert client.peer_certificate is None
    assert client.peer_certificate_der  # still there, for a fingerprint in logs


def test_verify_needs_a_host_name(pki: Pki) -> None:
    with pytest.raises(TLSError, match="server_hostname"):
        _client(pki, host=None)


def test_client_certificate_seen_by_requiring_server(pki: Pki) -> None:
    client, server = _client(pki, with_cert=True), _server(pki, require_client_cert=True)
    handshake(client, server)
    assert server.verified
    assert server.peer_certificate is not None
    subject = dict(x[0] for x in server.peer_certificate["subject"])
    assert subject["commonName"] == "client.willi.test"


def test_missing_client_certificate_refused(pki: Pki) -> None:
    client, server = _client(pki), _server(pki, require_client_cert=True)
    with pytest.raises(TLSError, match="CERTIFICATE"):
        handshake(client, server)


def test_tls11_client_refused_by_server(pki: Pki) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"local OpenSSL cannot build a TLS 1.1 client context: {exc}")
    client = TLSEngine(context, server_side=False, server_hostname="localhost")
    try:
        client.handshake()
    except TLSError as exc:
        pytest.skip(f"local OpenSSL refuses to start a TLS 1.1 handshake: {exc}")
    hello = client.take_output()
    if not hello:
        pytest.skip("local OpenSSL produced no TLS 1.1 ClientHello")
    server = _server(pki)
    server.feed(hello)
    with pytest.raises(TLSError, match="UNSUPPORTED_PROTOCOL|VERSION"):
        server.handshake()


# --- failures and close ------------------------------------------------------


def test_garbage_refused_during_handshake(pki: Pki) -> None:
    server = _server(pki)
    server.feed(b"EHLO plaintext.example\r\nMAIL FROM:<a@b>\r\n")
    with pytest.raises(TLSError, match="TLS handshake failed"):
        server.handshake()
    with pytest.raises(TLSError):
        server.handshake()


def test_garbage_refused_after_handshake(pki: Pki) -> None:
    client, server = _pair(pki)
    server.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record that fails to decrypt
    with pytest.raises(TLSError, match="TLS read failed"):
        server.read_into(bytearray(CHUNK))


def test_eof_during_handshake_is_an_error(pki: Pki) -> None:
    client, server = _client(pki), _server(pki)
    client.handshake()
    server.feed(client.take_output())
    server.handshake()
    server.feed(b"")
    with pytest.raises(TLSError):
        server.handshake()


def test_close_notify_sets_peer_closed(pki: Pki) -> None:
    client, server = _pair(pki)
    client.write(b"QUIT\r\n")
    client.close()
    client.close()  # idempotent
    server.feed(client.take_output())
    assert server.read() == b"QUIT\r\n"  # data before the close is delivered
    assert server.peer_closed and not server.truncated
    assert server.read_into(bytearray(10)) == 0
    server.close()
    client.feed(server.take_output())
    assert client.read() == b""
    assert client.peer_closed and not client.truncated


def test_close_notify_after_data_in_the_same_read(pki: Pki) -> None:
    client, server = _pair(pki)
    client.write(b"221 bye\r\n")
    client.close()
    server.feed(client.take_output())
    buf = bytearray(CHUNK)
    assert server.read_into(buf) == 9 and bytes(buf[:9]) == b"221 bye\r\n"
    assert server.peer_closed
    assert server.read_into(buf) == 0


def test_transport_eof_without_close_notify_is_truncation(pki: Pki) -> None:
    client, server = _pair(pki)
    server.feed(b"")
    server.feed(b"ignored after EOF")
    assert server.read_into(bytearray(10)) == 0
    assert server.peer_closed and server.truncated


def test_close_before_handshake_is_harmless(pki: Pki) -> None:
    client = _client(pki)
    client.close()
    assert client.take_output() == b""


# --- contexts ----------------------------------------------------------------


def test_server_context_settings(pki: Pki) -> None:
    context = server_context(str(pki.willi_cert), str(pki.willi_key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_server_context_loading_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="cannot load certificate .*missing.crt"):
        server_context(str(tmp_path / "missing.crt"), str(pki.willi_key))
    with pytest.raises(TLSError, match="KEY_VALUES_MISMATCH"):
        server_context(str(pki.willi_cert), str(pki.upstream_key))


def test_encrypted_key_fails_without_prompting(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.willi_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSError, match="cannot load certificate"):
        server_context(str(pki.willi_cert), str(encrypted))


def test_client_context_modes(pki: Pki, tmp_path: Path) -> None:
    strict = client_context(True, str(pki.ca_cert))
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2
    system = client_context(True, None)
    assert system.verify_mode == ssl.CERT_REQUIRED
    lax = client_context(False, None)
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname
    with pytest.raises(TLSError, match="cannot load CA file"):
        client_context(True, str(tmp_path / "missing-ca.pem"))
    with pytest.raises(TLSError, match="without a client certificate"):
        client_context(False, None, None, str(pki.client_key))


# --- real sockets ------------------------------------------------------------


class _Endpoint:
    """A non-blocking socket with an engine, driven the way the reactor will."""

    __slots__ = ("sock", "engine", "received", "outbox", "buf")

    def __init__(self, sock: socket.socket, engine: TLSEngine) -> None:
        self.sock = sock
        self.engine = engine
        self.received = bytearray()
        self.outbox = bytearray()
        self.buf = bytearray(CHUNK)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(CHUNK)
        except BlockingIOError:
            return
        self.engine.feed(data)
        if self.engine.handshake():
            while count := self.engine.read_into(self.buf):
                self.received += self.buf[:count]

    def flush(self) -> None:
        self.outbox += self.engine.take_output()
        if self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                return
            del self.outbox[:sent]


def _run(endpoints: list[_Endpoint], until: object, deadline: float) -> None:
    with selectors.DefaultSelector() as selector:
        for endpoint in endpoints:
            selector.register(endpoint.sock, selectors.EVENT_READ, endpoint)
        while not until():  # type: ignore[operator]
            assert time.monotonic() < deadline, "socket test timed out"
            for endpoint in endpoints:
                endpoint.flush()
            for key, _ in selector.select(timeout=0.01):
                key.data.on_readable()


def test_real_socket_pair(pki: Pki) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        client = _Endpoint(left, _client(pki, host="willi.test"))
        server = _Endpoint(right, _server(pki))
        deadline = time.monotonic() + 30
        client.engine.handshake()
        both = [client, server]
        _run(both, lambda: client.engine.established and server.engine.established, deadline)
        up, down = os.urandom(3 * 1024 * 1024), os.urandom(2 * 1024 * 1024)
        client.engine.write(up)
        server.engine.write(down)
        total = len(up) + len(down)
        _run(both, lambda: len(server.received) + len(client.received) >= total, deadline)
        assert bytes(server.received) == up and bytes(client.received) == down
        client.engine.close()
        _run(both, lambda: server.engine.peer_closed, deadline)
        assert not server.engine.truncated

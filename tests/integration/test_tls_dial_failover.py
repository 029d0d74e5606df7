"""A target that goes away inside the TLS handshake fails at once (SPEC §4:
targets are tried in order until one greets, a TLS failure among the
failures), so the next target gets the transaction without the client
waiting for the handshake's timeout (a TCP balancer with no live backend
accepts, reads the ClientHello and closes)."""

from __future__ import annotations

import socket
import threading
import time

from tests.integration.test_relay import deliver, open_session

TIMEOUT = 30  # WILLI_UPSTREAM_COMMAND_TIMEOUT, the handshake's limit too


class ClosesOnClientHello:
    """Accepts, reads what the client sends first, and closes without a TLS alert."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.hellos: list[bytes] = []
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT)
            self.hellos.append(conn.recv(4096))

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_a_target_that_closes_inside_the_tls_handshake_fails_over_at_once(launch):
    bad, good = ClosesOnClientHello(), launch.upstream()
    try:
        willi = launch.willi({"WILLI_MAPPING_1": f"static:smtps://127.0.0.1:{bad.port},{good.address}",
                              "WILLI_MAPPING_1_TLS_VERIFY": "false",
                              "WILLI_UPSTREAM_COMMAND_TIMEOUT": f"{TIMEOUT}s"})
        with open_session(willi) as client:
            started = time.monotonic()
            assert deliver(client, "u@example.org").code == 250
            waited = time.monotonic() - started
    finally:
        bad.close()
    assert bad.hellos and bad.hellos[0][:1] == b"\x16"  # it did get a TLS ClientHello
    assert len(good.wait_for_messages(1)) == 1
    assert waited < TIMEOUT / 2, f"the client waited {waited:.1f}s: the handshake's timeout, not the close"
    record = willi.wait_for_log(lambda r: r.get("event") == "upstream_failed")
    assert "during the TLS handshake" in record.get("error", "")

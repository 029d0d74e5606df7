"""Memory stays bounded with TLS on both sides too (the TLS issue): a body of
over 100 MiB from a STARTTLS client to a slow STARTTLS upstream leaves
Willi's resident set flat, because TLS output counts towards the water marks
that stop Willi reading the client."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from tests.integration.test_memory import CHUNK, GROWTH_LIMIT_KIB, MiB, RssSampler
from tests.integration.test_tls_upstream import TlsScriptableUpstream, server_context
from tests.support.certs import Pki
from tests.support.net import LOOPBACK_V4, SmtpRawClient, free_port
from tests.support.upstream import FaultScript
from tests.support.willi_process import WilliProcess

CHUNKS = (100 * MiB) // len(CHUNK) + 2
BODY_SIZE = len(CHUNK) * CHUNKS
UPSTREAM_RATE = 16 * MiB
DEADLINE = 120.0


@pytest.mark.slow
def test_a_100_mib_body_through_tls_on_both_sides_leaves_willis_memory_flat(tmp_path: Path, pki: Pki) -> None:
    faults = FaultScript(body_rate=UPSTREAM_RATE, body_chunk=32 * 1024)
    upstream = TlsScriptableUpstream(
        tls_context=server_context(pki.upstream_cert, pki.upstream_key), faults=faults,
        keep_bodies=False, rcvbuf=64 * 1024, idle_timeout=DEADLINE)
    env = {
        "WILLI_LISTEN": f"{LOOPBACK_V4}:{free_port()}",
        "WILLI_HOSTNAME": "willi.test",
        "WILLI_TLS_CERT": str(pki.willi_cert),
        "WILLI_TLS_KEY": str(pki.willi_key),
        "WILLI_UPSTREAM_STARTTLS": "required",
        "WILLI_UPSTREAM_TLS_CA": str(pki.ca_cert),
        "WILLI_MAX_MESSAGE_SIZE": "1GiB",
        "WILLI_CLIENT_TIMEOUT": f"{DEADLINE:.0f}s",
        "WILLI_UPSTREAM_DATA_TIMEOUT": f"{DEADLINE:.0f}s",
        "WILLI_XCLIENT": "off",
    }
    client_tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    with upstream:
        env["WILLI_MAPPING_1"] = f"static:localhost:{upstream.port}"
        with WilliProcess(env, tmp_path) as willi, \
                SmtpRawClient(willi.host, willi.port, timeout=DEADLINE) as client:
            assert client.read_reply().code == 220
            assert client.command("EHLO client.test").code == 250
            assert client.command("STARTTLS").code == 220
            client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
            assert client.command("EHLO client.test").code == 250
            assert client.command(f"MAIL FROM:<big@client.test> SIZE={BODY_SIZE}").code == 250
            assert client.command("RCPT TO:<user@example.org>").code == 250
            assert client.command("DATA").code == 354
            before = willi.rss_kib()
            started = time.monotonic()
            with RssSampler(willi, upstream) as sampler:  # type: ignore[arg-type]
                for _ in range(CHUNKS):
                    client.send(CHUNK)
                    assert time.monotonic() - started < DEADLINE, "transfer too slow"
                client.send(b".\r\n")
                final = client.read_reply(DEADLINE)
            assert client.command("QUIT").code == 221
            line = willi.wait_for_log(lambda r: r.get("event") == "transaction")

    assert final.code == 250, (final, sampler.trace)
    assert upstream.body_bytes_received == BODY_SIZE + 3
    assert line.get("tls", "").startswith("TLSv1.") and line.get("upstream_tls", "").endswith("verified")
    growth = sampler.peak - before
    assert len(sampler.samples) > 100
    assert growth < GROWTH_LIMIT_KIB, f"Willi's RSS grew by {growth} KiB for a {BODY_SIZE // MiB} MiB body over TLS"

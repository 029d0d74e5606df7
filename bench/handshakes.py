"""What one TLS handshake costs Willi, full and resumed, on each side.

W5-W1 measures the whole proxy, where a handshake is one cost among many
(and on a shared 2-core machine the Python relays' noise is as large as the
difference resumption makes). This takes Willi's own `TLSEngine` out of it:
a client engine (Willi towards an upstream, `willi.tls.client_context` with
verification) and a server engine (Willi towards a client,
`willi.tls.server_context`) handshake in memory, no sockets, and each side's
calls are timed with the thread's CPU clock, including the engine's creation
and the first reply after the handshake (which carries TLS 1.3's tickets).
"Resumed" offers the session the previous handshake left, as the dialer
does (WILLI_UPSTREAM_TLS_RESUME) and as a client with a session cache does.

    python bench/handshakes.py            # a table in Markdown
    python bench/handshakes.py --json     # the numbers

Certificates: a throwaway ECDSA P-256 CA and server certificate made with the
openssl CLI (bench/setups.make_certs), as for W5. Figures are the best of
five passes of 200 handshakes (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import json
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from setups import make_certs  # noqa: E402
from willi.tls import TLSEngine, client_context, server_context  # noqa: E402

HANDSHAKES = 200
PASSES = 5


def handshake(cctx: ssl.SSLContext, sctx: ssl.SSLContext,
              session: ssl.SSLSession | None) -> tuple[float, float, ssl.SSLSession | None, bool]:
    """One handshake and one reply; (client CPU s, server CPU s, next session, resumed)."""
    clock = time.thread_time
    t0 = clock()
    client = TLSEngine(cctx, server_side=False, server_hostname="localhost", session=session)
    t1 = clock()
    server = TLSEngine(sctx, server_side=True)
    t2 = clock()
    spent_c, spent_s = t1 - t0, t2 - t1
    for _ in range(20):
        t0 = clock()
        done_c = client.handshake()
        out_c = client.take_output()
        t1 = clock()
        if out_c:
            server.feed(out_c)
        done_s = server.handshake()
        out_s = server.take_output()
        t2 = clock()
        if out_s:
            client.feed(out_s)
        spent_c += t1 - t0
        spent_s += t2 - t1
        if done_c and done_s and not out_c and not out_s:
            break
    t0 = clock()
    server.write(b"250 ok\r\n")  # the EHLO reply (or greeting); tickets are ahead of it
    client.feed(server.take_output())
    t1 = clock()
    assert client.read() == b"250 ok\r\n"
    t2 = clock()
    return spent_c + (t2 - t1), spent_s + (t1 - t0), client.session, client.session_reused


def measure(version: ssl.TLSVersion, resume: bool, cctx: ssl.SSLContext,
            sctx: ssl.SSLContext) -> dict[str, float]:
    cctx.maximum_version = version
    best_c = best_s = float("inf")
    resumed = 0
    for _ in range(PASSES):
        _, _, session, _ = handshake(cctx, sctx, None)
        total_c = total_s = 0.0
        resumed = 0
        for _ in range(HANDSHAKES):
            c, s, new, reused = handshake(cctx, sctx, session if resume else None)
            total_c += c
            total_s += s
            resumed += reused
            if resume and new is not None:
                session = new
        best_c, best_s = min(best_c, total_c), min(best_s, total_s)
    return {"client_ms": best_c / HANDSHAKES * 1000, "server_ms": best_s / HANDSHAKES * 1000,
            "resumed": resumed / HANDSHAKES}


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="willi-handshakes-") as tmp:
        certs = make_certs(Path(tmp))
        cctx = client_context(True, str(certs.ca))
        sctx = server_context(str(certs.cert), str(certs.key))
        rows = []
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            for resume in (False, True):
                rows.append({"version": version.name.replace("_", "."), "resumed": resume,
                             **measure(version, resume, cctx, sctx)})
    if "--json" in argv:
        print(json.dumps({"openssl": ssl.OPENSSL_VERSION, "rows": rows}, indent=2))
        return 0
    print(f"{ssl.OPENSSL_VERSION}, ECDSA P-256, best of {PASSES} x {HANDSHAKES} handshakes\n")
    print("| protocol | handshake | Willi as client (upstream) ms CPU | Willi as server (client side) ms CPU "
          "| resumed |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['version']} | {'resumed' if row['resumed'] else 'full'} | {row['client_ms']:.3f} "
              f"| {row['server_ms']:.3f} | {row['resumed']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""STARTTLS on either end of a W5 path, for tools that speak only plain SMTP.

    python tlsrelay.py client LISTEN_PORT TARGET_PORT --ca CA.pem --name localhost [--resume]
    python tlsrelay.py server LISTEN_PORT TARGET_PORT --cert CERT.pem --key KEY.pem

`client`: smtp-source connects here in plaintext; for each connection the relay
connects to TARGET (the proxy, or the `server` relay for direct-tls), passes
its greeting on, sends `EHLO`, `STARTTLS`, does the handshake (the chain is
verified against --ca, the name against --name) and from then on copies bytes:
smtp-source's own EHLO, MAIL, ... travel inside TLS. Like stunnel's client
mode with `protocol = smtp`. With --resume each handshake offers the newest
session an earlier connection left (taken when that connection ends, so a
TLS 1.3 server's tickets have arrived): what a client that caches sessions,
as Postfix's smtp_tls_session_cache_database does, costs the proxy.

`server`: the TLS-capable sink side. Greets with its own `220`, answers EHLO
with `250 STARTTLS`, does the server handshake, then connects to TARGET
(smtp-sink), swallows its greeting (after STARTTLS the client sends EHLO
again and expects no new greeting) and copies bytes. Like stunnel's server
mode with `protocol = smtp`, without its 200 ms wait per connection.

Why not stunnel (bench/README or BENCHMARKS.md's Method has the numbers):
stunnel's server mode waits 200 ms on every connection to see whether the
client talks first (its RFC 2487 detection), which caps a 50-session
connection-per-message load at 250 msg/s, and stunnel's thread per connection
cost ~7 ms CPU per connection on the benchmark's VM. This relay runs on one
asyncio loop, loopback only, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

CHUNK = 256 * 1024
LIMIT = 64 * 1024


async def reply(reader: asyncio.StreamReader) -> list[bytes]:
    """One SMTP reply, all its lines."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed in a reply")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass


async def splice(a: tuple, b: tuple) -> None:
    """Copy both ways until either side ends, then close both."""
    one = asyncio.ensure_future(pump(a[0], b[1]))
    two = asyncio.ensure_future(pump(b[0], a[1]))
    await asyncio.wait([one, two], return_when=asyncio.FIRST_COMPLETED)
    for writer in (a[1], b[1]):
        writer.close()
    await asyncio.gather(one, two, return_exceptions=True)


def fail(stats: dict, what: str, exc: BaseException) -> None:
    stats["errors"] += 1
    if stats["errors"] <= 5:
        print(f"tlsrelay: {what}: {exc!r}", file=sys.stderr, flush=True)


class ResumingContext(ssl.SSLContext):
    """asyncio's start_tls() has no session argument, but it creates its
    SSLObject through context.wrap_bio(): offer the newest session there."""

    session: ssl.SSLSession | None = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=server_hostname, session=session or self.session)


def resuming_client_context(ca: str) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)  # as create_default_context: chain and name checked
    return ctx


def count_resumed(stats: dict, writer: asyncio.StreamWriter) -> None:
    sslobj = writer.get_extra_info("ssl_object")
    if sslobj is not None and sslobj.session_reused:
        stats["resumed"] += 1


class Client:
    def __init__(self, target: int, ctx: ssl.SSLContext, name: str):
        self.target, self.ctx, self.name = target, ctx, name
        self.stats = {"errors": 0, "tls": 0, "resumed": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_w = None
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target, limit=LIMIT)
            greeting = await reply(up_r)
            writer.write(b"".join(greeting))
            if not greeting[-1].startswith(b"220"):
                raise ConnectionError(f"greeting {greeting[-1]!r}")
            up_w.write(b"EHLO tls-client.bench.test\r\n")
            ehlo = await reply(up_r)
            if not any(line[4:].upper().startswith(b"STARTTLS") for line in ehlo):
                raise ConnectionError("no STARTTLS in the EHLO reply")
            up_w.write(b"STARTTLS\r\n")
            ready = await reply(up_r)
            if not ready[-1].startswith(b"220"):
                raise ConnectionError(f"STARTTLS answered {ready[-1]!r}")
            await up_w.start_tls(self.ctx, server_hostname=self.name)
            self.stats["tls"] += 1
            count_resumed(self.stats, up_w)
            sslobj = up_w.get_extra_info("ssl_object")  # kept: a closed transport has none
            await splice((reader, writer), (up_r, up_w))
            if isinstance(self.ctx, ResumingContext) and sslobj is not None:
                session = sslobj.session
                if session is not None and session.has_ticket:
                    self.ctx.session = session
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
            fail(self.stats, "client side", exc)
            writer.close()
            if up_w is not None:
                up_w.close()


class Server:
    def __init__(self, target: int, ctx: ssl.SSLContext):
        self.target, self.ctx = target, ctx
        self.stats = {"errors": 0, "tls": 0, "resumed": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_w = None
        try:
            writer.write(b"220 tls-sink.bench.test ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    writer.close()
                    return
                verb = line[:8].upper().strip()
                if verb.startswith((b"EHLO", b"HELO")):
                    writer.write(b"250-tls-sink.bench.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif verb == b"STARTTLS":
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    break
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
            await writer.start_tls(self.ctx)
            self.stats["tls"] += 1
            count_resumed(self.stats, writer)
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target, limit=LIMIT)
            greeting = await reply(up_r)  # swallowed: no greeting after STARTTLS
            if not greeting[-1].startswith(b"220"):
                raise ConnectionError(f"sink greeting {greeting[-1]!r}")
            await splice((reader, writer), (up_r, up_w))
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
            fail(self.stats, "server side", exc)
            writer.close()
            if up_w is not None:
                up_w.close()


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["client", "server"])
    p.add_argument("listen", type=int)
    p.add_argument("target", type=int)
    p.add_argument("--ca")
    p.add_argument("--name", default="localhost")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--resume", action="store_true", help="client: offer the last session")
    args = p.parse_args(argv)
    if args.mode == "client":
        ctx = resuming_client_context(args.ca) if args.resume else ssl.create_default_context(cafile=args.ca)
        handler = Client(args.target, ctx, args.name)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(args.cert, args.key)
        handler = Server(args.target, ctx)
    server = await asyncio.start_server(handler.handle, "127.0.0.1", args.listen,
                                        limit=LIMIT, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"tlsrelay {args.mode} listening on 127.0.0.1:{args.listen}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    print(f"tlsrelay {args.mode}: {handler.stats['tls']} TLS handshakes "
          f"({handler.stats['resumed']} resumed), {handler.stats['errors']} connection errors",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

#!/usr/bin/env python3
"""A demo upstream for `make run`: a tiny SMTP server that prints every
message it receives and accepts it. Standard library only; not for production.

    python3 examples/demo_upstream.py [PORT]   (default 2526, on 127.0.0.1)
"""

import socketserver
import sys


class DemoSMTP(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 demo-upstream ESMTP")
        envelope: dict = {"from": None, "to": []}
        for raw in self.rfile:
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = line[:4].upper()
            if verb in ("EHLO", "LHLO"):
                self.reply("250-demo-upstream\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8")
            elif verb == "HELO":
                self.reply("250 demo-upstream")
            elif verb == "MAIL":
                envelope = {"from": line[10:], "to": []}
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                envelope["to"].append(line[8:])
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                self.show(envelope, self.read_body())
                self.reply("250 2.0.0 Ok: delivered to the demo upstream")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("250 2.0.0 Ok")

    def read_body(self) -> bytes:
        lines = []
        for raw in self.rfile:
            if raw == b".\r\n":
                break
            lines.append(raw[1:] if raw.startswith(b"..") else raw)
        return b"".join(lines)

    def show(self, envelope: dict, body: bytes) -> None:
        print(f"--- demo upstream received a message from {self.client_address[0]}", flush=True)
        print(f"MAIL FROM {envelope['from']}  RCPT TO {', '.join(envelope['to'])}", flush=True)
        print(body.decode("utf-8", "replace"), flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2526
    with Server(("127.0.0.1", port), DemoSMTP) as server:
        print(f"demo upstream listening on 127.0.0.1:{port}", flush=True)
        server.serve_forever()

"""A real SMTP server (aiosmtpd) that records what Willi delivers to it.

Where `ScriptableUpstream` is for fault injection, `RecordingUpstream` is an
independent, standards-following implementation: if Willi's upstream dialogue
satisfies aiosmtpd too, it is not just agreeing with our own test server.
It also offers STARTTLS (`tls_context=`) and implicit TLS (`ssl_context=`).
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .net import LOOPBACK_V4, LoopbackServer, free_port, wait_until


@dataclass
class RecordedMessage:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # as aiosmtpd received it: dot-stuffing removed, CRLF kept
    original_content: bytes | None
    mail_options: list[str]
    rcpt_options: list[str]
    peer: tuple
    helo: str | None
    tls: bool


class _Handler:
    def __init__(self, owner: "RecordingUpstream") -> None:
        self.owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        message = RecordedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            content=content,
            original_content=envelope.original_content,
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            peer=session.peer,
            helo=session.host_name,
            tls=session.ssl is not None,
        )
        with self.owner._lock:
            self.owner.messages.append(message)
        return self.owner.data_reply


class RecordingUpstream(LoopbackServer):
    """aiosmtpd `Controller` on 127.0.0.1:<free port> that keeps envelopes."""

    def __init__(
        self,
        host: str = LOOPBACK_V4,
        port: int | None = None,
        *,
        ready_timeout: float = 10.0,
        enable_SMTPUTF8: bool = True,
        tls_context: ssl.SSLContext | None = None,
        ssl_context: ssl.SSLContext | None = None,
        data_reply: str = "250 2.0.0 Ok: queued",
        server_hostname: str = "recorder.test",
        **smtp_kwargs: object,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.data_reply = data_reply
        self.messages: list[RecordedMessage] = []
        self._lock = threading.Lock()
        if tls_context is not None:
            smtp_kwargs.setdefault("require_starttls", False)
        self.controller = Controller(
            _Handler(self),
            hostname=host,
            port=self.port,
            ready_timeout=ready_timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            enable_SMTPUTF8=enable_SMTPUTF8,
            decode_data=False,
            tls_context=tls_context,
            **smtp_kwargs,
        )
        self._started = False

    def start(self) -> "RecordingUpstream":
        self.controller.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.controller.stop()



    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[RecordedMessage]:
        wait_until(lambda: len(self.messages) >= n, timeout, message=f"{n} recorded messages")
        with self._lock:
            return list(self.messages)

"""Willi's own SMTP fuzzer (issue 9): seeded, bounded, against a live Willi.

Each input is a client conversation generated from a seed and an index
alone (so any one can be replayed): a plausible SMTP session or a soup of
commands — long lines, bare CR/LF/NUL line ends, smuggling forms of the end
of data, BDAT with sizes that lie, STARTTLS with commands pipelined behind
it, early talkers — then mutated byte-wise, split at random points (with
short pauses, so the splits survive TCP), and ended by a half-close, a close
or a TCP reset at a random moment. Willi relays to two `FuzzUpstream`s that
record every raw byte and misbehave on cue: the sender's local part carries
the input's marker and a mode (reject, 421, close, slow DATA, ...).

The invariants, checked for every input:

- the process never dies and never logs a traceback (or a session_fault);
- every reply is well formed: 3 digits, space or dash, CRLF, <= 512 octets,
  one code per multi-line reply, nothing left unterminated at a clean EOF;
- outside a body, nothing reaches an upstream but well-formed CRLF command
  lines of at most 512 octets with a verb Willi uses;
- body bytes reach an upstream only as the client sent them (a committed
  body is a slice of the client's stream) and never hold a smuggled end of
  data, a bare CR or LF, or a NUL (WILLI_BARE_LF=reject);
- a `250 ... queued as N` reaches the client only after the upstream
  committed message N of that same input, and only once.

`Campaign` runs inputs in parallel connections, in batches; when Willi dies
it records the batch (and the stderr tail), starts Willi again and goes on.
Violations whose signature matches a known, separately fixed bug carry its
name in `known`, so a test can tell them from new ones.
"""

from __future__ import annotations

import itertools
import random
import re
import select
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .certs import make_pki
from .net import free_port
from .upstream import (
    DEFAULT_CAPABILITIES, MAX_LINE, XCLIENT_CAPABILITY, Action, Delay, ScriptableUpstream, Session, _Closed,
)
from .willi_process import WilliProcess

UPSTREAM_VERBS = frozenset(b"EHLO HELO LHLO STARTTLS XCLIENT MAIL RCPT DATA BDAT RSET QUIT NOOP AUTH".split())
_COMMAND_LINE = re.compile(rb"([A-Z]{4,8})(?: [^\x00-\x1f\x7f]*)?\r\n")
_REPLY_LINE = re.compile(rb"[2-5][0-9]{2}(?:[ -][^\r\n]*)?")
_QUEUED = re.compile(rb"^250[ -].*queued as (\d+)", re.MULTILINE)
_MARKER = re.compile(rb"fz([0-9a-f]{12})m([0-9])")
# A dot between line-end characters that is not the one real end of data.
_SMUGGLED_END = re.compile(rb"[\r\n]\.[\r\n]")

KNOWN_ITEM_1 = "issue 9 item 1 (reset during DATA kills the process; fixed on h-relay)"
KNOWN_ITEM_2 = "issue 9 item 2 (a chunk-final CR forwarded early; fixed on h-relay)"


# --- inputs -----------------------------------------------------------------------
@dataclass
class FuzzInput:
    index: int
    marker: str
    chunks: list[bytes]
    pauses: list[float]  # after each chunk
    ending: str  # eof | close | rst
    reset_at: int  # chunk index before which an "rst" ending resets
    wait_greeting: bool
    source: str

    @property
    def stream(self) -> bytes:
        return b"".join(self.chunks)

    def describe(self) -> str:
        return (f"input {self.index} ({self.ending}{'@%d' % self.reset_at if self.ending == 'rst' else ''}, "
                f"{len(self.chunks)} chunks, greeting {'awaited' if self.wait_greeting else 'not awaited'}): "
                f"{self.stream[:600]!r}{'...' if len(self.stream) > 600 else ''}")


MODES = {
    0: "ok", 1: "rcpt 550", 2: "dot 451", 3: "close at dot", 4: "DATA 0.4 s late",
    5: "mail 553", 6: "rcpt 421", 7: "close at DATA", 8: "dot 0.3 s late",
}


class _Gen:
    """One input's generator: a Random seeded by (seed, index) alone."""

    def __init__(self, seed: int, index: int) -> None:
        self.r = random.Random(f"willi-fuzz:{seed}:{index}")
        self.marker = "%012x" % self.r.getrandbits(48)

    def eol(self) -> bytes:
        return self.r.choices([b"\r\n", b"\n", b"\r", b"\r\r\n", b"\r\n\r\n"], [90, 3, 2, 2, 3])[0]

    def sender(self) -> bytes:
        mode = self.r.choices(list(MODES), [40, 8, 8, 6, 8, 5, 5, 5, 5])[0]
        local = f"fz{self.marker}m{mode}".encode()
        forms = [b"<%s@origin.test>", b"<@route.test:%s@origin.test>", b'<"%s x"@origin.test>', b"%s@origin.test",
                 b"<%s@origin.test", b"<%s+" + b"l" * 70 + b"@origin.test>", b"<>", b"<%s@" + b"d" * 300 + b">"]
        form = self.r.choices(forms, [60, 4, 4, 4, 3, 3, 3, 3])[0]
        address = form % local if b"%s" in form else form
        params = self.r.choices([b"", b" SIZE=1000", b" SIZE=999999999", b" SIZE=abc", b" BODY=8BITMIME",
                                 b" SMTPUTF8", b" BODY=BINARYMIME", b" X-FOO=1", b" SIZE=1 SIZE=2",
                                 b" SIZE=" + b"9" * 30], [50, 10, 3, 3, 8, 5, 3, 3, 3, 2])[0]
        return self.r.choice([b"MAIL FROM:", b"MAIL FROM:", b"mail from:", b"MAIL FROM: "]) + address + params

    def recipient(self) -> bytes:
        forms = [b"<user@a.test>", b"<other@a.test>", b"<user@b.test>", b"<user@unrouted.test>", b"<postmaster>",
                 b"<>", b"<" + b"u" * 70 + b"@a.test>", b'<"u@evil.test"@a.test>', b"<@evil.test:user@a.test>",
                 b"<user@a.test@evil.test>", b"<user%evil.test@a.test>", b"<user@a.test> NOTIFY=NEVER",
                 b"user@a.test", b"<user@[127.0.0.1]>", b"<us\xc3\xa9r@a.test>", b"<user@a.test"]
        weights = [40, 10, 8, 6, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 3, 2]
        return self.r.choice([b"RCPT TO:", b"RCPT TO:", b"rcpt to:", b"RCPT TO: "]) + self.r.choices(forms, weights)[0]

    def body(self) -> bytes:
        r = self.r
        kind = r.choices(["text", "dots", "long", "big", "huge", "smuggle", "bare", "empty"],
                         [35, 8, 5, 6, 3, 20, 15, 3])[0]
        if kind == "text":
            return b"Subject: fuzz\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(r.randint(0, 30)))
        if kind == "dots":
            return b"Subject: dots\r\n\r\n..\r\n...x\r\n. \r\n.\t\r\n"
        if kind == "long":
            return b"Subject: long\r\n\r\n" + b"x" * r.choice([998, 1001, 5000, 70000]) + b"\r\n"
        if kind == "big":
            return b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * r.randint(500, 2500)  # 40..200 kB
        if kind == "huge":
            return (b"z" * 998 + b"\r\n") * r.randint(300, 400)  # over WILLI_MAX_MESSAGE_SIZE
        if kind == "smuggle":
            return b"Subject: s\r\n\r\nhello" + r.choice([
                b"\n.\n", b"\r.\r", b"\r\n.\r", b"\r\n.\rX\r\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r\r\n",
                b"\r\n\x00.\r\n"]) + b"MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@a.test>\r\nDATA\r\nsmuggled\r\n"
        if kind == "bare":
            return b"Subject: b\r\n\r\n" + r.choice([b"a\nb", b"a\rb", b"a\r\r\nb", b"a\x00b", b"a\r"]) + b"\r\n"
        return b""

    def end_of_data(self) -> bytes:
        return self.r.choices([b".\r\n", b"", b".\n", b"\n.\n", b".\r", b"..\r\n"], [85, 4, 3, 3, 3, 2])[0]

    def bdat(self) -> list[bytes]:
        r = self.r
        data = r.choice([b"hello\r\n", b"x" * 2000, b"a\nb\r\n", b"\r\n.\r\n", b""])
        size = r.choice([len(data), len(data), len(data) + 5, max(len(data) - 3, 0)])
        head = r.choice([b"BDAT %d" % size, b"BDAT %d LAST" % size, b"BDAT %d last" % size, b"BDAT abc",
                         b"BDAT -1", b"BDAT 99999999999", b"BDAT", b"BDAT 5 LAST EXTRA"])
        return [head + b"\r\n" + data]

    def misc(self) -> bytes:
        return self.r.choices([
            b"RSET", b"NOOP", b"HELP", b"VRFY user@a.test", b"EXPN staff", b"AUTH PLAIN AGEAYg==", b"QUIT",
            b"FROB", b"", b" NOOP", b"NOOP " + b"n" * 5000, b"NO\x00OP", b"NOOP\x85", b"NOOP\x0bX", b"DATA",
            b"STARTTLS", b"STARTTLS now", b"EHLO again.test", b"XCLIENT ADDR=1.2.3.4", b"LHLO x",
        ], [10, 10, 3, 3, 3, 3, 2, 3, 2, 2, 2, 2, 2, 2, 4, 4, 2, 3, 3, 2])[0]

    def hello(self) -> bytes:
        return self.r.choices([b"EHLO client.test", b"HELO client.test", b"EHLO", b"EHLO " + b"h" * 300,
                               b"EHLO " + b"h" * 5000, b"ehlo x y", b"EHLO [127.0.0.1]", b"EHLO \xc3\xa9.test",
                               b"EHLO c\x00.test"], [60, 10, 4, 5, 3, 4, 5, 5, 4])[0]

    def transaction(self) -> list[bytes]:
        r = self.r
        parts = [self.sender() + self.eol()]
        for _ in range(r.choices([0, 1, 2, 3, 6], [5, 60, 20, 10, 5])[0]):
            parts.append(self.recipient() + self.eol())
        if r.random() < 0.08:
            return parts + self.bdat()
        if r.random() < 0.85:
            parts.append(b"DATA" + self.eol())
            parts.append(self.body() + self.end_of_data())
        return parts

    def parts(self) -> list[bytes]:
        r = self.r
        parts = [self.hello() + self.eol()] if r.random() < 0.9 else []
        for _ in range(r.choices([1, 2, 3, 5], [60, 20, 12, 8])[0]):
            pick = r.random()
            if pick < 0.55:
                parts += self.transaction()
            elif pick < 0.62:
                parts.append(b"STARTTLS\r\n" + self.sender() + b"\r\n" + bytes(r.getrandbits(8) for _ in range(40)))
            else:
                parts.append(self.misc() + self.eol())
        if r.random() < 0.5:
            parts.append(b"QUIT\r\n")
        return parts

    def mutate(self, data: bytes) -> bytes:
        r = self.r
        buf = bytearray(data)
        for _ in range(r.choice([1, 1, 2, 3, 8])):
            if not buf:
                break
            at = r.randrange(len(buf) + 1)
            op = r.choice(["flip", "insert", "delete", "dup", "cut"])
            if op == "flip" and at < len(buf):
                buf[at] = r.getrandbits(8)
            elif op == "insert":
                buf[at:at] = r.choice([b"\r", b"\n", b".", b"\r\n.\r\n", b"\x00", b"\r\n", b" ", b"<", b":"])
            elif op == "delete":
                del buf[at : at + r.randint(1, 8)]
            elif op == "dup":
                buf[at:at] = buf[at : at + r.randint(1, 64)]
            elif op == "cut" and r.random() < 0.3:
                del buf[at:]
        return bytes(buf)

    def split(self, data: bytes) -> list[bytes]:
        r = self.r
        if len(data) <= 300 and r.random() < 0.1:
            return [data[i : i + 1] for i in range(len(data))] or [b""]
        cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.choice([0, 0, 1, 2, 3, 6])))) if len(data) > 1 else []
        # Cuts right after a CR are what issue 9 item 2 is about: favour them.
        crs = [i + 1 for i, b in enumerate(data[:20000]) if b == 13]
        if crs and r.random() < 0.3:
            cuts = sorted(set(cuts) | set(r.sample(crs, min(len(crs), 2))))
        bounds = [0, *cuts, len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def generate(seed: int, index: int) -> FuzzInput:
    """Input `index` of the campaign with `seed`: the same every time."""
    gen = _Gen(seed, index)
    r = gen.r
    parts = gen.parts()
    if r.random() < 0.04:  # issue 9 item 1's shape: a body in one write, then a reset
        parts = [b"EHLO c.test\r\n", f"MAIL FROM:<fz{gen.marker}m4@origin.test>\r\n".encode(),
                 b"RCPT TO:<user@a.test>\r\n", b"DATA\r\n" + b"w" * r.choice([1000, 100_000])]
        chunks, ending, reset_at = [b"".join(parts)], "rst", 1
    else:
        stream = b"".join(parts)
        if r.random() < 0.35:
            stream = gen.mutate(stream)
        chunks = gen.split(stream)
        ending = r.choices(["eof", "close", "rst"], [75, 10, 15])[0]
        reset_at = r.randrange(len(chunks) + 1)
    pauses = [r.choice([0.0, 0.0, 0.0, 0.003, 0.02]) if i < len(chunks) - 1 else 0.0 for i in range(len(chunks))]
    return FuzzInput(index, gen.marker, chunks, pauses, ending, reset_at, r.random() < 0.5,
                     f"127.0.{r.randint(0, 3)}.{r.randint(2, 250)}")


# --- the recording upstream ---------------------------------------------------------
@dataclass
class Violation:
    kind: str
    detail: str
    inputs: list[int] = field(default_factory=list)
    known: str | None = None
    marker: str | None = None  # the input's marker, when an upstream saw it

    def __str__(self) -> str:
        known = f" [known: {self.known}]" if self.known else ""
        return f"{self.kind}{known} (inputs {self.inputs}): {self.detail}"


class FuzzUpstream(ScriptableUpstream):
    """A ScriptableUpstream that keeps every raw line and body and checks them."""

    def __init__(self, first_queue_id: int = 1, **kwargs: object) -> None:
        super().__init__(capabilities=(*DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY), on_command=self._mode,
                         idle_timeout=30.0, stall_timeout=5.0, **kwargs)  # type: ignore[arg-type]
        self._queue_ids = itertools.count(first_queue_id)  # unique across the campaign's upstreams
        self.violations: list[Violation] = []
        self.committed: dict[int, tuple[str | None, bytes]] = {}  # queue id -> (marker, raw body)
        self._guard = threading.Lock()

    def _flag(self, session: Session, kind: str, detail: str, known: str | None = None) -> None:
        marker = getattr(session, "fz_marker", None)
        with self._guard:
            self.violations.append(Violation(kind, f"upstream session {session.number} marker {marker}: {detail}",
                                             known=known, marker=marker))

    def _mode(self, session: Session, line: bytes) -> object:
        verb = line[:4].upper()
        if verb == b"MAIL":
            found = _MARKER.search(line)
            session.fz_marker = found[1].decode() if found else None  # type: ignore[attr-defined]
            session.fz_mode = int(found[2]) if found else 0  # type: ignore[attr-defined]
        mode = getattr(session, "fz_mode", 0)
        table = {
            (b"MAIL", 5): b"553 5.7.1 Sender refused\r\n", (b"RCPT", 1): b"550 5.1.1 No such user\r\n",
            (b"RCPT", 6): b"421 4.3.0 Going away\r\n", (b"DATA", 7): Action.CLOSE, (b"DATA", 4): Delay(0.4),
            (b".", 2): b"451 4.3.0 Try later\r\n", (b".", 3): Action.CLOSE, (b".", 8): Delay(0.3),
        }
        return table.get((verb if line != b"." else b".", mode))

    def _read_line(self, session: Session) -> bytes:
        while True:
            end = session.buffer.find(b"\n")
            if end >= 0:
                raw = bytes(session.buffer[: end + 1])
                del session.buffer[: end + 1]
                self._check_command(session, raw)
                line = raw[:-1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(session.buffer) > MAX_LINE:
                self._flag(session, "unbounded upstream line", f"{bytes(session.buffer[:80])!r}...")
                raise _Closed
            self._recv_into_buffer(session)

    def _check_command(self, session: Session, raw: bytes) -> None:
        match = _COMMAND_LINE.fullmatch(raw)
        if match is None or match[1] not in UPSTREAM_VERBS or len(raw) > 512:
            self._flag(session, "bad command upstream", f"{raw[:200]!r} ({len(raw)} octets)")

    def _cmd_data(self, session: Session, line: bytes) -> bytes:
        reply = super()._cmd_data(session, line)
        session.fz_body = bytearray() if session.in_body else None  # type: ignore[attr-defined]
        return reply

    def _body_chunk(self, session: Session, faults: object) -> bytes:
        chunk = super()._body_chunk(session, faults)  # type: ignore[arg-type]
        body = getattr(session, "fz_body", None)
        if body is not None:
            body += chunk
        return chunk

    def _receive_body(self, session: Session, faults: object) -> bytes:
        raw = super()._receive_body(session, faults)  # type: ignore[arg-type]
        session.fz_body = None  # type: ignore[attr-defined]
        self._check_body(session, raw, complete=True)
        return raw

    def _complete(self, session: Session, raw: bytes, via: str, override: bytes | None = None) -> bytes:
        reply = super()._complete(session, raw, via, override)
        if via == "BDAT":
            self._check_body(session, raw, complete=True)
        queued = _QUEUED.search(reply)
        if queued:
            with self._guard:
                self.committed[int(queued[1])] = (getattr(session, "fz_marker", None), raw)
        return reply

    def _check_body(self, session: Session, raw: bytes, complete: bool) -> None:
        """A complete body must be clean; an aborted one may end in the CR
        of issue 9 item 2 (known) but hold nothing else."""
        bare = raw.replace(b"\r\n", b"")
        smuggled = _SMUGGLED_END.search(b"\r\n" + raw)
        if smuggled:
            at = smuggled.start()
            lone_cr = not complete and raw.endswith(b"\r\n.\r")
            self._flag(session, "smuggled end of data upstream", f"{raw[max(at - 40, 0) : at + 40]!r}",
                       known=KNOWN_ITEM_2 if lone_cr else None)
        elif complete and (b"\r" in bare or b"\n" in bare or b"\0" in bare):
            self._flag(session, "bare CR/LF/NUL in a complete body", f"{raw[:160]!r}")
        elif not complete and (b"\n" in bare or b"\0" in bare):
            self._flag(session, "bare LF or NUL reached the upstream in a body", f"...{raw[-80:]!r}")
        elif not complete and b"\r" in bare:
            self._flag(session, "bare CR reached the upstream in a body", f"...{raw[-80:]!r}", known=KNOWN_ITEM_2)

    def _serve(self, session: Session) -> None:
        super()._serve(session)
        body = getattr(session, "fz_body", None)
        if session.in_body and body is not None:  # aborted mid-body: check what it did receive
            self._check_body(session, bytes(body), complete=False)


# --- the client side ------------------------------------------------------------------
@dataclass
class Outcome:
    received: bytes
    clean_eof: bool
    problems: list[str]
    seconds: float = 0.0


def _exchange(sock: socket.socket, data: bytes, received: bytearray, deadline: float) -> bool:
    """Send `data` while reading whatever Willi answers; False once Willi closed."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("Willi did not take the input in time")
        readable, writable, _ = select.select([sock], [sock], [], remaining)
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            received += chunk
        if writable:
            try:
                view = view[sock.send(view[:65536]) :]
            except BlockingIOError:
                continue
    return True


def _drain(sock: socket.socket, received: bytearray, deadline: float) -> None:
    """Read until Willi closes; TimeoutError at the deadline."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("Willi did not close after the client's end of input")
        if select.select([sock], [], [], remaining)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return
            received += chunk


def _greeting(sock: socket.socket, received: bytearray, deadline: float) -> None:
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no greeting")
        if select.select([sock], [], [], remaining)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return
            received += chunk


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def play(fuzz: FuzzInput, host: str, port: int, timeout: float = 20.0) -> Outcome:
    """Run one input against Willi; the outcome's problems are client-side violations."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    sock = socket.create_connection((host, port), timeout=5.0, source_address=(fuzz.source, 0))
    sock.setblocking(False)
    clean, problems = False, []
    try:
        if fuzz.wait_greeting:
            _greeting(sock, received, deadline)
        for i, chunk in enumerate(fuzz.chunks):
            if fuzz.ending == "rst" and i == fuzz.reset_at:
                break
            if not _exchange(sock, chunk, received, deadline):
                clean = True
                break
            if fuzz.pauses[i]:
                time.sleep(fuzz.pauses[i])  # part of the input: lets a split survive TCP
        else:
            if fuzz.ending == "eof":
                sock.shutdown(socket.SHUT_WR)
                _drain(sock, received, deadline)
                clean = True
    except (ConnectionError, BlockingIOError):
        pass  # Willi reset us (it closed with our bytes unread): replies may be cut
    except TimeoutError as exc:
        problems.append(f"{exc} ({timeout:.0f} s)")
    finally:
        if fuzz.ending == "rst":
            _reset(sock)
        else:
            sock.close()
    problems += reply_problems(bytes(received), clean)
    return Outcome(bytes(received), clean, problems, time.monotonic() - deadline + timeout)


def reply_problems(data: bytes, clean_eof: bool) -> list[str]:
    """Everything wrong with the bytes Willi sent one client."""
    problems = []
    tls = data.find(b"\r\n220 2.0.0 ")  # after a STARTTLS is accepted the bytes are TLS records
    if tls >= 0:
        data = data[: data.find(b"\r\n", tls + 2) + 2]
        clean_eof = True
    lines = data.split(b"\r\n")
    tail = lines.pop()
    if tail and clean_eof:
        problems.append(f"reply not ended by CRLF: {tail[:80]!r}")
    continued: bytes | None = None
    for line in lines:
        if len(line) + 2 > 512:
            problems.append(f"reply line of {len(line) + 2} octets: {line[:60]!r}...")
        if not _REPLY_LINE.fullmatch(line):
            problems.append(f"not a reply line: {line[:80]!r}")
            continue
        if continued is not None and line[:3] != continued:
            problems.append(f"code changes inside a multi-line reply: {line[:80]!r}")
        continued = line[:3] if line[3:4] == b"-" else None
    if continued is not None and clean_eof:
        problems.append("multi-line reply cut off at EOF")
    return problems


# --- a campaign -----------------------------------------------------------------------
@dataclass
class Report:
    inputs: int = 0
    seconds: float = 0.0
    restarts: int = 0
    refused: int = 0
    violations: list[Violation] = field(default_factory=list)
    slowest: list[tuple[float, int]] = field(default_factory=list)  # (seconds, input), the 5 slowest

    def unknown(self) -> list[Violation]:
        return [v for v in self.violations if v.known is None]

    def known(self) -> list[Violation]:
        return [v for v in self.violations if v.known is not None]

    def summary(self) -> str:
        return (f"{self.inputs} inputs in {self.seconds:.1f} s, {len(self.violations)} violations "
                f"({len(self.known())} of known bugs), {self.restarts} restarts of Willi, "
                f"{self.refused} connections refused at the greeting; slowest inputs (s, index): {self.slowest}")


class Campaign:
    """Willi in front of two FuzzUpstreams; `run` plays inputs against it."""

    def __init__(self, tmp: Path, seed: int, parallel: int = 4, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.seed = seed
        self.parallel = parallel
        self.extra_env = dict(env or {})
        self.upstreams: list[FuzzUpstream] = []
        self.willi: WilliProcess | None = None
        self._stderr_seen = 0
        self._stdout_seen = 0

    def __enter__(self) -> "Campaign":
        self.upstreams = [FuzzUpstream().start(), FuzzUpstream(first_queue_id=10**9).start()]
        pki = make_pki(self.tmp / "pki")
        table = self.tmp / "upstreams.csv"
        a, b = self.upstreams
        table.write_text(f"pattern;server;tls_verify\na.test;{a.address};false\nb.test;{b.address};false\n")
        self.env = {
            "WILLI_LISTEN": f"127.0.0.1:{free_port()}", "WILLI_HOSTNAME": "willi.test",
            "WILLI_MAPPING_1": f"csv:{table}", "WILLI_TLS_CERT": str(pki.willi_cert),
            "WILLI_TLS_KEY": str(pki.willi_key), "WILLI_MAX_MESSAGE_SIZE": "256KiB", "WILLI_MAX_RECIPIENTS": "4",
            "WILLI_CLIENT_TIMEOUT": "4s", "WILLI_TLS_HANDSHAKE_TIMEOUT": "2s",
            "WILLI_UPSTREAM_CONNECT_TIMEOUT": "3s", "WILLI_UPSTREAM_COMMAND_TIMEOUT": "5s",
            "WILLI_UPSTREAM_DATA_TIMEOUT": "8s", "WILLI_SHUTDOWN_TIMEOUT": "2s", "WILLI_LOG_LEVEL": "warning",
            **self.extra_env,
        }
        self._start_willi()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.willi is not None:
            self.willi.stop()
        for upstream in self.upstreams:
            upstream.release.set()
            upstream.stop()

    def _start_willi(self) -> None:
        self.env["WILLI_LISTEN"] = f"127.0.0.1:{free_port()}"  # a fresh port: the old one may linger
        self.willi = WilliProcess(self.env, self.tmp)
        self.willi.start()
        self._stderr_seen = self._stdout_seen = 0

    def run(self, inputs: int, time_limit: float, first: int = 0,
            progress: Callable[[Report], None] | None = None) -> Report:
        """Play inputs first .. first+inputs-1 (fewer if time runs out);
        `progress` is called with the report so far after each batch."""
        report = Report()
        started = time.monotonic()
        by_marker: dict[str, FuzzInput] = {}
        seen_ids: dict[int, int] = {}
        batch_size = self.parallel * 4
        with ThreadPoolExecutor(self.parallel) as pool:
            for start in range(first, first + inputs, batch_size):
                if time.monotonic() - started > time_limit:
                    break
                batch = [generate(self.seed, i) for i in range(start, min(start + batch_size, first + inputs))]
                by_marker.update((f.marker, f) for f in batch)
                outcomes = list(pool.map(self._play, batch))
                report.inputs += len(batch)
                if self._check_process(batch, report):
                    continue  # what its clients saw is the death's consequence, not a finding of its own
                for fuzz, outcome in zip(batch, outcomes):
                    self._check_client(fuzz, outcome, seen_ids, report)
                if progress is not None:
                    report.seconds = time.monotonic() - started
                    progress(report)
        report.seconds = time.monotonic() - started
        self._check_upstreams(by_marker, seen_ids, report)
        return report

    def _play(self, fuzz: FuzzInput) -> Outcome | BaseException:
        assert self.willi is not None
        try:
            return play(fuzz, self.willi.host, self.willi.port)
        except OSError as exc:  # Willi is gone (it died): seen by _check_process
            return exc

    def _check_client(self, fuzz: FuzzInput, outcome: Outcome | BaseException, seen: dict[int, int],
                      report: Report) -> None:
        if isinstance(outcome, BaseException):
            return
        if outcome.received.startswith(b"421 4.7.0"):
            report.refused += 1
        report.slowest = sorted([*report.slowest, (round(outcome.seconds, 2), fuzz.index)], reverse=True)[:5]
        for problem in outcome.problems:
            report.violations.append(Violation("client side", f"{problem}; {fuzz.describe()}", [fuzz.index]))
        for queued in _QUEUED.finditer(outcome.received):
            qid = int(queued[1])
            if qid in seen:
                report.violations.append(Violation("queue id told twice", f"{qid}", [seen[qid], fuzz.index]))
            seen[qid] = fuzz.index

    def _new_output(self) -> tuple[str, str]:
        assert self.willi is not None
        out, err = self.willi.stdout(), self.willi.stderr()
        new = out[self._stdout_seen :], err[self._stderr_seen :]
        self._stdout_seen, self._stderr_seen = len(out), len(err)
        return new

    def _check_process(self, batch: list[FuzzInput], report: Report) -> bool:
        """Record a death or a traceback of Willi during the batch; after a
        death start a fresh Willi. True when Willi died."""
        assert self.willi is not None and self.willi.process is not None
        process = self.willi.process
        out, err = self._new_output()
        if "Traceback" in err:
            try:
                process.wait(5.0)  # an escaped exception: the process is on its way out
            except subprocess.TimeoutExpired:
                pass
        died = process.poll() is not None
        if died or "Traceback" in err or "Traceback" in out or "session_fault" in out:
            whole = self.willi.stderr() if died else err
            text = whole[-3000:] if "Traceback" in whole else out[-3000:]
            known = KNOWN_ITEM_1 if "_body_chunk" in text and "AttributeError" in text else None
            what = f"Willi died (exit {process.returncode})" if died else "Willi logged a traceback"
            suspects = [f.index for f in batch if f.ending != "eof"]
            report.violations.append(Violation(
                what, f"seed {self.seed}, inputs of one batch (suspects, not ending in EOF: {suspects}); "
                f"output tail:\n{text}", [f.index for f in batch], known))
        if died:
            report.restarts += 1
            self.willi.stop()
            self._start_willi()
        return died

    def _check_upstreams(self, by_marker: dict[str, FuzzInput], seen: dict[int, int], report: Report) -> None:
        for upstream in self.upstreams:
            for violation in upstream.violations:
                marker = getattr(violation, "marker", None)
                if marker in by_marker:
                    violation.inputs = [by_marker[marker].index]
                    violation.detail += f"; {by_marker[marker].describe()}"
                report.violations.append(violation)
        committed = {qid: item for upstream in self.upstreams for qid, item in upstream.committed.items()}
        for qid, index in seen.items():
            if qid not in committed:
                report.violations.append(Violation("250 queued as N that no upstream committed", f"{qid}", [index]))
                continue
            marker, raw = committed[qid]
            owner = by_marker.get(marker or "")
            if owner is not None and owner.index != index:
                report.violations.append(Violation("another client's 250", f"queue id {qid}", [owner.index, index]))
        for qid, (marker, raw) in committed.items():
            fuzz = by_marker.get(marker or "")
            if fuzz is None or b"BDAT" in fuzz.stream.upper():
                continue  # unattributed (the marker was mutated), or translated from BDAT
            if raw not in fuzz.stream:
                report.violations.append(Violation(
                    "committed body the client never sent", f"{raw[:120]!r}; {fuzz.describe()}", [fuzz.index]))


def inputs_of(seed: int, indexes: Iterator[int]) -> list[FuzzInput]:
    return [generate(seed, i) for i in indexes]

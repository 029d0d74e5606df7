"""The strict body scanner alone, on realistic mail: what each of its checks costs.

W3 measures the whole proxy per GB of payload; this takes Willi's own
`DataScanner` out of it and times it on a buffer shaped like real mail (a
header block with Received and DKIM lines, a quoted-printable text part, a
base64 attachment in 76-character lines, CRLF line endings), fed in chunks the
size the reactor receives (256 KiB) and the size a TLS record decrypts to
(16 KiB). Each C-level check the scanner makes is also timed on its own over
the same chunks, so the table says where a strict scan's time goes:

    python bench/scanner.py            # a table in Markdown
    python bench/scanner.py --json     # the numbers

The figures are seconds of one core per GB (10^9 bytes) of payload, best of
five passes (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import base64
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from willi.smtp.body import END, NOT_LINE_END, DataScanner  # noqa: E402

KEEP = "keep only CR, LF and NUL (bytes + translate)"

MAIL_BYTES = 10 * 1024 * 1024
CHUNKS = (256 * 1024, 16 * 1024)
PASSES = 5


def realistic_mail(size: int = MAIL_BYTES, seed: int = 12) -> bytes:
    """Headers, a quoted-printable text part and a base64 attachment, CRLF, dot-stuffed."""
    rng = random.Random(seed)
    headers = "".join(
        f"Received: from mx{i}.example.net (mx{i}.example.net [192.0.2.{i}]) by mail.example.org "
        f"with ESMTPS id {rng.getrandbits(64):016x}; Mon, 1 Dec 2026 10:0{i}:00 +0000\r\n" for i in range(6))
    headers += ("DKIM-Signature: v=1; a=rsa-sha256; d=example.net; s=sel; c=relaxed/relaxed;\r\n"
                + "".join(f"\tb={base64.b64encode(rng.randbytes(57)).decode()}\r\n" for _ in range(6))
                + "From: Alice <alice@example.net>\r\nTo: Bob <bob@example.org>\r\n"
                "Subject: the quarterly report\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
    words = "the report for this quarter shows figures that we should discuss before the meeting".split()
    text = "".join(" ".join(rng.choice(words) for _ in range(11)) + "=\r\n" for _ in range(400))
    body = ("--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
            "quoted-printable\r\n\r\n" + text + "\r\n--b1\r\nContent-Type: application/pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n")
    head = (headers + body).encode()
    encoded = base64.b64encode(rng.randbytes((size - len(head)) * 3 // 4 * 76 // 78))
    lines = b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    return head + lines + b"\r\n--b1--\r\n" + END


def _best(run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(PASSES):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(mail: bytes, chunk: int) -> dict[str, float]:
    """Seconds per GB: the scanner whole (strict and pass mode) and each check alone."""
    buf = bytearray(mail)
    spans = [(i, min(i + chunk, len(buf))) for i in range(0, len(buf), chunk)]

    def scanner(strict: bool) -> Callable[[], None]:
        def run() -> None:
            scan = DataScanner(len(buf) * 2, strict).scan
            for start, stop in spans:
                scan(buf, start, stop)
        return run

    def each(op: Callable[[int, int], object]) -> Callable[[], None]:
        def run() -> None:
            for start, stop in spans:
                op(start, stop)
        return run

    view = memoryview(buf)
    timings = {
        "strict scan (all checks)": scanner(True),
        "pass-mode scan (end of data and size only)": scanner(False),
        "find a dot (memchr: an end of data needs one)": each(lambda a, b: buf.find(b".", a, b)),
        "find end of data (CRLF.CRLF) in every chunk": each(lambda a, b: buf.find(END, a, b)),
        KEEP: each(lambda a, b: bytes(view[a:b]).translate(None, NOT_LINE_END)),
        "count CRLF": each(lambda a, b: buf.count(b"\r\n", a, b)),
        "count LF (before 0.2.1: a pass of its own)": each(lambda a, b: buf.count(b"\n", a, b)),
        "count CR (before 0.2.1: a pass of its own)": each(lambda a, b: buf.count(b"\r", a, b)),
    }
    scale = 1e9 / len(buf)
    return {name: _best(run) * scale for name, run in timings.items()}


def table(results: dict[int, dict[str, float]]) -> list[str]:
    sizes = list(results)
    lines = ["| what | " + " | ".join(f"s/GB, {size // 1024} KiB chunks" for size in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    for name in next(iter(results.values())):
        lines.append(f"| {name} | " + " | ".join(f"{results[size][name]:.3f}" for size in sizes) + " |")
    checks = (KEEP, "count CRLF")
    lines.append("| strict checks alone (strict − pass mode) | " + " | ".join(
        f"{results[s]['strict scan (all checks)'] - results[s]['pass-mode scan (end of data and size only)']:.3f}"
        for s in sizes) + " |")
    lines.append("| sum of the strict checks' C calls (CR, LF, NUL kept; CRLF counted) | " + " | ".join(
        f"{sum(results[s][c] for c in checks):.3f}" for s in sizes) + " |")
    return lines


def run_all() -> dict[int, dict[str, float]]:
    mail = realistic_mail()
    return {chunk: measure(mail, chunk) for chunk in CHUNKS}


if __name__ == "__main__":
    numbers = run_all()
    if "--json" in sys.argv:
        print(json.dumps({str(k): v for k, v in numbers.items()}, indent=1))
    else:
        print("\n".join(table(numbers)))

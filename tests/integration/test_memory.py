"""Memory stays bounded whatever the message size (SPEC §2 flow control, §7).

A fast client pushes a body of more than 200 MiB through Willi to an upstream
that reads slowly in small chunks behind a small receive buffer. Willi must
not soak up the difference: it stops reading the client while the upstream
lags, so its resident set grows by far less than the message. The message
still arrives whole and is answered with 250.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.net import LOOPBACK_V4, SmtpRawClient, free_port
from tests.support.upstream import FaultScript, ScriptableUpstream
from tests.support.willi_process import WilliProcess

MiB = 1024 * 1024
LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789_.\r\n"  # 77 octets
CHUNK = LINE * (MiB // len(LINE))  # just under 1 MiB of whole lines
CHUNKS = (200 * MiB) // len(CHUNK) + 2  # a little over 200 MiB in all
BODY_SIZE = len(CHUNK) * CHUNKS
GROWTH_LIMIT_KIB = 32 * 1024
UPSTREAM_RATE = 16 * MiB  # bytes per second the upstream reads: ~13 s for the body
UPSTREAM_RCVBUF = 64 * 1024
DEADLINE = 120.0  # seconds for the whole transfer; typical runs take ~15 s


class RssSampler:
    """Samples Willi's VmRSS (and the upstream's progress, for the failure
    message) every few milliseconds until stopped; bounded in time."""

    def __init__(self, willi: WilliProcess, upstream: ScriptableUpstream,
                 interval: float = 0.01, limit: float = DEADLINE) -> None:
        self.willi = willi
        self.upstream = upstream
        self.interval = interval
        self.limit = limit
        self.samples: list[int] = []
        self.trace: list[str] = []  # one line a second: time, upstream MiB, RSS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        deadline, next_trace = started + self.limit, started
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.samples.append(self.willi.rss_kib())
            except (OSError, AssertionError):
                return  # Willi is gone: the test will say why
            now = time.monotonic()
            if now >= next_trace:
                next_trace += 1.0
                upstream_mib = self.upstream.body_bytes_received / MiB
                self.trace.append(f"{now - started:5.1f}s upstream={upstream_mib:6.1f}MiB"
                                  f" rss={self.samples[-1]}KiB")
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    @property
    def peak(self) -> int:
        return max(self.samples)


@pytest.mark.slow
def test_a_200_mib_body_to_a_slow_upstream_leaves_willis_memory_flat(tmp_path: Path) -> None:
    faults = FaultScript(body_rate=UPSTREAM_RATE, body_chunk=32 * 1024)
    upstream = ScriptableUpstream(faults=faults, keep_bodies=False, rcvbuf=UPSTREAM_RCVBUF,
                                idle_timeout=DEADLINE)
    env = {
        "WILLI_LISTEN": f"{LOOPBACK_V4}:{free_port()}",
        "WILLI_HOSTNAME": "willi.test",
        "WILLI_MAPPING_1": "static:127.0.0.1:1",  # replaced below, once the port is known
        "WILLI_MAX_MESSAGE_SIZE": "1GiB",
        "WILLI_CLIENT_TIMEOUT": f"{DEADLINE:.0f}s",
        "WILLI_UPSTREAM_DATA_TIMEOUT": f"{DEADLINE:.0f}s",
        "WILLI_XCLIENT": "off",
    }
    with upstream:
        env["WILLI_MAPPING_1"] = f"static:{upstream.address}"
        with WilliProcess(env, tmp_path) as willi, \
                SmtpRawClient(willi.host, willi.port, timeout=DEADLINE) as client:
            assert client.read_reply().code == 220
            assert client.command("EHLO client.test").code == 250
            assert client.command(f"MAIL FROM:<big@client.test> SIZE={BODY_SIZE}").code == 250
            assert client.command("RCPT TO:<user@example.org>").code == 250
            assert client.command("DATA").code == 354
            before = willi.rss_kib()

            started = time.monotonic()
            with RssSampler(willi, upstream) as sampler:
                for _ in range(CHUNKS):  # sendall blocks while Willi holds back
                    client.send(CHUNK)
                    assert time.monotonic() - started < DEADLINE, "transfer too slow"
                client.send(b".\r\n")
                sent_in = time.monotonic() - started
                try:
                    final = client.read_reply(DEADLINE)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n" + "\n".join(sampler.trace)) from None
            elapsed = time.monotonic() - started
            assert client.command("QUIT").code == 221
            size_logged = willi.wait_for_log(lambda r: r.get("event") == "transaction").get("size")
            output = willi.output()

    assert final.code == 250, "\n".join([repr(final), *sampler.trace, output[-3000:]])
    assert final.text.startswith(b"2.0.0 Ok: queued as")
    [message] = upstream.messages
    assert message.accepted
    assert message.rcpt_tos == [b"user@example.org"]
    # every body octet, then the ".\r\n" that ended it, and nothing more
    assert upstream.body_bytes_received == BODY_SIZE + 3
    assert BODY_SIZE <= int(size_logged) <= BODY_SIZE + 3
    # the upstream really was the slow side and the client was held back to
    # its pace (give or take the kernel's socket buffers), not soaked up by Willi
    assert sent_in >= BODY_SIZE / UPSTREAM_RATE * 0.8, (sent_in, elapsed)
    growth = sampler.peak - before
    assert len(sampler.samples) > 100
    assert growth < GROWTH_LIMIT_KIB, (
        f"Willi's RSS grew by {growth} KiB (from {before} KiB) for a {BODY_SIZE // MiB} MiB body")

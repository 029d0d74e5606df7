"""BDAT (RFC 3030) in the relay machine: the chunk half of `Relay`'s
transitions (the table itself is in machine.py).

Towards an upstream that offers CHUNKING each chunk goes up as a BDAT of its
own, its reply relayed in order; LAST goes up only once the last chunk's
bytes are in and taken ("BDAT n", its 2xx, then "BDAT 0 LAST"), so an
upstream never sees LAST for a chunk the client may still abandon, nor after
it refused the last chunk. Towards one that does not, the
chunks become one DATA body on the fly (DotStuffer: dot-stuffed, a
chunk-final CR held back, ended with CRLF.CRLF), each chunk but the last
acknowledged by Willi. A refused chunk is still read and thrown away; after
one, every later chunk hears the same reply (RFC 3030 §4.2) and LAST ends
the transaction with it.
"""

from __future__ import annotations

import willi.relay.commands as c
import willi.relay.events as e
from willi import replies
from willi.records import UPSTREAM, WILLI
from willi.relay.states import KINDS, S, demote_421
from willi.smtp.bdat import ChunkScanner, DotStuffer
from willi.smtp.body import TOO_BIG


class Chunking:
    """The BDAT handlers of Relay (a mixin: the state lives on the Relay)."""

    __slots__ = ()

    def _on_bdat(self, event: e.ClientBdat) -> None:
        txn, link = self.txn, self.link
        assert txn is not None
        self._remaining, self._last, self._early = event.size, event.last, None
        self._this = event.size
        if self._chunk is None:  # the first chunk of the transaction
            txn.chunking = True
            self._failure = None
            self._lost = False
            self._chunk = ChunkScanner(self.max_size, self.strict_body)
            if link is None or link.closed or not self.upstream_open:
                self._lose(replies.UPSTREAM_LOST)
            elif "CHUNKING" not in link.capabilities:
                self._stuffer = DotStuffer()
                self.state = S.CHUNK_DATA_SENT
                self._out.append(c.Send((b"DATA\r\n",)))
                return
        self._read_chunk()

    def _read_chunk(self) -> None:
        """Take the chunk's bytes now (sending its BDAT line first to a CHUNKING upstream)."""
        if self._last and not self._remaining and self._failure is None:
            self._end_content()  # an empty LAST ends the content too
        if self._failure is None and self._stuffer is None:
            # A LAST chunk goes up without LAST; "BDAT 0 LAST" follows once the
            # upstream has taken its bytes, so an upstream never sees LAST for a
            # chunk the client may still abandon or that it refused itself.
            only_last = self._last and not self._remaining
            self._last_pending = False
            self._out.append(c.Send((b"BDAT %d%s\r\n" % (self._remaining, b" LAST" if only_last else b""),),
                                    c.DATA_TIMEOUT if only_last else c.COMMAND_TIMEOUT))
        self.state = S.CHUNK
        if self._remaining:
            self._out.append(c.READ_BODY)
        else:
            self._chunk_read()

    def _on_chunk_go_ahead(self, event: e.UpstreamReplied) -> None:
        reply = event.reply
        if reply.code != 354:  # the client hears it for this chunk, and for every later one
            self._stuffer = None  # no DATA body goes up
            if reply.code == 421:
                self._drop(abort=True)
                self._lose(demote_421(reply))
            else:
                # DATA refused, MAIL and RCPT still open upstream; the client's
                # BDAT transaction has failed (RFC 3030 §4.2): reset the upstream's.
                self._failure = reply.raw
                self._reset_upstream()
        self._read_chunk()

    def _on_chunk_go_ahead_failed(self, event: e.UpstreamFailed | e.UpstreamLost) -> None:
        self._drop(abort=True)
        self._lose(event.error.reply)
        self._read_chunk()

    def _on_chunk_bytes(self, event: e.BodyReceived) -> None:
        buf, start, stop = event.buf, event.start, event.stop
        upto = start + min(self._remaining, stop - start)
        self._remaining -= upto - start
        scanner = self._chunk
        assert scanner is not None
        if self._failure is None:
            scanner.scan(buf, start, upto)
            if self._last and not self._remaining:
                self._end_content()
            elif scanner.violation is not None:
                self._refuse_content()
        if self._failure is None:  # not one byte of a refused message goes up
            if self._stuffer is not None:
                self._out.append(c.SendBody(self._stuffer.feed(memoryview(buf)[start:upto])))
            elif upto > start:
                self._out.append(c.SendBody(memoryview(buf)[start:upto]))
        if upto < stop:
            self._out.append(c.FeedClient(memoryview(buf)[upto:stop]))  # the next command, pipelined
        if not self._remaining:
            self._chunk_read()

    def _end_content(self) -> None:
        """The LAST chunk's last byte is in: what the content ends with is
        judged now (a CR the chunk before ended in)."""
        assert self._chunk is not None
        self._chunk.finish()
        if self._chunk.violation is not None:
            self._refuse_content()

    def _refuse_content(self) -> None:
        assert self._chunk is not None and self._chunk.violation is not None
        violation = self._chunk.violation
        self._failure = replies.MESSAGE_TOO_BIG if violation is TOO_BIG else replies.BAD_BODY
        self._out.append(c.Notice("body_refused", "info", (("kind", KINDS[violation.reason]),)))
        self._drop(abort=True)  # never finish a refused message

    def _chunk_read(self) -> None:
        """The chunk's last byte is in."""
        assert self._chunk is not None
        if self._failure is not None:
            self._chunk_answer(self._failure, WILLI)
        elif self._stuffer is not None:
            if self._last:
                self._out.append(c.SendBody(self._stuffer.finish()))
                self._size = self._chunk.size
                self.state = S.FINAL
                self._out.append(c.Send((), c.DATA_TIMEOUT))
            else:
                self._chunk_answer(replies.chunk_received(self._chunk.size), WILLI, accepted=True)
        else:
            self.state = S.CHUNK_SENT
            # The chunk's reply, then "BDAT 0 LAST" and the message's.
            self._last_pending = self._last and self._this > 0
            early, self._early = self._early, None
            if isinstance(early, e.UpstreamReplied):
                self._on_chunk_reply(early)

    def _on_chunk_reply(self, event: e.UpstreamReplied) -> None:
        reply = event.reply
        if self._last_pending:  # the reply to the last chunk's bytes
            self._last_pending = False
            if reply.positive:
                self._out.append(c.Send((b"BDAT 0 LAST\r\n",), c.DATA_TIMEOUT))
                return
            # Refused: no more BDAT (RFC 3030 §4.2), so nothing can complete the
            # chunks it took before; it ends the message as any refused LAST does.
        raw = demote_421(reply)
        if reply.code == 421:
            self._drop(abort=True)
            self._lose(raw)
        elif not reply.positive:
            self._failure = raw  # and every later chunk hears the same (RFC 3030 §4.2)
            if self.link is not None:
                self._reset_upstream()  # its transaction's state is unknown now (RFC 3030 §4.2): reset it
        self._chunk_answer(raw, UPSTREAM, accepted=reply.positive)

    def _on_chunk_failed(self, event: e.UpstreamFailed | e.UpstreamLost) -> None:
        self._drop(abort=True)
        self._upstream_failed_notice(str(event.error))
        self._lose(event.error.reply)
        self._chunk_answer(event.error.reply, WILLI)

    def _on_early(self, event: e.Event) -> None:
        """The upstream answered before the chunk was all sent: keep it for then."""
        if isinstance(event, (e.UpstreamFailed, e.UpstreamLost)):
            self._drop(abort=True)
            self._lose(event.error.reply)
        else:
            self._early = event

    def _on_chunk_stalled(self, event: e.TimerFired) -> None:
        self._upstream_failed_notice("upstream stopped reading the body")
        self._drop(abort=True)
        if self._failure is None:
            self._lose(replies.UPSTREAM_TIMEOUT)

    def _lose(self, reply: bytes) -> None:
        """The upstream is gone from under the BDAT transaction: this chunk and
        any later one hear `reply`, and once this chunk is answered the
        transaction is over (SPEC §2, as when DATA finds the upstream gone)."""
        self._failure = reply
        self._lost = True

    def _chunk_answer(self, reply: bytes, src: str, accepted: bool = False) -> None:
        """The reply to this chunk; LAST's is the message's final reply."""
        if self._last:
            self._size = self._chunk.size if self._chunk is not None else 0
            self._finish(reply, src, self._size)
            return
        if self._lost:
            self._end_lost(reply, src)  # later chunks are the client protocol's to refuse
            return
        self.state = S.IDLE
        self._out.append(c.Answer(reply, accepted))

"""The log lines of real transactions through Willi (SPEC §6, issue 11 item 1).

Client says, Willi relays, the upstream answers; then the test reads the
`recipient`, `transaction`, `connect` and `disconnect` lines of that
conversation field by field, as an operator's grep would. One Willi serves
the module: `a.test` and `b.test` route to two upstreams (so a transaction
for both is split), `reject.test` to an upstream that refuses every message
after the dot, `down.test` to a port where nothing listens.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from willi import replies
from tests.support.net import SmtpRawClient, free_port, wait_until
from tests.support.willi_process import WilliProcess, open_session

BODY = b"Subject: log\r\n\r\nhello\r\n"
SPAM = b"554 5.7.1 Spam refused\r\n"


class Routes:
    def __init__(self, launch) -> None:
        self.a = launch.upstream()
        self.b = launch.upstream()
        self.reject = launch.upstream(replies={".": SPAM})
        self.down = free_port()
        table = launch.tmp_path / "routes.csv"
        table.write_text("pattern;server\n" + "".join(f"{domain};{server}\n" for domain, server in (
            ("a.test", self.a.address), ("b.test", self.b.address), ("reject.test", self.reject.address),
            ("down.test", f"127.0.0.1:{self.down}"))))
        self.willi: WilliProcess = launch.willi({"WILLI_MAPPING_1": f"csv:{table}"})


@pytest.fixture(scope="module")
def routes(module_launch) -> Iterator[Routes]:
    yield Routes(module_launch)


def lines_of(willi: WilliProcess, sender: str) -> tuple[dict[str, str], list[dict[str, str]], dict[str, str]]:
    """The transaction line of `sender`'s transaction, its recipient lines, and its session's disconnect."""
    def find():
        records = willi.log_lines()
        txn = next((r for r in records if r.get("event") == "transaction" and r.get("sender") == sender), None)
        if txn is None:
            return None
        ended = next((r for r in records if r.get("event") == "disconnect" and r["session"] == txn["session"]), None)
        return ended and (txn, [r for r in records if r.get("event") == "recipient" and r["txn"] == txn["txn"]],
                          ended)

    return wait_until(find, 5.0, 0.02, f"the lines of {sender}'s transaction")


def deliver(client: SmtpRawClient, sender: str, rcpts: list[str], body: bytes = BODY) -> tuple[list[int], bytes]:
    assert client.command(f"MAIL FROM:<{sender}>").code == 250
    codes = [client.command(f"RCPT TO:<{rcpt}>").code for rcpt in rcpts]
    data = client.command("DATA")
    if data.code != 354:
        return codes, data.raw
    client.send(body + b".\r\n")
    return codes, client.read_reply().raw


def test_an_accepted_message_has_a_sent_line_per_recipient_and_one_transaction_line(routes: Routes) -> None:
    with open_session(routes.willi) as client:
        codes, final = deliver(client, "accepted@origin.test", ["one@a.test", "two@a.test"])
        assert codes == [250, 250] and final.startswith(b"250")
        assert client.command("QUIT").code == 221
    txn, rcpts, ended = lines_of(routes.willi, "accepted@origin.test")
    assert (txn["status"], txn["code"], txn["src"]) == ("sent", "250", "upstream")
    assert txn["text"] == final[4:-2].decode()
    assert (txn["rcpts"], txn["nrcpt"], txn["upstream"]) == ("one@a.test,two@a.test", "2", f"smtp://{routes.a.address}")
    assert txn["txn"].startswith(txn["session"] + ".") and txn["client"] == "127.0.0.1"
    assert (txn["helo"], int(txn["size"])) == ("client.test", len(BODY))
    assert "aborted" not in txn and "refused" not in txn
    assert [(r["to"], r["status"], r["code"], r["src"], r["upstream"]) for r in rcpts] == [
        ("one@a.test", "sent", "250", "upstream", f"smtp://{routes.a.address}"),
        ("two@a.test", "sent", "250", "upstream", f"smtp://{routes.a.address}")]
    assert all(r["session"] == txn["session"] and r["text"] == txn["text"] for r in rcpts)
    assert (ended["transactions"], ended["client"]) == ("1", "127.0.0.1")
    connect = next(r for r in routes.willi.log_lines() if r.get("event") == "connect"
                   and r["session"] == txn["session"])
    assert connect["port"] == ended["port"] and int(connect["port"]) > 0


def test_a_recipient_refused_at_rcpt_is_counted_on_the_transaction_line(routes: Routes) -> None:
    with open_session(routes.willi) as client:
        codes, final = deliver(client, "refused@origin.test", ["nobody@unrouted.test", "one@a.test"])
        assert codes == [554, 250] and final.startswith(b"250")
        assert client.command("QUIT").code == 221
    txn, rcpts, _ended = lines_of(routes.willi, "refused@origin.test")
    assert (txn["status"], txn["code"], txn["refused"], txn["rcpts"]) == ("sent", "250", "1", "one@a.test")
    sent = [r for r in rcpts if r["to"] == "one@a.test"]
    assert [(r["status"], r["code"]) for r in sent] == [("sent", "250")]


def test_a_split_transaction_refuses_the_other_upstreams_recipient_with_452(routes: Routes) -> None:
    with open_session(routes.willi) as client:
        codes, final = deliver(client, "split@origin.test", ["one@a.test", "one@b.test"])
        assert codes == [250, 452] and final.startswith(b"250")
        assert client.command("QUIT").code == 221
    txn, rcpts, _ended = lines_of(routes.willi, "split@origin.test")
    assert (txn["status"], txn["refused"], txn["rcpts"], txn["upstream"]) == (
        "sent", "1", "one@a.test", f"smtp://{routes.a.address}")
    assert [r["to"] for r in rcpts if r["status"] == "sent"] == ["one@a.test"]


def test_an_upstream_that_is_down_defers_with_willis_own_451(routes: Routes) -> None:
    with open_session(routes.willi) as client:
        codes, final = deliver(client, "down@origin.test", ["one@down.test"])
        assert codes == [451] and final == replies.NO_VALID_RECIPIENTS
        assert client.command("QUIT").code == 221
    txn, _rcpts, _ended = lines_of(routes.willi, "down@origin.test")
    assert (txn["status"], txn["code"], txn["src"], txn["refused"], txn["nrcpt"]) == (
        "deferred", "451", "willi", "1", "0")
    assert txn["text"] == replies.UPSTREAM_UNAVAILABLE[4:-2].decode()
    assert "rcpts" not in txn and "size" not in txn


def test_a_client_that_quits_after_rcpt_shows_no_reply_code_and_why(routes: Routes) -> None:
    with open_session(routes.willi) as client:
        assert client.command("MAIL FROM:<quitter@origin.test>").code == 250
        assert client.command("RCPT TO:<one@a.test>").code == 250
        assert client.command("QUIT").code == 221
    txn, rcpts, ended = lines_of(routes.willi, "quitter@origin.test")
    assert (txn["status"], txn["aborted"], txn["src"]) == ("deferred", "client quit", "willi")
    assert "code" not in txn and "text" not in txn and "size" not in txn  # never the RCPT's 250
    assert [(r["to"], r["status"], r.get("code"), r["aborted"]) for r in rcpts] == [
        ("one@a.test", "deferred", None, "client quit")]
    assert ended["transactions"] == "1"


def test_an_upstream_reject_after_the_dot_bounces_every_recipient(routes: Routes) -> None:
    with open_session(routes.willi) as client:
        codes, final = deliver(client, "spammer@origin.test", ["one@reject.test"])
        assert codes == [250] and final == SPAM
        assert client.command("QUIT").code == 221
    txn, rcpts, _ended = lines_of(routes.willi, "spammer@origin.test")
    assert (txn["status"], txn["code"], txn["text"], txn["src"]) == ("bounced", "554", "5.7.1 Spam refused",
                                                                      "upstream")
    assert [(r["to"], r["status"], r["code"], r["src"]) for r in rcpts] == [
        ("one@reject.test", "bounced", "554", "upstream")]

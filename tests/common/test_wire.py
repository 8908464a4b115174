"""The raw protocol parser and the ordered-consumer rules, without a server: bytes in, callbacks out."""

from __future__ import annotations

import asyncio

import pytest

from aios.common.consumer import ACCEPT, DUPLICATE, GAP, cursor_step, parse_ack_reply
from aios.common.wire import RawNatsConnection


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.sent += data

    def is_closing(self) -> bool:
        return False


STREAM = (
    b"INFO {\"server_id\":\"x\",\"headers\":true}\r\n"
    b"MSG a.b 1 5\r\nhello\r\n"
    b"PING\r\n"
    b"HMSG evt.job.1 1 $JS.ACK.S.C.1.7.1.17000.3 28 33\r\nNATS/1.0\r\nNats-Msg-Id: k\r\n\r\n{\"a\"}\r\n"
    b"MSG a.b 2 reply.to 0\r\n\r\n"
    b"HMSG x 1 17 17\r\nNATS/1.0 100 \r\n\r\n\r\n"
)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, len(STREAM)])
async def test_parser_handles_any_chunking(chunk: int) -> None:
    conn = RawNatsConnection()
    conn.connection_made(_Transport())
    got: list[tuple] = []
    conn._subs[b"1"] = lambda s, r, h, p: got.append((s, r, h, p))
    conn._subs[b"2"] = lambda s, r, h, p: got.append(("sid2", s, r, p))
    for i in range(0, len(STREAM), chunk):
        conn.data_received(STREAM[i:i + chunk])
    assert got == [
        (b"a.b", None, None, b"hello"),
        (b"evt.job.1", b"$JS.ACK.S.C.1.7.1.17000.3", b"NATS/1.0\r\nNats-Msg-Id: k\r\n\r\n", b'{"a"}'),
        ("sid2", b"a.b", b"reply.to", b""),
        (b"x", None, b"NATS/1.0 100 \r\n\r\n", b""),
    ]
    assert conn.server_info["server_id"] == "x"
    conn._flush()
    assert conn.transport.sent == b"PONG\r\n"  # type: ignore[union-attr]


def test_large_message_across_many_chunks() -> None:
    async def run() -> None:
        conn = RawNatsConnection()
        conn.connection_made(_Transport())
        got: list[bytes] = []
        conn._subs[b"9"] = lambda s, r, h, p: got.append(p)
        body = bytes(range(256)) * 4000
        data = b"MSG big 9 %d\r\n%s\r\nMSG small 9 2\r\nok\r\n" % (len(body), body)
        for i in range(0, len(data), 4096):
            conn.data_received(data[i:i + 4096])
        assert got == [body, b"ok"]

    asyncio.run(run())


def test_ack_reply_layouts() -> None:
    assert parse_ack_reply(b"$JS.ACK.AIOS_EVENTS.rd.1.42.7.1700000000.5") == (42, 7, 5)
    assert parse_ack_reply(b"$JS.ACK.hub.ACCHASH.AIOS_EVENTS.rd.1.42.7.1700000000.5.tok") == (42, 7, 5)


def test_cursor_rules() -> None:
    assert cursor_step(last_seq=10, expected_dseq=3, sseq=11, dseq=3) == ACCEPT
    assert cursor_step(last_seq=10, expected_dseq=3, sseq=9, dseq=3) == DUPLICATE
    assert cursor_step(last_seq=10, expected_dseq=3, sseq=12, dseq=4) == GAP

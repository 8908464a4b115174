"""The raw protocol parser and the ordered-consumer rules, without a server: bytes in, callbacks out."""

from __future__ import annotations

import asyncio
from typing import Any

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


def _read(conn: RawNatsConnection, data: bytes, chunk: int) -> None:
    """What asyncio does with a buffered protocol: ask for a buffer, receive into it, say how much."""
    pos = 0
    while pos < len(data):
        buf = conn.get_buffer(-1)
        n = min(len(buf), chunk, len(data) - pos)
        buf[:n] = data[pos:pos + n]
        conn.buffer_updated(n)
        pos += n


@pytest.mark.parametrize("chunk", [3, 4096, 1 << 20])
async def test_large_messages_land_in_their_own_buffer_for_subscribers_that_take_buffers(chunk: int) -> None:
    conn = RawNatsConnection()
    conn.connection_made(_Transport())
    got: list[tuple] = []
    conn.subscribe("bulk.>", lambda s, r, h, p: got.append((s, r, h, type(p), bytes(p))), takes_buffers=True)
    conn.subscribe("events.>", lambda s, r, h, p: got.append((s, r, h, type(p), bytes(p))))
    big = bytes(range(256)) * 1000  # 256,000 bytes: above LARGE
    hdr = b"NATS/1.0\r\nK: v\r\n\r\n"
    data = (b"MSG bulk.0 1 %d\r\n%s\r\nPING\r\n" % (len(big), big)
            + b"HMSG bulk.1 1 r.1 %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(big), hdr, big)
            + b"MSG events.x 2 %d\r\n%s\r\nMSG bulk.2 1 2\r\nok\r\n" % (len(big), big))
    _read(conn, data, chunk)
    # a message that did not arrive in one read goes to its own buffer (a memoryview), one that did is bytes
    split = memoryview if chunk < len(big) else bytes
    assert got == [
        (b"bulk.0", None, None, split, big),
        (b"bulk.1", b"r.1", hdr, memoryview, big),
        (b"events.x", None, None, bytes, big),  # a subscriber that did not ask for buffers still gets bytes
        (b"bulk.2", None, None, bytes, b"ok"),  # small messages are bytes for everyone
    ]
    conn._flush()
    assert b"PONG\r\n" in conn.transport.sent  # type: ignore[union-attr]


@pytest.mark.parametrize("chunk", [5, 70_000, 1 << 20])
async def test_a_landing_zone_receives_the_payload_in_place(chunk: int) -> None:
    conn = RawNatsConnection()
    conn.connection_made(_Transport())
    target = bytearray(300_000)
    zones = {b"bulk.a": memoryview(target)[100_000:200_000]}
    got: list[tuple] = []
    conn.subscribe("bulk.>", lambda s, r, h, p: got.append((s, p)), land=lambda s, size: zones.get(s))
    a, b = bytes([7]) * 100_000, bytes([9]) * 100_000
    _read(conn, b"MSG bulk.a 1 100000\r\n%s\r\nMSG bulk.b 1 100000\r\n%s\r\n" % (a, b), chunk)
    assert [s for s, _ in got] == [b"bulk.a", b"bulk.b"]
    if chunk < 100_000:  # split across reads: written where the caller said, and handed over as that very view
        assert got[0][1] is zones[b"bulk.a"] and target[100_000:200_000] == a
    assert bytes(got[0][1]) == a and bytes(got[1][1]) == b
    assert target[:100_000] == bytes(100_000) and target[200_000:] == bytes(100_000)  # nothing around it touched


async def test_a_large_publish_is_sent_as_it_was_when_published(nats_server: Any) -> None:
    """The payload goes to the socket without a copy where it can: changing the buffer right after publishing
    must not change what the subscriber receives, and order with small messages is kept."""
    pub = await RawNatsConnection.connect([nats_server.url])
    assert pub._write_through  # a plain TCP connection: large payloads are not copied into the message
    sub = await RawNatsConnection.connect([nats_server.url])
    got: list[bytes] = []
    done = asyncio.Event()

    def on_message(_s: bytes, _r: bytes | None, _h: bytes | None, p: bytes) -> None:
        got.append(bytes(p))
        if len(got) == 40:
            done.set()
    sub.subscribe("wt.>", on_message, takes_buffers=True)
    await sub.ping()
    buf = bytearray(900_000)
    sent = []
    for i in range(20):
        buf[:] = bytes([i]) * len(buf)
        pub.publish("wt.big", memoryview(buf))
        sent.append(bytes(buf))
        buf[:] = b"x" * len(buf)  # changed at once: the message must not see it
        pub.publish("wt.small", str(i).encode())
        sent.append(str(i).encode())
        if i % 5 == 0:
            await pub.ping()  # interleave server PINGs/PONGs with the traffic
    await asyncio.wait_for(done.wait(), 30)
    assert got == sent
    floats = memoryview(bytearray(8 * 20_000)).cast("d")  # items of 8 bytes: the header must count bytes
    done.clear()
    got.clear()
    sub.subscribe("wt2", lambda _s, _r, _h, p: (got.append(bytes(p)), done.set()))
    await sub.ping()
    pub.publish("wt2", floats)
    await asyncio.wait_for(done.wait(), 10)
    assert got == [bytes(floats)]
    pub.close()
    sub.close()


def test_ack_reply_layouts() -> None:
    assert parse_ack_reply(b"$JS.ACK.AIOS_EVENTS.rd.1.42.7.1700000000.5") == (42, 7, 5)
    assert parse_ack_reply(b"$JS.ACK.hub.ACCHASH.AIOS_EVENTS.rd.1.42.7.1700000000.5.tok") == (42, 7, 5)


def test_cursor_rules() -> None:
    assert cursor_step(last_seq=10, expected_dseq=3, sseq=11, dseq=3) == ACCEPT
    assert cursor_step(last_seq=10, expected_dseq=3, sseq=9, dseq=3) == DUPLICATE
    assert cursor_step(last_seq=10, expected_dseq=3, sseq=12, dseq=4) == GAP

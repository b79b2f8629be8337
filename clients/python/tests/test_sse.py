"""The event-stream reader: the format's line ends wherever the chunks split,
comments, multi-line data, and a bound on what one event may hold."""

from __future__ import annotations

from typing import List

import pytest

from corral_client._sse import EventTooLarge, ServerSentEvent, SSEDecoder

STREAM = (
    b": keep-alive\n\n"
    b'id: 1\nevent: state\ndata: {"seq":1}\n\n'
    b'id: 2\r\nevent: progress\r\ndata:{"seq":2,\r\ndata:  "x":1}\r\n\r\n'
    b"data: lone\rdata: cr\r\r"
    b"event: ignored\n\n"
    b"retry: 3000\ndata\n\n"
    b"data: \xc3\xa9t\xc3\xa9\n\n"
    b"data: incomplete at the end"
)
EXPECTED = [
    ServerSentEvent('{"seq":1}', "state", "1"),
    ServerSentEvent('{"seq":2,\n "x":1}', "progress", "2"),
    ServerSentEvent("lone\ncr", "message", "2"),
    ServerSentEvent("", "message", "2", 3000),
    ServerSentEvent("été", "message", "2", 3000),
]


def feed_all(chunks: List[bytes], limit: int = 1 << 20) -> List[ServerSentEvent]:
    decoder = SSEDecoder(limit)
    out: List[ServerSentEvent] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def test_one_chunk() -> None:
    assert feed_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_any_split(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(chunks) == EXPECTED


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    assert feed_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [ServerSentEvent("a\nb")]


def test_an_endless_line_is_refused_at_the_limit() -> None:
    decoder = SSEDecoder(1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 200)


def test_many_data_lines_are_refused_at_the_limit() -> None:
    decoder = SSEDecoder(1000)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 99 + b"\n" * 1 + (b"data: " + b"y" * 99 + b"\n") * 10)

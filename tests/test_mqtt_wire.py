"""The MQTT v5 codec of the receiver, byte by byte (the broker tests are in test_mqtt.py)."""

from __future__ import annotations

import itertools
import struct

import pytest

from civica.ingest import mqtt_wire as wire


def publish(topic: bytes, payload: bytes, mid: int = 0, qos: int = 1, props: bytes = b"") -> bytes:
    body = struct.pack(">H", len(topic)) + topic
    if qos:
        body += struct.pack(">H", mid)
    body += wire._varint(len(props)) + props + payload
    return bytes([wire.PUBLISH << 4 | qos << 1]) + wire._varint(len(body)) + body


def decode(stream: bytes, cuts: list[int]) -> tuple[list[tuple[str, bytes, int, int]], list[int]]:
    reader = wire.Reader()
    got: list[tuple[str, bytes, int, int]] = []
    kinds: list[int] = []
    bounds = [0, *cuts, len(stream)]
    for a, b in itertools.pairwise(bounds):
        for kind, _body in reader.feed(stream[a:b], lambda t, p, m, q: got.append((t, p, m, q))):
            kinds.append(kind)
    return got, kinds


def test_publishes_come_out_whole_wherever_the_stream_is_cut() -> None:
    big = b"x" * 300  # a remaining length of two bytes
    stream = (
        publish(b"civica/t/W/a", b'{"p":1}', mid=7)
        + bytes([wire.PINGRESP << 4, 0])
        + publish(b"civica/t/W/b", big, mid=65535, props=bytes([0x01, 0x01]))  # a property
        + publish(b"civica/t/W/c", b"q0", qos=0)
    )
    expected = [
        ("civica/t/W/a", b'{"p":1}', 7, 1),
        ("civica/t/W/b", big, 65535, 1),
        ("civica/t/W/c", b"q0", 0, 0),
    ]
    for cut in range(1, len(stream)):
        got, kinds = decode(stream, [cut])
        assert got == expected, cut
        assert kinds == [wire.PINGRESP]
    got, _ = decode(stream, list(range(1, len(stream))))  # one byte at a time
    assert got == expected


def test_a_topic_that_is_not_utf8_is_marked_for_refusal() -> None:
    got, _ = decode(publish(b"civica/\xff/W/a", b"{}", mid=1), [])
    assert got == [("\ufffd", b"{}", 1, 1)]


def test_a_length_over_four_bytes_is_a_protocol_error() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.Reader().feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), lambda *a: None)


def test_outgoing_packets() -> None:
    assert wire.pubacks([1, 258]) == bytes([0x40, 2, 0, 1, 0x40, 2, 1, 2])
    connect = wire.connect_packet(
        "cid",
        60,
        clean_start=False,
        session_expiry=3600,
        receive_maximum=65535,
        username="u",
        password="p@ss",
    )
    assert connect[0] == 0x10
    body = connect[2:]  # remaining length < 128: one byte
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0x80 | 0x40  # user name and password, no clean start
    assert body[8:10] == struct.pack(">H", 60)
    assert body[10] == 8  # properties: receive maximum (3 bytes) + session expiry (5 bytes)
    assert body[11:19] == bytes([0x21, 0xFF, 0xFF, 0x11]) + struct.pack(">I", 3600)
    assert body[19:] == b"\x00\x03cid\x00\x01u\x00\x04p@ss"
    sub = wire.subscribe_packet(1, "$share/g/civica/+/+/+")
    assert sub[0] == 0x82 and sub[-1] == 1  # flags 0b0010, QoS 1 wanted
    assert wire.suback_reasons(bytes([0, 1, 0, 1])) == (1, [1])
    assert wire.reason_of(wire.CONNACK, bytes([0, 0x86, 0])) == 0x86
    assert "bad user name or password" in wire.reason_text(0x86)

"""The receiving half of an MQTT v5 client, on one socket: what the MQTT receiver process runs.

Only what a subscriber that acknowledges in bulk needs (MQTT 5.0, OASIS standard 2019):
CONNECT/CONNACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, incoming PUBLISH at QoS 0 and 1,
PUBACK, PINGREQ/PINGRESP and DISCONNECT. It replaces paho-mqtt in the receiver because paho
spent about 70 us of Python per message there (a ``Properties`` object per PUBLISH, one queued
packet per PUBACK), which capped MQTT ingest at one core. Here a PUBLISH is sliced out of the
receive buffer and PUBACKs go out as one write per batch.

No reconnection: when the connection is lost the receiver process ends and the consumer
starts another (``MqttIngest._respawn``), which is also what a crash does.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
PROTOCOL_VERSION = 5
_SESSION_EXPIRY = 0x11  # property identifiers (MQTT 5.0 section 2.2.2.2)
_RECEIVE_MAXIMUM = 0x21
PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])
# Every PUBACK there can be (a packet id is 16 bits): acknowledging a batch is then one join.
_PUBACKS = [bytes([PUBACK << 4, 2]) + struct.pack(">H", mid) for mid in range(65536)]
_REASONS = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8F: "topic filter invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x9E: "shared subscriptions not supported",
}


class ProtocolError(Exception):
    """The broker sent something this client cannot take."""


def reason_text(code: int) -> str:
    return f"{_REASONS.get(code, 'reason')} (0x{code:02X})"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    keepalive: int,
    *,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = bytes([_RECEIVE_MAXIMUM]) + struct.pack(">H", receive_maximum)
    if session_expiry:
        props += bytes([_SESSION_EXPIRY]) + struct.pack(">I", session_expiry)
    body = _string("MQTT") + bytes([PROTOCOL_VERSION, flags]) + struct.pack(">H", keepalive)
    body += _varint(len(props)) + props + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        raw = password.encode()
        body += struct.pack(">H", len(raw)) + raw
    return _packet(CONNECT, 0, body)


def subscribe_packet(mid: int, topic_filter: str, qos: int = 1) -> bytes:
    body = struct.pack(">H", mid) + b"\x00" + _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def unsubscribe_packet(mid: int, topic_filter: str) -> bytes:
    return _packet(UNSUBSCRIBE, 0x02, struct.pack(">H", mid) + b"\x00" + _string(topic_filter))


def pubacks(mids: list[int]) -> bytes:
    return b"".join([_PUBACKS[mid] for mid in mids])


class Reader:
    """Splits a byte stream into MQTT packets; PUBLISH packets are decoded on the spot."""

    def __init__(self) -> None:
        self._buffer = b""
        self._topics: dict[bytes, str] = {}  # sensors repeat their topics: decode each once

    def feed(
        self, data: bytes, on_publish: Callable[[str, bytes, int, int], None]
    ) -> list[tuple[int, bytes]]:
        """Take received bytes; call ``on_publish(topic, payload, mid, qos)`` for each
        PUBLISH and return the other complete packets as (type, body)."""
        buf = self._buffer + data if self._buffer else data
        others: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        topics = self._topics
        while pos + 1 < end:
            first = buf[pos]
            try:
                length, i = _read_varint(buf, pos + 1)  # the remaining length
            except IndexError:  # its bytes are not all here yet
                break
            stop = i + length
            if stop > end:
                break
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 3
                size = buf[i] << 8 | buf[i + 1]
                raw = buf[i + 2 : i + 2 + size]
                topic = topics.get(raw)
                if topic is None:
                    try:
                        topic = raw.decode()
                    except UnicodeDecodeError:
                        topic = "\ufffd"  # refused by the consumer: no valid topic is this
                    if len(topics) < 100_000:
                        topics[raw] = topic
                p = i + 2 + size
                mid = 0
                if qos:
                    mid = buf[p] << 8 | buf[p + 1]
                    p += 2
                # Properties: skipped (topic aliases are off: this client never allows them).
                plen, p = _read_varint(buf, p)
                on_publish(topic, buf[p + plen : stop], mid, qos)
            else:
                others.append((kind, buf[i:stop]))
            pos = stop
        self._buffer = buf[pos:] if pos < end else b""
        return others


def open_socket(
    host: str, port: int, tls: bool, timeout: float, cafile: str | None = None
) -> socket.socket:
    """A TCP connection to the broker; with ``tls``, verified against ``cafile`` (or the
    system's certificate authorities) and the broker's host name."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        try:
            context = ssl.create_default_context(cafile=cafile)
            return context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
    return sock


def reason_of(kind: int, body: bytes) -> int:
    """The reason code of a CONNACK (after its flags byte) or of a DISCONNECT (0 if none)."""
    if kind == CONNACK:
        if len(body) < 2:
            raise ProtocolError("a CONNACK without a reason code")
        return body[1]
    return body[0] if body else 0


def suback_reasons(body: bytes) -> tuple[int, list[int]]:
    """(packet id, reason codes) of a SUBACK or UNSUBACK."""
    mid = body[0] << 8 | body[1]
    plen, p = _read_varint(body, 2)
    return mid, list(body[p + plen :])


def _read_varint(buf: bytes, p: int) -> tuple[int, int]:
    """A variable byte integer at ``buf[p:]`` (complete): (its value, the offset after it)."""
    value = 0
    shift = 0
    while True:
        byte = buf[p]
        value |= (byte & 0x7F) << shift
        p += 1
        if byte < 0x80:
            return value, p
        shift += 7
        if shift > 21:
            raise ProtocolError("a variable byte integer longer than four bytes")

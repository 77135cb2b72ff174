"""The frame format on a worker process's result socket: a 4-byte big-endian length, then
that many bytes (a msgpack message)."""

from __future__ import annotations

import socket
import struct

import msgspec

FRAME = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()


def send_frame(sock: socket.socket, obj: object) -> None:
    data = _enc.encode(obj)
    sock.sendall(FRAME.pack(len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            raise EOFError("peer closed")
        buf += part
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = FRAME.unpack(recv_exact(sock, FRAME.size))
    return recv_exact(sock, n)

"""The one frame format between the engine and its worker processes, on the result socket
(SOCK_STREAM) in both directions: a 4-byte big-endian length, then that many bytes (one
msgpack-encoded message; capture/messages.py and restore/messages.py say which)."""

from __future__ import annotations

import socket
import struct

FRAME = struct.Struct(">I")
_BIG = 1 << 20  # frames from this size on are sent and received without extra copies
# What sending to or receiving from a worker process that died raises: EOF on its result
# socket, or EPIPE/ECONNRESET (a request socket whose peer died with requests unread).
PEER_GONE = (EOFError, ConnectionError)


def pack(data: bytes) -> bytes:
    return FRAME.pack(len(data)) + data


def send(sock: socket.socket, data: bytes) -> None:
    if len(data) < _BIG:
        sock.sendall(pack(data))
    else:  # a restore worker's share: not copied once more to prefix its length
        sock.sendall(FRAME.pack(len(data)))
        sock.sendall(data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    if n >= _BIG:
        return _recv_big(sock, n)
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            raise EOFError("peer closed")
        buf += part
    return bytes(buf)


def _recv_big(sock: socket.socket, n: int) -> bytes:
    """Into one buffer of the final size (no second copy: a share of a million-entry
    restore is tens of MiB). A bytearray, which every decoder reads as it reads bytes."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if not k:
            raise EOFError("peer closed")
        got += k
    view.release()
    return buf  # type: ignore[return-value]  # read-only use, as bytes


def recv(sock: socket.socket) -> bytes:
    """One whole frame's payload (blocks until it arrived)."""
    (n,) = FRAME.unpack(recv_exact(sock, FRAME.size))
    return recv_exact(sock, n)


class FrameBuffer:
    """The receiving end of a socket read without blocking: bytes in, whole frames out."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Every frame completed by `data` (all of them: not one per wake-up). Each frame's
        bytes are copied once, out of `data` itself where no partial frame came before it
        (a capture's results carry its small files' bytes: ~410 MB at 100k files, copied
        three times more before, ~0.4 s of memmove in a perf profile of the capture)."""
        if self.buf:
            self.buf += data
            src: bytes | bytearray | memoryview = self.buf
        else:
            src = data
        out, pos, end = [], 0, len(src)
        with memoryview(src) as view:
            while end - pos >= FRAME.size:
                (n,) = FRAME.unpack_from(view, pos)
                if end - pos - FRAME.size < n:
                    break
                out.append(view[pos + FRAME.size : pos + FRAME.size + n].tobytes())
                pos += FRAME.size + n
            if src is not self.buf and pos < end:
                self.buf = bytearray(view[pos:])  # a partial frame: kept for the next feed
        if src is self.buf:
            del self.buf[:pos]
        return out

"""The one frame format between the engine and its worker processes, and the typed
messages carried in it, over a real socket pair."""

from __future__ import annotations

import socket

import msgspec

from workers.engine.capture.messages import Done, Failed, Gone, ReaderMessage, Results
from workers.engine.restore.messages import End, WriterMessage, Written, Wrote
from workers.engine.workerproc import frames


def test_frames_cut_anywhere_come_out_whole() -> None:
    payloads = [b"", b"x", bytes(range(256)) * 300, b"last"]
    wire = b"".join(frames.pack(p) for p in payloads)
    for step in (1, 3, 4, 1000, len(wire)):
        buf = frames.FrameBuffer()
        out: list[bytes] = []
        for i in range(0, len(wire), step):
            out += buf.feed(wire[i : i + step])
        assert out == payloads
        assert not buf.buf


def test_typed_messages_over_a_socket_pair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    enc = msgspec.msgpack.Encoder()
    reader = msgspec.msgpack.Decoder(ReaderMessage)
    writer = msgspec.msgpack.Decoder(WriterMessage)
    try:
        done = Done(7, [(b"i" * 32, b"payload")], 5, [(b"i" * 32, 0)], (5, 1, 2, 3, 0o100644, 0, 0),
                    5, False, b"")
        batch = Results([done, Gone(9, "vanished"), Failed(8, "Permission denied")], True)
        frames.send(a, enc.encode(batch))
        assert reader.decode(frames.recv(b)) == batch
        for msg in (Wrote(4096), Written([(1, 2, 3)], 4096), End()):
            frames.send(a, enc.encode(msg))
            assert writer.decode(frames.recv(b)) == msg
    finally:
        a.close()
        b.close()


def test_the_tag_comes_first_as_the_tuples_had_it() -> None:
    """array_like tagged Structs put the tag first: a reader's frames are the arrays the
    untyped protocol sent (("done", idx, blobs, ...), ("err", idx, message))."""
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(Failed(3, "gone")))
    assert raw == ["err", 3, "gone"]

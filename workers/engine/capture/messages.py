"""What a capture reader process and its parent send each other (see readerproc.py).

Parent -> reader: Setup once (a frame on the result socket), then per file an 8-byte entry
index (REQ) with the open fd (SCM_RIGHTS on the request socket). Reader -> parent: one
ReaderMessage per frame, a tagged union (the tag is the first array element): Blobs while
a big file is read, then Done, Gone or Failed for that file.
"""

from __future__ import annotations

import struct

import msgspec

REQ = struct.Struct(">Q")  # the entry index sent with each fd

StoredChunks = list[tuple[bytes, bytes]]  # (chunk id, encoded payload) new to the reader
# (chunk id, raw bytes) of small chunks of a bigger file, new to the reader: the parent
# puts them into its tiny packs (packwriter.add_piece)
PackedChunks = list[tuple[bytes, bytes]]
# (size, mtime_ns, ctime_ns, ino, mode, uid, gid) of the file as read
StatInfo = tuple[int, int, int, int, int, int, int]


class Setup(msgspec.Struct, array_like=True):
    key: bytes
    chunk_min: int
    chunk_avg: int
    chunk_max: int
    level: int
    known: bytes  # concatenated 32-byte ids already stored
    block_size: int  # files of at least big_file bytes are cut in blocks (chunker.py)
    big_file: int


class Blobs(msgspec.Struct, array_like=True, tag="blobs"):
    """Encoded chunks of a file still being read, and the raw bytes read since the last."""

    idx: int
    blobs: StoredChunks
    raw: int
    packed: PackedChunks = []


class Done(msgspec.Struct, array_like=True, tag="done"):
    """A file read whole: its chunk list, its stat as read, and a small file's bytes."""

    idx: int
    blobs: StoredChunks
    raw: int
    chunks: list[tuple[bytes, int]]  # (chunk id, offset)
    info: StatInfo
    nread: int
    changed: bool  # still changing after the last retry
    tiny: bytes  # a small file's content, for the parent's tiny pack (else b"")
    packed: PackedChunks = []


class Gone(msgspec.Struct, array_like=True, tag="gone"):
    """The fd is no longer a regular file (replaced during the capture): skipped."""

    idx: int
    why: str


class Failed(msgspec.Struct, array_like=True, tag="err"):
    idx: int
    message: str


ReaderMessage = Blobs | Done | Gone | Failed

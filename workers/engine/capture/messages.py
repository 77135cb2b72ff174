"""What a capture reader process and its parent send each other (see readerproc.py).

Parent -> reader: Setup once (a frame on the result socket), then one Request per batch of
files of one directory (a SOCK_SEQPACKET message on the request socket, carrying that
directory's open fd by SCM_RIGHTS). Reader -> parent: one ReaderMessage per frame, a
tagged union (the tag is the first array element): Blobs while a bigger file is read, and
Results with the outcome (Done, Gone or Failed) of each file, the last one of a request
marked `last`.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

StoredChunks = list[tuple[bytes, bytes]]  # (chunk id, encoded payload) new to the reader
# (chunk id, raw bytes) of small chunks of a bigger file, new to the reader: the parent
# puts them into its tiny packs (packwriter.add_piece)
PackedChunks = list[tuple[bytes, bytes]]
# (size, mtime_ns, ctime_ns, ino, mode, uid, gid) of the file as read
StatInfo = tuple[int, int, int, int, int, int, int]
# a file read, whoever read it (reader process, thread, big-file thread): (entry index,
# (chunk id, offset) list, its data if a single tiny chunk, StatInfo, bytes read, changed
# while read, xattrs) -> Archiver._done
FileDone = Callable[[int, list[tuple[bytes, int]], bytes, StatInfo, int, bool,
                     list[tuple[str, bytes]]], None]
FileGone = Callable[[int, str], None]  # (entry index, why): a file not captured after all
# a request's size: at most this many files, and names of at most this many bytes (a
# SOCK_SEQPACKET message is received whole into a buffer of REQUEST_MAX bytes)
REQUEST_FILES = 64
REQUEST_NAME_BYTES = 32 * 1024
REQUEST_MAX = 64 * 1024


class Setup(msgspec.Struct, array_like=True):
    key: bytes
    chunk_min: int
    chunk_avg: int
    chunk_max: int
    level: int
    known: bytes  # concatenated 32-byte ids already stored
    block_size: int  # files of at least big_file bytes are cut in blocks (chunker.py)
    big_file: int
    hash_log: int = 0  # the compressor's (repository.compressor)


class Request(msgspec.Struct, array_like=True):
    """Files of the directory whose fd comes with the message: each one's entry index and
    name (a single path component, from the parent's walk), and its size at the walk."""

    idxs: list[int]
    names: list[bytes]
    sizes: list[int]


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
    xattrs: list[tuple[str, bytes]] = []  # as read on the descriptor (fsutil.read_xattrs)


class Gone(msgspec.Struct, array_like=True, tag="gone"):
    """Not captured: vanished, or replaced by something that is not a regular file."""

    idx: int
    why: str


class Failed(msgspec.Struct, array_like=True, tag="err"):
    idx: int
    message: str


FileResult = Done | Gone | Failed


class Results(msgspec.Struct, array_like=True, tag="res"):
    """The outcome of some files of a request, in its order; `last`: its final ones."""

    files: list[FileResult]
    last: bool


ReaderMessage = Blobs | Results

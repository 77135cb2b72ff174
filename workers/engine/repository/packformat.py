"""Block-framed objects: tiny packs compressed in independent 1 MiB blocks.

A pack holds up to 16 MiB of small files. Compressed as one zstd frame, restoring a single
file of it (the restore of a tree that differs little from the current one) would have to
decompress the whole pack. Instead a pack object is

    BLOCKS (1 byte) | u32 block count n | n x u32 compressed block sizes | n zstd frames

where frame i holds plaintext bytes [i * BLOCK, (i + 1) * BLOCK). A reader of one file
reads (a range read after the table) and decompresses only the blocks its slice spans;
the slice is then checked against the file's own chunk id, so a partial read is verified
as strictly as a whole one (which re-hashes the whole plaintext against the pack id, as
for any object).
"""

from __future__ import annotations

import struct

import zstandard

BLOCKS = 2  # object header byte (0 = raw, 1 = zstd: see repository.py)
BLOCK = 1 << 20
_U32 = struct.Struct(">I")


def encode(zc: zstandard.ZstdCompressor, data: bytes | memoryview) -> bytes:
    return assemble([zc.compress(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK)])


def assemble(frames: list[bytes]) -> bytes:
    """The object for zstd frames of consecutive BLOCK-sized pieces (the last may be short)."""
    table = b"".join(_U32.pack(len(f)) for f in frames)
    return bytes([BLOCKS]) + _U32.pack(len(frames)) + table + b"".join(frames)


def table_size(head: bytes) -> int:
    """Bytes of the header + block table, from at least the first 5 bytes of an object."""
    if len(head) < 5:
        raise ValueError("truncated block table")
    (n,) = _U32.unpack_from(head, 1)
    return 5 + 4 * int(n)


def frames(head: bytes, size: int) -> list[tuple[int, int]]:
    """(start, end) in the object of each block's frame, from its first table_size() bytes
    and its total size; ValueError when the table is damaged."""
    pos = table_size(head)
    if pos > len(head) or pos > size:
        raise ValueError("truncated block table")
    out = []
    for i in range((pos - 5) // 4):
        (n,) = _U32.unpack_from(head, 5 + 4 * i)
        out.append((pos, pos + n))
        pos += n
    if pos != size:
        raise ValueError("block sizes do not add up")
    return out


def decode_all(zd: zstandard.ZstdDecompressor, obj: bytes) -> bytes:
    return b"".join(zd.decompress(obj[a:b]) for a, b in frames(obj, len(obj)))

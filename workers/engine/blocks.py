"""Block-framed objects: tiny packs compressed in independent 1 MiB blocks.

A pack holds up to 16 MiB of small files. Compressed as one zstd frame, restoring a single
file of it (the restore of a tree that differs little from the current one) would have to
decompress the whole pack. Instead a pack object is

    BLOCKS (1 byte) | u32 block count n | n x u32 compressed block sizes | n zstd frames

where frame i holds plaintext bytes [i * BLOCK, (i + 1) * BLOCK). A reader of one file
decompresses only the blocks its slice spans; the slice is then checked against the
file's own chunk id, so a partial read is verified as strictly as a whole one (which
re-hashes the whole plaintext against the pack id, as for any object).
"""

from __future__ import annotations

import struct

import zstandard

BLOCKS = 2  # object header byte (0 = raw, 1 = zstd: see repository.py)
BLOCK = 1 << 20
_U32 = struct.Struct(">I")


def encode(zc: zstandard.ZstdCompressor, data: bytes) -> bytes:
    frames = [zc.compress(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK)]
    table = b"".join(_U32.pack(len(f)) for f in frames)
    return bytes([BLOCKS]) + _U32.pack(len(frames)) + table + b"".join(frames)


def _frames(obj: bytes) -> list[tuple[int, int]]:
    """(start, end) in obj of each block's frame; ValueError when the table is damaged."""
    if len(obj) < 5:
        raise ValueError("truncated block table")
    (n,) = _U32.unpack_from(obj, 1)
    pos = 5 + 4 * n
    if pos > len(obj):
        raise ValueError("truncated block table")
    out = []
    for i in range(n):
        (size,) = _U32.unpack_from(obj, 5 + 4 * i)
        out.append((pos, pos + size))
        pos += size
    if pos != len(obj):
        raise ValueError("block sizes do not add up")
    return out


def decode_all(zd: zstandard.ZstdDecompressor, obj: bytes) -> bytes:
    return b"".join(zd.decompress(obj[a:b]) for a, b in _frames(obj))


def decode_block(zd: zstandard.ZstdDecompressor, obj: bytes, index: int) -> bytes:
    frames = _frames(obj)
    if not 0 <= index < len(frames):
        raise ValueError("block out of range")
    a, b = frames[index]
    return zd.decompress(obj[a:b])

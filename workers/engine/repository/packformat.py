"""Pack objects: many chunks in one object, each part compressed on its own.

Format 3 (PACK, written since packs hold big chunks too) is

    PACK (1 byte) | u32 frame count f | u32 member count m | f x (u32 stored, u32 plain)
    | f frames | m x (32-byte chunk id, u32 offset, u32 length)

Frame i is a payload (1-byte RAW/ZSTD header + bytes, as a chunk object's) holding the
plaintext bytes [sum of earlier plain sizes, + its plain size). Frames end at member
boundaries: a big chunk is one frame of its own (its payload as the capture compressed it),
small files share frames of about BLOCK bytes. Members are addressed by plaintext offset
(Entry.pack_off / Entry.slices), so a reader needs only the frame table, which is small
and bounded (MAX_FRAMES): one GET of HEADER_MAX bytes finds it, and a reader that needs
most of a pack reads the table and its frames in one GET (packreader.py). The member table
at the end makes the object self-describing: the pack's id is the keyed hash of both
tables (pack_id), so verify checks an object's layout as well as every member's bytes.

Format 2 (BLOCKS, tiny packs of earlier versions) is read, never written:

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

import bisect
import struct

import msgspec
import zstandard

BLOCKS = 2  # object header byte (0 = raw, 1 = zstd: see repository.py)
PACK = 3
BLOCK = 1 << 20
MAX_FRAMES = 255  # frames per pack: bounds the table a reader must fetch first
HEADER_MAX = 9 + 8 * MAX_FRAMES
_U32 = struct.Struct(">I")
_FRAME = struct.Struct(">II")
_MEMBER = struct.Struct(">32sII")
RAW, ZSTD = 0, 1  # a payload's header byte (repository.py writes chunk objects with them)


# msgspec Structs, not NamedTuples: a NamedTuple class costs ~0.9 M instructions to define
# (every restore imports this module), a Struct 0.3 M, and is made faster


class Frame(msgspec.Struct, frozen=True, gc=False):
    start: int  # offset of its payload in the object
    end: int
    plain: int  # plaintext offset in the pack
    size: int  # plaintext bytes


class Layout(msgspec.Struct, frozen=True):
    """What a reader needs of a pack: its frames (a format-2 pack's frames have BLOCK
    plaintext bytes each, the last maybe fewer)."""

    kind: int  # PACK or BLOCKS; anything else: one zstd frame, decoded whole
    frames: list[Frame]
    starts: list[int]  # plaintext offset of each frame (for bisect)


OLD_FORMAT = Layout(0, [], [])


def make_layout(kind: int, frames: list[Frame]) -> Layout:
    return Layout(kind, frames, [f.plain for f in frames])


def pack_layout(head: bytes) -> Layout:
    """The layout of a format-3 pack from (at least) its header's bytes."""
    return make_layout(PACK, layout(head)[0])


def span(lay: Layout, off: int, ln: int) -> range:
    """Indexes of the frames holding plaintext [off, off + ln) (ln > 0)."""
    first = bisect.bisect_right(lay.starts, off) - 1
    last = bisect.bisect_right(lay.starts, off + ln - 1) - 1
    if first < 0 or last >= len(lay.frames) or (
            lay.kind == PACK and off + ln > lay.frames[last].plain + lay.frames[last].size):
        raise ValueError("member out of range")
    return range(first, last + 1)


def decode_frame(zd: zstandard.ZstdDecompressor, kind: int, data: bytes | memoryview) -> bytes:
    return decode_payload(zd, data) if kind == PACK else zd.decompress(data)


def tables(frames: list[tuple[int, int]], members: list[tuple[bytes, int, int]]
           ) -> tuple[bytes, bytes]:
    """(header, member table) of a format-3 pack: frames as (stored, plain) sizes."""
    head = bytes([PACK]) + _U32.pack(len(frames)) + _U32.pack(len(members)) + b"".join(
        _FRAME.pack(a, b) for a, b in frames)
    return head, b"".join(_MEMBER.pack(c, o, n) for c, o, n in members)


def header_size(head: bytes) -> int:
    """Bytes of a format-3 header, from at least its first 9 bytes."""
    if len(head) < 9 or head[0] != PACK:
        raise ValueError("not a pack header")
    (n,) = _U32.unpack_from(head, 1)
    if n > MAX_FRAMES:
        raise ValueError("too many frames")
    return 9 + 8 * int(n)


def layout(head: bytes) -> tuple[list[Frame], int]:
    """The frames of a format-3 pack and its member count, from its header's bytes."""
    need = header_size(head)
    if len(head) < need:
        raise ValueError("truncated frame table")
    (m,) = _U32.unpack_from(head, 5)
    out, pos, plain = [], need, 0
    for i in range((need - 9) // 8):
        stored, size = _FRAME.unpack_from(head, 9 + 8 * i)
        out.append(Frame(pos, pos + stored, plain, size))
        pos += stored
        plain += size
    return out, int(m)


def members_of(obj: bytes | memoryview, frames: list[Frame], m: int
               ) -> list[tuple[bytes, int, int]]:
    at = frames[-1].end if frames else header_size(bytes(obj[:9]))
    if len(obj) != at + m * _MEMBER.size:
        raise ValueError("pack size does not match its tables")
    return [_MEMBER.unpack_from(obj, at + i * _MEMBER.size) for i in range(m)]


def decode_payload(zd: zstandard.ZstdDecompressor, payload: bytes | memoryview) -> bytes:
    if not len(payload):
        raise ValueError("empty frame")
    if payload[0] == RAW:
        return bytes(payload[1:])
    if payload[0] == ZSTD:  # a view past the header byte: payload[1:] of bytes copied it
        return zd.decompress(memoryview(payload)[1:])
    raise ValueError("unknown frame header")


def plain_size(payload: bytes | memoryview) -> int:
    """Plaintext bytes of a payload (zstd frames carry their content size)."""
    if payload[0] == RAW:
        return len(payload) - 1
    n = zstandard.frame_content_size(bytes(payload[1:19]))
    if n < 0:
        return len(zstandard.ZstdDecompressor().decompress(payload[1:]))
    return int(n)


def decode_pack(zd: zstandard.ZstdDecompressor, obj: bytes
                ) -> tuple[bytes, list[tuple[bytes, int, int]], bytes]:
    """(plaintext, members, both tables' bytes) of a whole format-3 pack; ValueError or
    ZstdError when damaged."""
    frames, m = layout(obj)
    members = members_of(obj, frames, m)
    parts = []
    for f in frames:
        data = decode_payload(zd, obj[f.start:f.end])
        if len(data) != f.size:
            raise ValueError("a frame's size does not match its table")
        parts.append(data)
    table_bytes = obj[:header_size(obj)] + obj[len(obj) - m * _MEMBER.size:]
    return b"".join(parts), members, table_bytes


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

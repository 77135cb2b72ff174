"""A directory manifest's body as msgpack laid out for streaming: DirBodyWriter compresses
a capture's entries as they become final, and the pieces it records let a reader decode
them a piece at a time (manifest.iter_pieces). The layout is msgspec's encoding of a
manifest.DirBody, byte for byte: DIR_PREFIX, an array header, the entries."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable

import zstandard

DIR_PREFIX = b"\x82\xa4type\xa3dir\xa7entries"  # {"type": "dir", "entries": [...]}
_PIECE_BYTES = 256 << 10  # bytes of encoded entries joined per compressor call


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def encode_dir_body(entries: Iterable[bytes]) -> bytes:
    """manifest.encode_body(DirBody(entries)) from entries already encoded
    (manifest.encode_entry): the same bytes once decompressed (DirBodyWriter)."""
    w = DirBodyWriter()
    it = iter(entries)
    while piece := list(itertools.islice(it, 4096)):
        w.add_many(piece)
    return w.finish()


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_BLOCK = 0  # zstd block type 0: stored as is (RFC 8878 section 3.1.1.2)


class DirBodyWriter:
    """A directory manifest's body built as its entries become final, in walk order: they
    are compressed as they are added, so a capture holds ~45 bytes an entry of compressed
    body instead of the entry's ~180 bytes of msgpack (a million files: ~130 MiB less).

    The body stays what every engine reads: one zstd frame that records its content size
    (their one-shot decompress needs it), holding the DirBody's msgpack byte for byte. But
    the entry count (the array header after the DirBody's prefix) and the content size
    are known only once the last entry is added. So the entries are compressed as a frame
    of unknown size from their first byte; finish() writes the frame header again with
    the content size, and puts the prefix and array header before the entries' blocks as
    a raw (stored) block. The entries' blocks refer back only into the entries' own bytes
    (no match distance reaches past the start of what their compressor saw) and a raw
    block sets no entropy tables, so they decode the same after it."""

    def __init__(self) -> None:
        zc = zstandard.ZstdCompressor(level=3, write_checksum=False, write_content_size=False)
        self._z = zc.compressobj()
        self._out: list[bytes] = []
        self._piece: list[bytes] = []
        self._piece_bytes = 0
        self.count = 0
        self.size = 0  # bytes of the entries' msgpack
        self.pieces: list[tuple[int, int]] = []  # (entries, bytes) per compressor call

    def add_many(self, raws: list[bytes]) -> None:
        """Entries manifest.encode_entry() encoded, the next ones in walk order."""
        for k in range(0, len(raws), 1024):  # pieces of ~_PIECE_BYTES, however many come
            part = raws[k : k + 1024] if len(raws) > 1024 else raws
            n = sum(map(len, part))
            self._piece += part
            self._piece_bytes += n
            self.count += len(part)
            self.size += n
            if self._piece_bytes >= _PIECE_BYTES:
                self._compress()

    def _compress(self) -> None:
        if self._piece:
            self.pieces.append((len(self._piece), self._piece_bytes))
        out = self._z.compress(b"".join(self._piece))
        if out:
            self._out.append(out)
        self._piece, self._piece_bytes = [], 0

    def finish(self) -> bytes:
        return b"".join(self.finish_pieces())

    def finish_pieces(self) -> list[bytes]:
        """The body as pieces to be written one after the other (finish() joined): the
        compressor's outputs as they are, not joined. Joined twice (the frame, then the
        body), and once more with the manifest's header, the body was there three times
        at once when the capture was done with everything else: its peak (an incremental
        of 300,000 files: +27 MiB over the walk's 77)."""
        self._compress()
        out, self._out = self._out, []
        out.append(self._z.flush())
        while len(out) > 1 and len(out[0]) < 6:  # the frame header in the first piece
            out[:2] = [out[0] + out[1]]
        first = out[0]
        head = DIR_PREFIX + array_header(self.count)
        # the entries' frame header: magic, descriptor, window descriptor; no content
        # size, dictionary or checksum (a checksum would not cover the prefix)
        if first[:4] != _ZSTD_MAGIC or first[4] != 0:
            raise AssertionError(f"unexpected zstd frame header {first[:6].hex()}")
        window = first[5]
        descriptor = 0b11 << 6  # Frame_Content_Size: 8 bytes; multi-segment (a window)
        block = (len(head) << 3) | (_RAW_BLOCK << 1)  # not the last block
        start = b"".join([_ZSTD_MAGIC, bytes([descriptor, window]),
                          struct.pack("<Q", len(head) + self.size),
                          block.to_bytes(3, "little"), head])
        return [start, first[6:], *out[1:]]  # a copy of the first output only


def entry_count(body: bytes) -> int | None:
    """The entry count of a DirBody's msgpack from its array header (encode_dir_body and
    msgspec both start it with DIR_PREFIX), or None if it does not start so."""
    if not body.startswith(DIR_PREFIX) or len(body) <= len(DIR_PREFIX):
        return None
    at = len(DIR_PREFIX)
    tag = body[at]
    if tag & 0xF0 == 0x90:
        return tag & 0x0F
    if tag == 0xDC and len(body) >= at + 3:
        return int(struct.unpack_from(">H", body, at + 1)[0])
    if tag == 0xDD and len(body) >= at + 5:
        return int(struct.unpack_from(">I", body, at + 1)[0])
    return None

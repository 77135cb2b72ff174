"""Manifest format: the commit point of a snapshot.

File layout: MAGIC (8 bytes) | u32 big-endian header length | header (msgpack) | body
(zstd(msgpack)). The header is decodable without decompressing the tree, so listing the
snapshots of a repository (catalog rebuild) stays cheap.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Literal, TypeVar

import msgspec
import zstandard

from .. import gcpause
from ..model import CommittedSnapshot, SnapshotMeta
from . import dirbody

MAGIC = b"SNAPMF1\n"
T = TypeVar("T")

# Entry kinds (one letter keeps the manifest of a 10k-file tree small).
EntryKind = Literal["f", "d", "l", "p", "c", "b", "s", "h"]
FILE: Final = "f"
DIR: Final = "d"
SYMLINK: Final = "l"
FIFO: Final = "p"
CHR: Final = "c"
BLK: Final = "b"
SOCK: Final = "s"
HARDLINK: Final = "h"  # a further name of a regular file: `target` is its first path


# gc=False: an Entry holds no reference cycle (bytes, ints, lists of tuples), so the cyclic
# collector need not track a million of them (gcpause.py says what that costs).
class Entry(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    path: bytes  # relative to the state root, b"" is the root itself
    kind: EntryKind
    mode: int  # full st_mode (type + setuid/setgid/sticky + permissions)
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    # ctime_ns and ino only serve the incremental "unchanged since parent" test.
    ctime_ns: int = 0
    ino: int = 0
    chunks: list[tuple[bytes, int]] = []  # (chunk id, offset in file); holes are gaps
    target: bytes = b""  # symlink target, or the primary path of a hard link
    rdev: int = 0
    xattrs: list[tuple[str, bytes]] = []
    # Small files (one chunk, <= tuning.INLINE_MAX): their bytes live in a "tiny pack" object
    # shared by all small files of one capture, at [pack_off, pack_off + pack_len).
    pack: bytes = b""
    pack_off: int = 0
    pack_len: int = 0
    # Small chunks of a bigger file (a sparse file's small data extents, an extent's tail)
    # live in tiny packs too: (index in `chunks`, pack, offset, length), so the number of
    # objects a capture makes is bounded by its data, not by how a file is fragmented.
    slices: list[tuple[int, bytes, int, int]] = []

    def objects(self) -> set[bytes]:
        """The ids of the objects this entry's content is read from."""
        if self.pack:
            return {self.pack}
        sliced = {i for i, _p, _o, _n in self.slices}
        return ({cid for i, (cid, _off) in enumerate(self.chunks) if i not in sliced}
                | {pack for _i, pack, _o, _n in self.slices})


class DirBody(msgspec.Struct, tag="dir"):
    entries: list[Entry]


class ImageBody(msgspec.Struct, tag="image"):
    size: int
    block_size: int
    blocks: list[tuple[int, bytes]]  # (block index, chunk id); missing indexes are zero
    # mtime/ctime/ino of a regular-file image, for the incremental test.
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    # Blocks that live in packs, as Entry.slices: (index in `blocks`, pack, offset,
    # length); a block not named here is an object of its own (what engines before
    # manifest version 4 wrote for every block, still read and still deduplicated against).
    slices: list[tuple[int, bytes, int, int]] = []

    def objects(self) -> set[bytes]:
        """The ids of the objects this image's blocks are read from."""
        sliced = {i for i, _p, _o, _n in self.slices}
        return ({cid for i, (_b, cid) in enumerate(self.blocks) if i not in sliced}
                | {pack for _i, pack, _o, _n in self.slices})


Body = DirBody | ImageBody


# 2: small files in block-compressed packs, server spec in the meta. 3: Entry.slices.
# 4: ImageBody.slices (an image's blocks in packs). A reader refuses a newer version
# instead of misreading it (and reclaim, seeing it unreadable, sweeps nothing). 4 had to
# be a new version: msgspec skips an unknown field, so a version-3 engine would decode an
# image manifest without its slices, look for its packed blocks as objects of their own
# and call a good snapshot corrupt (and its reclaim would delete the packs).
MANIFEST_VERSION = 4


class Header(msgspec.Struct):
    meta: SnapshotMeta
    state_kind: Literal["directory", "image"]
    size_bytes: int
    stored_bytes: int
    files: int
    warnings: list[str]
    completed_at: str
    version: int = MANIFEST_VERSION
    # Its ctimes were recorded after a sync point (fs/syncpoint.py), so an inode still at
    # one holds the bytes captured. False in manifests written before that rule: their
    # ctimes are never trusted (the next capture reads everything once).
    ctimes_vouched: bool = False
    # st_dev of the state's root directory when it was captured (the walk keeps only files
    # on it): an (ino, ctime) pair names an inode of one filesystem, so neither the next
    # capture nor a restore trusts one seen on another device (a state moved onto another
    # filesystem, a tenant's image mounted there). 0 (written before, or an image state):
    # unknown, nothing trusted for being the captured inode. Linux never gives a
    # filesystem device 0.
    dev: int = 0
    # (entries, bytes of their msgpack) of each piece of a directory body's entries, in
    # order, as dirbody.DirBodyWriter compressed them: the next capture decodes its parent a piece
    # at a time beside its walk (iter_pieces) instead of holding it all decompressed
    # (~240 bytes an entry). Empty in manifests written before: decoded whole.
    pieces: list[tuple[int, int]] = []

    def committed(self) -> CommittedSnapshot:
        return CommittedSnapshot(meta=self.meta, state_kind=self.state_kind,
                                 size_bytes=self.size_bytes, completed_at=self.completed_at)


_hdr_enc = msgspec.msgpack.Encoder()
_hdr_dec = msgspec.msgpack.Decoder(Header)
_body_dec = msgspec.msgpack.Decoder(Body)


def encode_body(body: Body) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(_hdr_enc.encode(body))


def encode_entry(e: Entry) -> bytes:
    """One entry's msgpack, as it appears inside an encoded DirBody: a capture keeps its
    tree this way (~180 bytes an entry held instead of ~700 for an Entry object)."""
    return _hdr_enc.encode(e)


def assemble(header: Header, body: bytes) -> bytes:
    return b"".join(assemble_pieces(header, [body]))


def assemble_pieces(header: Header, body: Sequence[bytes]) -> list[bytes]:
    """The manifest as pieces (the body's as given) to be written one after the other."""
    h = _hdr_enc.encode(header)
    return [MAGIC + struct.pack(">I", len(h)) + h, *body]


def encode(header: Header, body: Body) -> bytes:
    return assemble(header, encode_body(body))


def _split(data: bytes) -> tuple[bytes, bytes]:
    if data[:8] != MAGIC or len(data) < 12:
        raise ValueError("not a snapshot manifest")
    (n,) = struct.unpack(">I", data[8:12])
    return data[12 : 12 + n], data[12 + n :]


def header_length(prefix: bytes) -> int:
    """Bytes needed to decode the header, from the first 12 bytes of a manifest."""
    if prefix[:8] != MAGIC or len(prefix) < 12:
        raise ValueError("not a snapshot manifest")
    return 12 + int(struct.unpack(">I", prefix[8:12])[0])


def _checked(header: Header) -> Header:
    if header.version > MANIFEST_VERSION:
        raise ValueError(
            f"written by a newer engine (manifest version {header.version}, this engine "
            f"reads up to {MANIFEST_VERSION})"
        )
    return header


def decode_header(data: bytes) -> Header:
    return _checked(_hdr_dec.decode(_split(data)[0]))


def directory_body(data: bytes) -> tuple[Header, bytes]:
    """A directory manifest's header, checked, and its body still compressed; ValueError
    for the manifest of an image."""
    h, b = _split(data)
    header = _checked(_hdr_dec.decode(h))
    if header.state_kind != "directory":
        raise ValueError("not the manifest of a directory state")
    return header, b


def decode(data: bytes) -> tuple[Header, Body]:
    h, b = _split(data)
    header = _checked(_hdr_dec.decode(h))
    with gcpause.paused():
        body = _body_dec.decode(zstandard.ZstdDecompressor().decompress(b))
    if isinstance(body, DirBody):
        share_pack_ids(body.entries)
    return header, body


class RawDirBody(msgspec.Struct, tag="dir"):
    """A DirBody whose entries stay encoded."""

    entries: list[msgspec.Raw]  # each one's msgpack bytes, a view into the decoded body


_lazy_dec = msgspec.msgpack.Decoder(RawDirBody)
_entry_dec = msgspec.msgpack.Decoder(Entry)


_raws_dec = msgspec.msgpack.Decoder(list[msgspec.Raw])


def iter_pieces(data: bytes) -> tuple[Header, Iterator[list[msgspec.Raw]]]:
    """A directory manifest's entries, still encoded, a piece (Header.pieces) at a time as
    the iterator is advanced: one piece's ~256 KiB decompressed held at once, not the
    whole body (a million entries: ~240 MB). A manifest without pieces: one list of all.
    The iterator raises ValueError, msgspec.DecodeError or zstandard.ZstdError where the
    body turns out damaged."""
    header, b = directory_body(data)
    if not header.pieces:
        return header, iter([_lazy_dec.decode(zstandard.ZstdDecompressor().decompress(b))
                             .entries])
    return header, _pieces(b, header.pieces, _raws_dec)


def _pieces(body: bytes, pieces: list[tuple[int, int]],
            dec: msgspec.msgpack.Decoder[list[T]]) -> Iterator[list[T]]:
    reader = zstandard.ZstdDecompressor().stream_reader(body)

    def read(n: int) -> bytes:
        out = reader.read(n)
        while len(out) < n and (more := reader.read(n - len(out))):
            out += more
        return out

    head = dirbody.DIR_PREFIX + dirbody.array_header(sum(count for count, _n in pieces))
    if read(len(head)) != head:
        raise ValueError("the body's pieces do not match its entries")
    for count, n in pieces:
        data = read(n)
        if len(data) != n:
            raise ValueError("the body ends before its last piece")
        yield dec.decode(dirbody.array_header(count) + data)
    if reader.read(1):
        raise ValueError("the body goes on after its last piece")


def entry(raw: msgspec.Raw | bytes) -> Entry:
    return _entry_dec.decode(raw)


def share_pack_ids(entries: list[Entry]) -> None:
    """One bytes object per tiny pack instead of one per small file naming it (decoding
    makes a new one for each): 72 bytes less per small file held in memory."""
    seen: dict[bytes, bytes] = {}
    last = b""  # the files of a pack come one after another: compared, not hashed, mostly
    for e in entries:
        if pack := e.pack:
            if pack != last:
                last = seen.setdefault(pack, pack)
            e.pack = last


def chunk_ids(body: Body) -> set[bytes]:
    """Ids of the objects a snapshot needs (chunks, and tiny packs of small files)."""
    if isinstance(body, ImageBody):
        return body.objects()
    return _entries_objects(body.entries, set())


def _entries_objects(entries: Iterable[Entry], ids: set[bytes]) -> set[bytes]:
    for e in entries:
        if e.pack:  # most files of a tree: one tiny pack, no set built for it
            ids.add(e.pack)
        elif e.chunks:  # (slices index chunks: no chunks, no objects)
            ids |= e.objects()
    return ids


_entries_dec = msgspec.msgpack.Decoder(list[Entry])
_dir_dec = msgspec.msgpack.Decoder(DirBody)


def iter_entries(data: bytes) -> tuple[Header, Iterator[list[Entry]]]:
    """A directory manifest's entries decoded a piece (Header.pieces) at a time as the
    iterator is advanced, one piece's held at once (a manifest without pieces: one list of
    all). The iterator raises ValueError, msgspec.DecodeError or zstandard.ZstdError where
    the body turns out damaged."""
    header, b = directory_body(data)
    if not header.pieces:
        return header, iter([_dir_dec.decode(zstandard.ZstdDecompressor().decompress(b))
                             .entries])
    return header, _pieces(b, header.pieces, _entries_dec)


def object_ids(data: bytes) -> set[bytes]:
    """chunk_ids() of a manifest as stored, a directory's entries decoded a piece
    (Header.pieces) at a time: a reclaim marks every snapshot's objects, and decoded whole
    a million-entry manifest took ~1 GiB (an Entry ~700 bytes, its body's msgpack beside)
    in the worker process that reclaims, whose heap kept it afterwards. Raises
    ValueError, msgspec.DecodeError or zstandard.ZstdError where it is damaged."""
    h, b = _split(data)
    header = _checked(_hdr_dec.decode(h))
    if header.state_kind != "directory" or not header.pieces:
        return chunk_ids(decode(data)[1])  # an image's blocks; a directory from before
    ids: set[bytes] = set()
    with gcpause.paused():
        for piece in _pieces(b, header.pieces, _entries_dec):
            _entries_objects(piece, ids)
    return ids

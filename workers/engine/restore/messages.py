"""What a restore writer process and its parent send each other (see writerproc.py).

Parent -> writer, as frames on the result socket: Setup once, then the first Share
(read ahead at once), written on the first GO on the request socket (which carries the
staging directory's fd); every later Share follows a GO. Writer -> parent:
one WriterMessage per frame, a tagged union (the tag is the first array element): Wrote
as bytes are written, Written for each batch of finished files, then End, or Failed and
it stops. A CUT on the request socket (with the share position the parent would like the
writer to stop at) is answered with Cut, where it will really stop, and the frame tables
it read of the packs the rest is read from: the rest of its share is then another
writer's, which finished its own first (writerpool.py says why) and reads no table again.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..model import StorageOptions
from ..repository.packformat import Layout


class Setup(msgspec.Struct, array_like=True):
    storage: str  # the repository: a local root or an s3:// URL (Backend.location)
    snapshot_id: int
    state_path: str
    options: StorageOptions = StorageOptions()  # how to reach an s3:// repository
    config: bytes = b""  # the repository's config, as the parent read it (no GET of it)


class Share(msgspec.Struct, array_like=True):
    owner: tuple[int, int] | None  # what new files get where they are created
    indexes: list[int]  # manifest entries (regular files) to write
    # Those entries' msgpack, as in the manifest: the worker holds its share only, not a
    # whole million-entry manifest.
    entries: list[msgspec.Raw]
    # frame tables of packs these files are read from, as the writer whose rest this was
    # had read them: a sparse read of one is then one ranged GET, not two
    layouts: list[tuple[bytes, Layout]] = []


class Wrote(msgspec.Struct, array_like=True, tag="p"):
    """Progress: bytes written since the last report."""

    nbytes: int


class Written(msgspec.Struct, array_like=True, tag="done"):
    files: list[tuple[int, int, int]]  # (entry index, ino, ctime_ns) of each file written
    nbytes: int  # bytes these files took


class End(msgspec.Struct, array_like=True, tag="end"):
    """The whole share (up to its cut, if it was cut) is written."""


class Cut(msgspec.Struct, array_like=True, tag="cut"):
    """The writer writes its share's positions before `at` only (at: at least the one
    asked for, and past every file it has started)."""

    at: int
    layouts: list[tuple[bytes, Layout]] = []  # what it knows of the rest's packs (Share)


class Failed(msgspec.Struct, array_like=True, tag="err"):
    idx: int  # the entry being written
    kind: Literal["corrupt", "os", "other"]  # SnapshotCorrupt, OSError (errno), anything else
    message: str
    errno: int = 0


WriterMessage = Wrote | Written | End | Cut | Failed

GO = b"go"  # request socket: write the first Share, or the one that follows it
CUT = b"cut"  # request socket: CUT + the share position (8 bytes, big-endian)

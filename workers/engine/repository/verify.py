"""Verify: every object a snapshot needs is read once, whole, and checked (verify on read:
its plaintext against its id; a pack: its tables and every member), then each packed
chunk the snapshot names is checked at its place in its pack.

A directory's manifest is read as a restore reads it, a piece at a time (its tree checked
on the way), never decoded whole: a million entries decoded took ~1 GiB more. What it
keeps of each packed chunk until its pack is read is compact (_Members)."""

from __future__ import annotations

import itertools
from array import array

from ..model import SnapshotCorrupt, VerifyReport
from . import treecheck
from .manifest import Entry, ImageBody
from .repository import ObjectCorrupt, Repository, chunk_key

_ID_LEN = 32  # a chunk id (keyed BLAKE3); one of another length names no chunk


class _Members:
    """The packed chunks a snapshot names, by pack: (offset, length, which) triples in an
    array and the chunk ids end to end in a bytearray (~56 bytes a small file, not a tuple
    of four objects and a name). `which`: the index of the entry (of the block, an image)."""

    def __init__(self) -> None:
        self.by_pack: dict[bytes, tuple[array[int], bytearray]] = {}

    def add(self, pack: bytes, off: int, ln: int, cid: bytes, which: int) -> None:
        got = self.by_pack.get(pack)
        if got is None:
            got = self.by_pack[pack] = (array("q"), bytearray())
        got[0].extend((off, ln, which))
        got[1].extend(cid if len(cid) == _ID_LEN else bytes(_ID_LEN))  # no id: never matches

    def first_bad(self, repo: Repository, pack: bytes, data: bytes) -> int | None:
        """`which` of the first member of `pack` (its plaintext `data`) that does not match
        its id, if one does not."""
        got = self.by_pack.get(pack)
        if got is None:
            return None
        nums, ids = got
        for k in range(0, len(nums), 3):
            off, ln, which = nums[k], nums[k + 1], nums[k + 2]
            cid = ids[k // 3 * _ID_LEN:(k // 3 + 1) * _ID_LEN]
            if off < 0 or ln < 0 or off + ln > len(data) or repo.chunk_id(
                    data[off:off + ln]) != cid:
                return which
        return None


def _entry_objects(e: Entry, ids: set[bytes], members: _Members, idx: int) -> None:
    if e.pack:  # most files of a tree: one tiny pack
        ids.add(e.pack)
        if e.chunks:
            members.add(e.pack, e.pack_off, e.pack_len, e.chunks[0][0], idx)
    elif e.chunks:  # (slices index chunks: no chunks, no objects)
        ids |= e.objects()
    for i, pack, off, ln in e.slices:
        if i < len(e.chunks):
            members.add(pack, off, ln, e.chunks[i][0], idx)


def verify(repo: Repository, snapshot_id: int) -> VerifyReport:
    errors: list[str] = []
    ids: set[bytes] = set()
    members = _Members()
    image: ImageBody | None = None
    try:
        _h, body = repo.get_manifest_streamed(snapshot_id)
        if isinstance(body, ImageBody):
            image = body
            ids = body.objects()
            for k, pack, off, ln in body.slices:
                if k < len(body.blocks):
                    members.add(pack, off, ln, body.blocks[k][1], body.blocks[k][0])
        else:  # what every restore checks, on the way
            treecheck.check_tree(
                itertools.chain.from_iterable(body), snapshot_id,
                lambda idx, e: _entry_objects(e, ids, members, idx))
    except SnapshotCorrupt as e:
        return VerifyReport(snapshot_id=snapshot_id, ok=False, errors=[str(e)])
    # Each object read once, whole, and checked (a pack: its tables and every member
    # against its id); then the members the snapshot names are checked in its
    # plaintext: one GET per pack on S3, not one per packed block.
    bad: list[tuple[bytes, int]] = []
    for oid in sorted(ids):
        try:
            data = repo.read_chunk(oid)
        except ObjectCorrupt as e:
            errors.append(f"snapshot {snapshot_id}: {e} ({chunk_key(oid)})")
            continue
        which = members.first_bad(repo, oid, data)
        if which is not None:
            bad.append((oid, which))
            errors.append("")  # named below, in its place
    if bad:
        names = _named(repo, snapshot_id, image, {w for _o, w in bad})
        it = iter(bad)
        for n, msg in enumerate(errors):
            if not msg:
                oid, which = next(it)
                errors[n] = (f"snapshot {snapshot_id} is corrupt: {names[which]} does not "
                             f"match its id in object {oid.hex()} ({chunk_key(oid)})")
    return VerifyReport(snapshot_id=snapshot_id, ok=not errors, errors=errors)


def _named(repo: Repository, snapshot_id: int, image: ImageBody | None,
           which: set[int]) -> dict[int, str]:
    """What each `which` of a bad member is, as its error names it: a block of the image,
    or a file (its path, from the manifest read again: only a verify that failed does)."""
    if image is not None:
        return {i: f"block {i} of the image" for i in which}
    _h, body = repo.get_manifest_streamed(snapshot_id)
    assert not isinstance(body, ImageBody)
    out: dict[int, str] = {}
    for idx, e in enumerate(itertools.chain.from_iterable(body)):
        if idx in which:
            out[idx] = f"file {e.path.decode(errors='replace')}"
    return out

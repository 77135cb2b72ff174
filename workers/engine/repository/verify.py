"""Verify: every object a snapshot needs is read once, whole, and checked (verify on read:
its plaintext against its id; a pack: its tables and every member), then each packed
chunk the snapshot names is checked at its place in its pack."""

from __future__ import annotations

from collections.abc import Iterator

from ..model import SnapshotCorrupt, VerifyReport
from . import manifest
from .manifest import DirBody, ImageBody
from .repository import ObjectCorrupt, Repository, chunk_key


def verify(repo: Repository, snapshot_id: int) -> VerifyReport:
    errors: list[str] = []
    try:
        _h, body = repo.get_manifest(snapshot_id)
        if isinstance(body, DirBody):
            manifest.check_tree(body.entries, snapshot_id)  # what every restore checks
    except SnapshotCorrupt as e:
        return VerifyReport(snapshot_id=snapshot_id, ok=False, errors=[str(e)])
    # Each object read once, whole, and checked (a pack: its tables and every member
    # against its id); then the members the snapshot names are checked in its
    # plaintext: one GET per pack on S3, not one per packed block.
    members: dict[bytes, list[tuple[int, int, bytes, str]]] = {}
    for pack, off, ln, cid, what in _packed_members(body):
        members.setdefault(pack, []).append((off, ln, cid, what))
    for oid in sorted(manifest.chunk_ids(body)):
        try:
            data = repo.read_chunk(oid)
        except ObjectCorrupt as e:
            errors.append(f"snapshot {snapshot_id}: {e} ({chunk_key(oid)})")
            continue
        for off, ln, cid, what in members.get(oid, ()):
            if off + ln > len(data) or repo.chunk_id(data[off:off + ln]) != cid:
                errors.append(f"snapshot {snapshot_id} is corrupt: {what} does not match "
                              f"its id in object {oid.hex()} ({chunk_key(oid)})")
                break
    return VerifyReport(snapshot_id=snapshot_id, ok=not errors, errors=errors)


def _packed_members(body: manifest.Body) -> Iterator[tuple[bytes, int, int, bytes, str]]:
    """(pack, offset, length, chunk id, what it is) of every packed chunk a snapshot names:
    small files, the packed chunks of bigger files, an image's packed blocks."""
    if isinstance(body, ImageBody):
        for k, pack, off, ln in body.slices:
            if k < len(body.blocks):
                i, cid = body.blocks[k]
                yield pack, off, ln, cid, f"block {i} of the image"
        return
    for ent in body.entries:
        what = f"file {ent.path.decode(errors='replace')}"
        if ent.pack and ent.chunks:
            yield ent.pack, ent.pack_off, ent.pack_len, ent.chunks[0][0], what
        for i, pack, off, ln in ent.slices:
            if i < len(ent.chunks):
                yield pack, off, ln, ent.chunks[i][0], what

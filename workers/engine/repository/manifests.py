"""Where a repository's manifests live, snapshots/<id>, and how they are read back: listed,
fetched, decoded whole, header only, lazily or a piece at a time, each raising
SnapshotCorrupt (or SnapshotNotFound) naming the snapshot. Repository is a Manifests and
adds the commit point (Repository.put_manifest) and the objects manifests refer to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import msgspec
import zstandard

from ..model import SnapshotCorrupt, SnapshotNotFound, TransientEngineError
from . import lazyentries, manifest
from .backend import Backend


@contextlib.contextmanager
def _unreadable_as_corrupt(snapshot_id: int) -> Iterator[None]:
    """A manifest that does not decode never will (it is written once and never changes):
    SnapshotCorrupt naming the snapshot."""
    try:
        yield
    except (ValueError, msgspec.DecodeError, zstandard.ZstdError) as e:
        raise SnapshotCorrupt(f"manifest of snapshot {snapshot_id} is unreadable: {e}") from e


def _pieces_or_corrupt(snapshot_id: int,
                       pieces: Iterator[list[manifest.Entry]]) -> Iterator[list[manifest.Entry]]:
    with _unreadable_as_corrupt(snapshot_id):
        yield from pieces


class Manifests:
    backend: Backend

    @staticmethod
    def manifest_key(snapshot_id: int) -> str:
        return f"snapshots/{snapshot_id}"

    def manifest_ids(self) -> list[int]:
        return [sid for sid, _version in self.listed_manifests()]

    def listed_manifests(self) -> list[tuple[int, str]]:
        """(snapshot id, version as listed) of every manifest, by id."""
        out = []
        for key, version in self.backend.list_versions("snapshots/"):
            name = key.rsplit("/", 1)[1]
            if name.isdigit():
                out.append((int(name), version))
        return sorted(out)

    def get_manifest_raw(self, snapshot_id: int) -> bytes:
        """snapshots/<id> as stored (one GET on S3)."""
        try:
            return self.backend.get(self.manifest_key(snapshot_id))
        except FileNotFoundError as e:
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found in the repository") from e

    def get_header(self, snapshot_id: int, listed: str | None = None) -> manifest.Header:
        """Decodes the header only, reading just its bytes (listing stays cheap); listed:
        the manifest's version from listed_manifests() (a host may have it cached)."""
        key = self.manifest_key(snapshot_id)
        try:
            head = self.backend.get_head(key, 4096, listed=listed)
            need = manifest.header_length(head)
            if need > len(head):
                head = self.backend.get_head(key, need, listed=listed)
            return manifest.decode_header(head)
        except FileNotFoundError as e:
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found in the repository") from e
        except (ValueError, msgspec.DecodeError) as e:
            raise TransientEngineError(
                f"manifest of snapshot {snapshot_id} is unreadable: {e}") from e

    def get_manifest(self, snapshot_id: int) -> tuple[manifest.Header, manifest.Body]:
        return self.decode_manifest(snapshot_id, self.get_manifest_raw(snapshot_id))

    def decode_manifest(self, snapshot_id: int,
                        raw: bytes) -> tuple[manifest.Header, manifest.Body]:
        """A manifest as stored (get_manifest_raw), decoded."""
        with _unreadable_as_corrupt(snapshot_id):
            return manifest.decode(raw)

    def object_ids(self, snapshot_id: int) -> set[bytes]:
        """The ids of the objects snapshot_id needs (manifest.object_ids: a directory's
        entries decoded a piece at a time), for a reclaim's mark."""
        raw = self.get_manifest_raw(snapshot_id)
        with _unreadable_as_corrupt(snapshot_id):
            return manifest.object_ids(raw)

    def decode_tree(self, snapshot_id: int, raw: bytes) -> tuple[
            manifest.Header, manifest.ImageBody | lazyentries.LazyEntries]:
        """For a restore, a manifest as stored (get_manifest_raw): an image's blocks decoded,
        a directory's entries left encoded and, unless there are very many, decoded once
        (lazyentries.decode_entries, LazyEntries)."""
        with _unreadable_as_corrupt(snapshot_id):
            if manifest.decode_header(raw).state_kind == "directory":
                return lazyentries.decode_entries(raw)
            header, body = manifest.decode(raw)
        if not isinstance(body, manifest.ImageBody):
            raise SnapshotCorrupt(f"manifest of snapshot {snapshot_id} is unreadable: "
                                  "an image state's manifest holds a directory")
        return header, body

    def get_manifest_lazily(self, snapshot_id: int) -> tuple[manifest.Header,
                                                             list[msgspec.Raw]]:
        """A directory snapshot's entries left encoded (lazyentries.decode_lazily)."""
        return self.decode_lazily(snapshot_id, self.get_manifest_raw(snapshot_id))

    def get_manifest_pieces(self, snapshot_id: int) -> tuple[
            manifest.Header, Iterator[list[msgspec.Raw]]]:
        """A directory snapshot's entries left encoded, a piece at a time as the iterator
        is advanced (manifest.iter_pieces), for a capture's parent."""
        raw = self.get_manifest_raw(snapshot_id)
        with _unreadable_as_corrupt(snapshot_id):
            return manifest.iter_pieces(raw)

    def get_manifest_streamed(self, snapshot_id: int) -> tuple[
            manifest.Header, manifest.ImageBody | Iterator[list[manifest.Entry]]]:
        """An image's manifest decoded, a directory's entries decoded a piece at a time as
        the iterator is advanced (manifest.iter_entries), which raises SnapshotCorrupt
        where the body turns out damaged: for a verify, which holds no decoded tree."""
        raw = self.get_manifest_raw(snapshot_id)
        with _unreadable_as_corrupt(snapshot_id):
            if manifest.decode_header(raw).state_kind == "directory":
                header, pieces = manifest.iter_entries(raw)
                return header, _pieces_or_corrupt(snapshot_id, pieces)
            header, body = manifest.decode(raw)
        if not isinstance(body, manifest.ImageBody):
            raise SnapshotCorrupt(f"manifest of snapshot {snapshot_id} is unreadable: "
                                  "an image state's manifest holds a directory")
        return header, body

    def decode_lazily(self, snapshot_id: int,
                      raw: bytes) -> tuple[manifest.Header, list[msgspec.Raw]]:
        with _unreadable_as_corrupt(snapshot_id):
            return lazyentries.decode_lazily(raw)

    def delete_manifest(self, snapshot_id: int) -> None:
        self.backend.delete(self.manifest_key(snapshot_id))

"""The parent snapshot read beside a capture's walk: both are in walk order (depth first,
names sorted), so finding a path's parent entry is a merge, not a lookup in a dict of
every path; the parent is decoded one entry at a time as the walk passes its path, not
held decoded (a million entries, ~700 bytes each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import msgspec
import zstandard

from ..repository import manifest
from ..repository.manifest import FILE, Entry

log = logging.getLogger(__name__)


class ParentCursor:
    """The parent snapshot's entries, decoded one at a time as the walk passes their paths;
    and the set of objects they name (what its commit made durable, Repository.durable).
    `vouched` False: its ctimes do not stand for its bytes, so no file is taken from it.
    `dev`: the device its files were on (Header.dev); a capture of another one's takes none."""

    def __init__(self, pieces: Iterable[list[msgspec.Raw]], vouched: bool,
                 dev: int = 0) -> None:
        self._pieces = iter(pieces)  # manifest.iter_pieces: decoded as the walk needs them
        self._raws: list[msgspec.Raw] = []
        self._next = 0
        self._cur: Entry | None = None
        self._key: list[bytes] = []
        self.vouched = vouched
        self.dev = dev
        self.objects: set[bytes] = set()
        self.ended = False  # past its last entry: get() finds nothing more (a full capture)
        self.seen = 0  # entries decoded so far
        self._advance()

    def _advance(self) -> None:
        while self._next >= len(self._raws):
            try:
                self._raws, self._next = next(self._pieces), 0
            except StopIteration:
                self._raws, self._cur, self.ended = [], None, True
                return
            except (ValueError, msgspec.DecodeError, zstandard.ZstdError) as exc:
                # the rest of a damaged parent is not used: its files are read again
                log.warning("parent manifest unreadable past %d entries: %s", self.seen, exc)
                self._raws, self._cur, self.ended = [], None, True
                self._pieces = iter(())
                return
        self.seen += 1
        e = self._cur = manifest.entry(self._raws[self._next])
        self._next += 1
        self._key = e.path.split(b"/")
        self.objects |= e.objects()

    def get(self, path: bytes) -> Entry | None:
        """The parent's regular file at `path`, if any. Paths must be asked in walk order
        (a path asked out of order is simply not found: the file is read again)."""
        if self._cur is None:
            return None  # past the parent's last entry (a full capture: from the start)
        key = path.split(b"/")
        while self._cur is not None and self._key < key:
            self._advance()
        cur = self._cur
        if cur is None or self._key != key or cur.kind != FILE or not self.vouched:
            return None
        return cur

    def finish(self) -> set[bytes]:
        """Every object the parent names (its remaining entries decoded too)."""
        while self._cur is not None:
            self._advance()
        self._raws, self._pieces = [], iter(())
        return self.objects

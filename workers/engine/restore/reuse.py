"""Proving that a file of the current tree already is a snapshot entry: the one check both
restores rely on (the rebuild hard-links such a file into staging, the patch keeps it).

It is security-relevant: the tenant controls the tree, so metadata alone (size, mtime)
proves nothing. In three steps, each on the same open fd (never a path again):
1. candidate(): opened without following symlinks, a regular file with the expected link
   count and exactly the entry's size, mode, owner, mtime and xattrs;
2. trusted(): its content is known without reading it, from facts a tenant cannot forge
   (see statecache.py): the very inode that was captured, or the one a previous restore
   wrote, unchanged since (same device, ino and ctime: an ino names an inode of one
   filesystem only, and a state moved onto another, or a tenant's filesystem image mounted
   at it, can hold another inode of that ino and ctime);
3. else proven_by_content(): chunking it gives the entry's chunk ids, and its ctime did
   not move while it was read.
The xattrs are compared in step 1 even for a trusted inode: the previous restore's record
vouches for content only, and that restore may have written another snapshot's xattrs.
The link count differs by caller: the rebuild links the inode itself into staging, so it
must have one link (a file with others would carry their later changes into the restored
tree); the patch keeps a hard-link group in place, so the group's first name must have as
many links as the snapshot's group has names (links=).

Steps 2 and 3 rest on the sync point (fs/syncpoint.py) the restore takes before it looks
at the tree: a recorded ctime vouches for content only because the capture or restore
that recorded it had taken one, and a file is proven by hashing only if its ctime predates
this restore's own sync point (else a store through a mapping could follow the proof
unseen, and the kept inode, or its record, would lie). On a filesystem where a ctime
vouches for nothing (tmpfs), every file is rewritten.
"""

from __future__ import annotations

import os
import stat
import threading

from ..fs import fsutil
from ..fs.syncpoint import SyncPoint
from ..repository.chunker import fixed_block, fixed_ranges, iter_chunks, make_cdc
from ..repository.manifest import Entry
from ..repository.repository import Repository
from .statecache import Record, content_digest

Candidate = tuple[int, os.stat_result] | None


class ReuseCheck:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.known: Record = {}  # what the previous restore left (statecache)
        self.sync = SyncPoint(0, False)  # the restore's own sync point, set before use
        # st_dev of the tree the manifest's ino/ctime pairs were taken on (Header.dev), or 0:
        # they stand for no content (a manifest whose ctimes do not vouch, or older)
        self.captured_dev = 0
        self.known_dev = 0  # st_dev of the files in `known` (0: none of them trusted)
        self.bytes_read = 0  # current-tree bytes read to prove files identical
        self._digests: dict[bytes, bytes] = {}
        self._zero_ids: dict[int, bytes] = {}  # block size -> the id of that many zeros
        self._local = threading.local()
        self._lock = threading.Lock()

    def zero_block_id(self, block: int) -> bytes:
        """The chunk id of `block` zero bytes (keyed: this repository's)."""
        with self._lock:
            cid = self._zero_ids.get(block)
            if cid is None:
                cid = self._zero_ids[block] = self.repo.chunk_id(bytes(block))
        return cid

    def trusted(self, st: os.stat_result, e: Entry) -> bool:
        """Content known without reading it (see statecache): the captured inode itself,
        unchanged since, or the inode a previous restore wrote, unchanged since."""
        if not self.sync.sound or not st.st_dev:
            return False
        if (st.st_dev, st.st_ino, st.st_ctime_ns) == (self.captured_dev, e.ino, e.ctime_ns):
            return True
        rec = self.known.get(e.path)
        return (rec is not None and st.st_dev == self.known_dev
                and rec[:2] == (st.st_ino, st.st_ctime_ns) and rec[2] == self.digest(e))

    def proven_by_content(self, fd: int, st: os.stat_result, e: Entry) -> bool:
        """Step 3 for a candidate (fd, st): its chunk ids are the entry's, and its ctime is
        still st's after reading (nothing changed it meanwhile)."""
        return self.same_content(fd, e) and os.fstat(fd).st_ctime_ns == st.st_ctime_ns

    def is_snapshots(self, cand: tuple[int, os.stat_result], e: Entry) -> bool:
        """Steps 2 then 3: the candidate holds exactly e (its metadata matched already)."""
        fd, st = cand
        return self.trusted(st, e) or self.proven_by_content(fd, st, e)

    def same_content(self, fd: int, e: Entry) -> bool:
        """Does the open file hold e's content? Hashes it; the callers check that its
        ctime did not move meanwhile."""
        if not self.sync.vouches(os.fstat(fd).st_ctime_ns):
            return False  # changed since the sync point: a proof now would not hold
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = self._local.cdc = make_cdc(self.repo)
        i = 0
        counter = [0]
        try:
            cfg = self.repo.config
            block = fixed_block(cfg, e.size)
            if block:  # a big file: its blocks hashed on every core
                from ..blocks.pipeline import same_blocks  # only a big file loads it

                ranges = list(fixed_ranges(fd, e.size, block))
                starts = {off for off, _ln in ranges}
                zero = self.zero_block_id(block)
                # a block of zeros where the file has a hole: a restore leaves it so
                # (filewriter.py); the hole reads as those zeros
                chunks = [(cid, off) for cid, off in e.chunks
                          if cid != zero or off in starts]
                return same_blocks(fd, ranges, chunks, self.repo.chunk_id, counter)
            for data, off in iter_chunks(fd, e.size, cdc, cfg.chunk_min, counter, 0):
                if i >= len(e.chunks) or e.chunks[i] != (self.repo.chunk_id(data), off):
                    return False
                i += 1
            return i == len(e.chunks)
        finally:
            with self._lock:
                self.bytes_read += counter[0]

    def trusted_in_place(self, st: os.stat_result, e: Entry, links: int = 1) -> bool:
        """Steps 1 and 2 from the lstat alone, for a file the patch keeps where it is (it
        is neither read nor linked, so no fd is needed): a regular file with `links` links
        and the entry's size, mode, owner and mtime, whose inode is trusted. Its xattrs
        need no reading: setxattr moves ctime, so the captured inode still at its ctime
        has the captured xattrs, and a record's digest covers the xattrs its restore wrote
        (statecache.content_digest). Anything else goes through candidate()."""
        # one tuple comparison, not six: the patch asks this of every file it keeps
        return (stat.S_ISREG(st.st_mode)
                and (st.st_nlink, st.st_size, st.st_mode, st.st_uid, st.st_gid,
                     st.st_mtime_ns) == (links, e.size, e.mode, e.uid, e.gid, e.mtime_ns)
                and self.trusted(st, e))

    def candidate(self, cfd: int, name: bytes, e: Entry, links: int = 1) -> Candidate:
        """Step 1: the current file `name` in cfd, opened without following symlinks, if it
        is a regular file with `links` links and exactly the entry's size, mode, owner,
        mtime and xattrs (else None). The caller closes the fd. A file another process holds
        under a lease is not waited for (wait=0): unproven, it is written from the
        snapshot like any changed file, into a new inode, never opened for writing."""
        try:
            fd = fsutil.open_regular(name, cfd, wait=0)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (stat.S_ISREG(st.st_mode) and st.st_nlink == links and st.st_size == e.size
                    and st.st_mode == e.mode and st.st_uid == e.uid and st.st_gid == e.gid
                    and st.st_mtime_ns == e.mtime_ns and fsutil.read_xattrs(fd) == e.xattrs):
                return fd, st
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def digest(self, e: Entry) -> bytes:
        d = self._digests.get(e.path)
        if d is None:
            d = self._digests[e.path] = content_digest(e)
        return d

"""The file writer: one file of a snapshot created and filled in a directory of our own,
every chunk checked against its id while reading, with its metadata; or a current file
proven identical (reuse.py) put in its place.

A proven file is hard-linked instead of being rewritten: the fd that was checked is the
one linked (linkat via /proc/self/fd), so there is no race between check and link; a live
restore copies it into a new inode instead (copy_reused). Metadata is applied to files as
they are written: chown, then chmod so setuid/setgid survive, then xattrs so
security.capability survives, then times. The tree around the files (directories, special
entries, hard links, the writer processes' shares) is treewriter.py's.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .. import tuning
from ..fs import fsutil
from ..progress import Progress
from ..repository.chunker import fixed_block, fixed_ranges
from ..repository.manifest import FILE, Entry
from ..repository.packreader import PackCache
from ..repository.repository import Repository
from .metadata import drop_inherited_acl
from .reuse import Candidate, ReuseCheck
from .statecache import WrittenRecord


class FileWriter:
    def __init__(self, repo: Repository, snapshot_id: int, progress: Progress,
                 linked: set[bytes]) -> None:
        self.repo = repo
        self.sid = snapshot_id
        self.progress = progress
        self.bytes_written = 0
        self.files_reused = 0
        self.files_written = 0
        self._lock = threading.Lock()
        self.check = ReuseCheck(repo)
        self.packs = PackCache(repo, snapshot_id)
        # (ino, ctime, digest) of each file as written: the trusted record's source
        self.written = WrittenRecord(linked)
        self.reused: list[Entry] = []  # current files linked into staging
        # owner of the files we create in staging, when known (chown is skipped for them)
        self._new_owner: tuple[int, int] | None = None
        # Files are created with their final permission bits where nothing after the
        # create could change them (create_mode): a writer process, whose umask is 0
        # (writerproc.py), sets it; one fchmod less per file.
        self.modes_at_create = False
        # A live restore (the server runs) copies a verified current file instead of
        # linking it: a process that has it open or mapped keeps writing into the old
        # inode, never into the restored tree.
        self.copy_reused = False

    def creating_in(self, fd: int) -> None:
        """New files will be created in directory fd: under a setgid directory they take its
        group, else ours (and chown is skipped for files that should be ours). Under a
        default ACL (inherited from the state's parent) the owner is not taken for known
        either: a file made there gets the ACL's bits, not its create mode's, so every file
        is chowned and chmodded."""
        setgid = os.fstat(fd).st_mode & stat.S_ISGID
        known = not setgid and not fsutil.has_default_acl(fd)
        self._new_owner = (os.geteuid(), os.getegid()) if known else None

    def assume_owner(self, owner: tuple[int, int] | None) -> None:
        """The owner new files get where they are created (a worker process's files)."""
        self._new_owner = owner

    def write_file(self, dfd: int | None, name: bytes, e: Entry, fd: int | None) -> None:
        """Create (in dfd) or fill (fd, closed here) one file of the snapshot, verified."""
        if fd is not None and e.pack:
            self._write_packed(fd, e)
        else:
            self._file(dfd, name, e, fd, None)

    def _write_packed(self, fd: int, e: Entry) -> None:
        """A small file (its one chunk in a tiny pack: e.pack) into its new file fd, closed
        here: what _file does for it, on a short path of its own (most files of a tree;
        a restore writer's Python per file is most of its CPU beside the creates)."""
        try:
            data = self.packs.read(e)  # checked against its chunk id
            off = e.chunks[0][1]
            n = os.pwrite(fd, data, off)
            if n != len(data):
                fsutil.write_full(fd, memoryview(data)[n:], off + n)
            if off + len(data) != e.size:  # a hole ends it
                os.ftruncate(fd, e.size)
            self.progress.add(len(data))
            self.progress.check()
            st = self._finish(fd, e)
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_written += len(data)
            self.files_written += 1
            self.written.add(e, st.st_ino, st.st_ctime_ns)

    def write_files(self, files: list[tuple[int, Entry]]) -> None:
        """Write the given new files (created, empty, open for writing) with the pool."""
        with ThreadPoolExecutor(tuning.RESTORE_THREADS, thread_name_prefix="restore") as pool:
            futures = [pool.submit(self._file, None, b"", e, fd, None) for fd, e in files]
        for f in futures:
            f.result()

    def _file(self, dfd: int | None, name: bytes, e: Entry, fd: int | None,
              cand: Candidate, proven: bool = False) -> None:
        """Reuse the candidate if it is proven (trusted, or now by hashing) to hold e's
        content, else write e from the snapshot."""
        if (cand is not None and dfd is not None
                and (proven or self.check.proven_by_content(*cand, e))
                and self._link_reused(cand, dfd, name, e)):
            return
        if fd is None:
            assert dfd is not None
            fd = os.open(name, fsutil.CREATE_FLAGS, self.create_mode(e), dir_fd=dfd)
        try:
            sliced = {i: (pack, o, n) for i, pack, o, n in e.slices}
            block = fixed_block(self.repo.config, e.size)
            if block and not e.pack:
                # A big file (disk image...): its fixed blocks fetched, verified and written
                # on every core, as an image state's (blocks/pipeline.py); sized first, so
                # the writes fill it and its holes stay holes. Imported here: a restore
                # without big files never loads the pipeline (nor directio, the pool).
                from ..blocks.pipeline import write_blocks

                os.ftruncate(fd, e.size)
                # The file is new (every caller's fd was created empty): it reads as zeros
                # wherever nothing is written, so a whole block of zeros (its id says so: a
                # disk image's free space, 67 of the bench image's 300 blocks) is neither
                # read nor written, only allocated as it was (an image made not to run out
                # of space keeps its space): an unwritten extent, which SEEK_DATA shows as
                # a hole, and the reuse check takes for those zeros (reuse.py).
                zero = self.check.zero_block_id(block)
                todo = [i for i, (cid, _off) in enumerate(e.chunks) if cid != zero]
                _allocate(fd, [off for cid, off in e.chunks if cid == zero], block)
                written = write_blocks(fd, [e.chunks[i] for i in todo], block,
                                       lambda j, cid, buf: self._chunk_into(
                                           e, todo[j], cid, sliced, buf),
                                       self.progress)
                self.progress.add((len(e.chunks) - len(todo)) * block)
            else:
                written = self._write_chunks(fd, e, sliced)
            st = self._finish(fd, e)
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_written += written
            self.files_written += 1
            self.written.add(e, st.st_ino, st.st_ctime_ns)

    def prefetch(self, entries: Iterable[Entry]) -> None:
        """Read ahead the packs these files' chunks are read from (expected in about this
        order: packfetch.py), all but big files' blocks of zeros, which are never read
        (_file): a read planned and never made would hold its frame to the end."""
        plan: list[tuple[bytes, int, int]] = []
        for e in entries:
            if e.kind != FILE:
                continue
            if e.pack:
                plan.append((e.pack, e.pack_off, e.pack_len))
            block = 0 if e.pack else fixed_block(self.repo.config, e.size)
            zero = self.check.zero_block_id(block) if block else b""
            plan.extend((pack, off, ln) for i, pack, off, ln in e.slices
                        if e.chunks[i][0] != zero)
        self.packs.prefetch_members(plan)

    def _write_chunks(self, fd: int, e: Entry,
                      sliced: dict[int, tuple[bytes, int, int]]) -> int:
        """Write e's chunks into the new file fd one after the other; returns bytes."""
        written = end = 0
        for i, (cid, off) in enumerate(e.chunks):
            data = self.packs.read(e) if e.pack else self._chunk(e, i, cid, sliced)
            fsutil.write_full(fd, data, off)
            written += len(data)
            end = max(end, off + len(data))
            self.progress.add(len(data))
            self.progress.check()
        if end != e.size:  # a new file: its size is its data's end unless a hole ends it
            os.ftruncate(fd, e.size)
        return written

    def _chunk(self, e: Entry, i: int, cid: bytes,
               sliced: dict[int, tuple[bytes, int, int]]) -> bytes:
        """Chunk i (id cid) of e, verified: from its tiny pack (a slice) or its object."""
        if i in sliced:
            return self.packs.read_member(*sliced[i], cid, e.path)
        return self.repo.read_chunk_for(self.sid, cid)

    def _chunk_into(self, e: Entry, i: int, cid: bytes,
                    sliced: dict[int, tuple[bytes, int, int]], buf: mmap.mmap) -> bytes | int:
        """_chunk(), or (a big chunk of a local pack) its length, its bytes put into buf
        (PackCache.read_member_into)."""
        if i in sliced:
            return self.packs.read_member_into(*sliced[i], cid, e.path, buf)
        return self.repo.read_chunk_for(self.sid, cid)

    def _final_at_create(self, e: Entry) -> bool:
        """Whether e's file is created with its permission bits (modes_at_create): no chown
        to follow (a chown clears setuid/setgid) and no setuid/setgid/sticky bit (which a
        create may drop)."""
        return (self.modes_at_create and (e.uid, e.gid) == self._new_owner
                and not e.mode & 0o7000)

    def create_mode(self, e: Entry) -> int:
        """The mode to create e's file with; else 0600, and a chmod once its owner is set."""
        return stat.S_IMODE(e.mode) if self._final_at_create(e) else 0o600

    def _finish(self, fd: int, e: Entry) -> os.stat_result:
        """A new file's metadata, in the order that keeps setuid bits and capabilities
        (its fd made with create_mode(e))."""
        owned = (e.uid, e.gid) == self._new_owner
        if not owned:
            os.fchown(fd, e.uid, e.gid)
        if not (owned and self.modes_at_create and not e.mode & 0o7000):  # _final_at_create
            os.fchmod(fd, stat.S_IMODE(e.mode))
        if self._new_owner is None:  # maybe made under a default ACL (creating_in)
            drop_inherited_acl(fd, e.xattrs)
        if e.xattrs:
            fsutil.write_xattrs(fd, e.xattrs)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        return os.fstat(fd)  # final: renaming the tree's root does not touch its files

    def _link_reused(self, cand: tuple[int, os.stat_result], dfd: int, name: bytes,
                     e: Entry) -> bool:
        """Put the very inode that was checked (via its fd) into staging: hard-linked, or
        for a live restore copied into a new inode (see copy_reused)."""
        fd, st = cand
        st2 = os.fstat(fd)
        if (st2.st_mtime_ns, st2.st_ctime_ns, st2.st_size) != (
                st.st_mtime_ns, st.st_ctime_ns, st.st_size):
            return False
        if self.copy_reused:
            return self._copy_reused(fd, st, dfd, name, e)
        os.link(b"/proc/self/fd/%d" % fd, name, dst_dir_fd=dfd, follow_symlinks=True)
        self.progress.add(e.size)
        with self._lock:
            self.files_reused += 1
            self.reused.append(e)
        return True

    def _copy_reused(self, src: int, st: os.stat_result, dfd: int, name: bytes,
                     e: Entry) -> bool:
        """Copy a verified current file into a new inode of staging, data extents only, so
        holes stay holes. A store into it during the copy moves its ctime (the restore's
        sync point): then the copy is dropped and the file is written from the snapshot.
        Plain reads and writes: copy_file_range on ext4 was 1.8x slower for small files
        (2,000 x 100 KiB: 5.8 s against 3.3 s, machine shared); a big file's blocks are
        copied by several threads (blocks/pipeline.py), as a restore from the snapshot
        writes them, else a live restore onto a server holding a disk image took longer
        than a full restore of it."""
        out = os.open(name, fsutil.CREATE_FLAGS, self.create_mode(e), dir_fd=dfd)
        counted = 0
        try:
            block = fixed_block(self.repo.config, e.size)
            if block:  # a big file: its blocks copied on every core, O_DIRECT
                from ..blocks.pipeline import copy_ranges

                os.ftruncate(out, e.size)
                counted = copy_ranges(src, out, fixed_ranges(src, st.st_size, block), block,
                                      self.progress)
            else:
                for off, ln in fsutil.data_extents(src, st.st_size):
                    for pos in range(off, off + ln, tuning.COPY_BLOCK):
                        n = min(tuning.COPY_BLOCK, off + ln - pos)
                        fsutil.write_full(out, fsutil.pread_full(src, n, pos), pos)
                os.ftruncate(out, e.size)
            st2 = os.fstat(src)
            if (st2.st_mtime_ns, st2.st_ctime_ns, st2.st_size) != (
                    st.st_mtime_ns, st.st_ctime_ns, st.st_size):
                os.unlink(name, dir_fd=dfd)
                return False
            new = self._finish(out, e)
        except BaseException:
            os.close(out)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
            raise
        os.close(out)
        self.progress.add(e.size - counted)
        with self._lock:
            self.files_reused += 1
            self.written.add(e, new.st_ino, new.st_ctime_ns)
        return True


def _allocate(fd: int, offsets: list[int], block: int) -> None:
    """Allocate `block` bytes at each of these ascending offsets (runs of neighbours at
    once) without writing them: they read as zeros."""
    runs: list[list[int]] = []  # [start, end] of each run
    for off in offsets:
        if runs and runs[-1][1] == off:
            runs[-1][1] += block
        else:
            runs.append([off, off + block])
    for start, end in runs:
        os.posix_fallocate(fd, start, end - start)

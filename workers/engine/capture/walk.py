"""The capture's first pass (Walker): every entry below the root lstat-ed through
directory fds, never following a symlink, into the tree held encoded (tree.py); the files
unchanged since the parent snapshot (parent.py) taken from it, the rest handed to the
second pass (archiver.py) directory by directory as the walk goes on.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import tuning
from ..fs import fsutil
from ..repository.manifest import BLK, CHR, DIR, FIFO, FILE, HARDLINK, SOCK, SYMLINK, Entry

if TYPE_CHECKING:
    from ..progress import Progress
    from ..repository.repository import Repository
    from .parent import ParentCursor
    from .tree import EncodedTree

_S_IFMT, _S_IFREG, _S_IFDIR = 0o170000, stat.S_IFREG, stat.S_IFDIR


class Walker:
    """The capture's first pass: lstat every entry below the root through directory fds
    (O_NOFOLLOW: never a symlink), recording metadata, xattrs, symlink targets, device
    numbers and hard-link groups into the tree, and taking each regular file unchanged
    since the parent snapshot from the parent's entry. What is left to read is the second
    pass's (archiver.py): `on_dir` gets each directory's path, inode and the tree indexes
    and names of its files to read whole once the walk has finished listing it (its
    subdirectories first), so reading may start while the walk goes on; `on_big` gets each
    big file (read in blocks) as soon as it is walked, with its directory's fd and its
    name, so the big file's reads and compression overlap the rest of the walk and the
    small files. A mount point inside the state is kept as a directory, its contents not
    captured."""

    def __init__(self, repo: Repository, tree: EncodedTree, parent: ParentCursor,
                 progress: Progress, warnings: list[str], root_dev: int,
                 mounts: set[tuple[int, int]], start_readers: Callable[[], None],
                 on_dir: Callable[[bytes, int, array[int], list[bytes]], None],
                 on_big: Callable[[int, bytes, int], None]) -> None:
        self.repo = repo
        self.tree = tree
        self.parent = parent
        self.progress = progress
        self.warnings = warnings
        self.total = 0  # bytes of every regular file
        self.reused = 0  # bytes of the files unchanged since the parent
        self._root_dev = root_dev
        self._mounts = mounts
        self._links: dict[tuple[int, int], bytes] = {}
        self._walk_bytes = 0  # bytes of files the walk saw that the parent cannot vouch for
        # called once the files to read are known to make a big capture
        self._start_readers = start_readers
        self._readers_started = False
        self._big_file = repo.config.big_file  # chunker.fixed_block: read in blocks
        self._on_dir = on_dir
        self._on_big = on_big

    def walk(self, fd: int, rel: bytes) -> None:
        self.progress.poll()
        st = os.fstat(fd)
        self.tree.append(Entry(path=rel, kind=DIR, mode=st.st_mode, uid=st.st_uid,
                               gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                               xattrs=fsutil.read_xattrs(fd)))
        if rel and (st.st_dev != self._root_dev or (st.st_dev, st.st_ino) in self._mounts):
            # A mount point inside the state (e.g. /proc of a container): keep the
            # directory, not the other filesystem.
            self.warnings.append(f"{fsutil.shown(rel)}: mount point, contents not captured")
            return
        # indexes of its files to read whole (not unchanged since the parent)
        files = array("q")
        names: list[bytes] = []  # their names, in the same order
        dir_ino = st.st_ino
        parent, append = self.parent, self.tree.append
        for name in _names(fd):
            path = rel + b"/" + name if rel else name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between readdir and lstat: it is simply not there
            mode = st.st_mode
            fmt = mode & _S_IFMT
            if fmt == _S_IFREG and st.st_nlink == 1 and parent.ended:
                # The common case, on its own short path (the walk's thread is the capture's
                # critical path): a regular file with one link and no parent entry to take
                # it from; its reader lists its xattrs.
                size = st.st_size
                ent = Entry(path, FILE, mode, st.st_uid, st.st_gid, st.st_mtime_ns, size,
                            st.st_ctime_ns, st.st_ino)
                self.total += size
                idx = append(ent, pending=True)
                if size >= self._big_file:
                    self._on_big(fd, name, idx)  # read in blocks, not by the readers
                    continue
                files.append(idx)
                names.append(name)
                self._walk_bytes += size
                if not self._readers_started and (
                        self._walk_bytes >= tuning.CAPTURE_PROCESS_THRESHOLD):
                    self._readers_started = True
                    self._start_readers()
                continue
            if fmt == _S_IFDIR:
                try:
                    sub = os.open(name, fsutil.DIR_FLAGS, dir_fd=fd)
                except OSError as err:  # replaced by a symlink or removed meanwhile
                    fsutil.check_exhausted(err)
                    self.warnings.append(f"{fsutil.shown(path)}: changed during capture ({err})")
                    continue
                try:
                    self.walk(sub, path)
                finally:
                    os.close(sub)
                continue
            ent = Entry(path=path, kind=FILE, mode=mode, uid=st.st_uid, gid=st.st_gid,
                        mtime_ns=st.st_mtime_ns)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                primary = self._links.get(key)
                if primary is not None:
                    ent.kind, ent.target = HARDLINK, primary
                    self.tree.append(ent)
                    continue
            p = self.parent.get(path) if stat.S_ISREG(mode) else None
            try:
                if p is not None and p.ctime_ns and (p.ino, p.ctime_ns) == (st.st_ino,
                                                                            st.st_ctime_ns):
                    ent.xattrs = p.xattrs  # setting/removing an xattr changes ctime: unchanged
                elif not stat.S_ISREG(mode):
                    ent.xattrs = fsutil.read_xattrs(fsutil.proc_path(fd, name))
                # else a file to read: its reader lists them on the descriptor it reads
                # (no lookup through /proc per file here); a change between the walk and
                # the read moves ctime, so the capture vouches for nothing then (_vouch)
                if stat.S_ISLNK(mode):
                    ent.target = os.fsencode(os.readlink(name, dir_fd=fd))
            except FileNotFoundError:
                continue  # vanished after its lstat: not there, as if gone before
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise  # a real error (EIO...) fails the capture
                # readlink of what is no longer a symlink: replaced since its lstat
                self.warnings.append(f"{fsutil.shown(path)}: changed during capture ({err}); "
                                     "not captured")
                continue
            if st.st_nlink > 1:
                self._links[key] = path  # only once it is surely an entry: links name it
            pending = big = False  # a file to read: final once read (EncodedTree.put)
            if stat.S_ISREG(mode):
                ent.size, ent.ctime_ns, ent.ino = st.st_size, st.st_ctime_ns, st.st_ino
                self.total += st.st_size
                if self._reuse(ent, p):
                    self.reused += st.st_size
                elif st.st_size >= self._big_file:
                    pending = big = True  # read in blocks (on_big), not by the readers
                else:
                    files.append(len(self.tree))
                    names.append(name)
                    pending = True
                    self._walk_bytes += st.st_size
                    if not self._readers_started and (
                            self._walk_bytes >= tuning.CAPTURE_PROCESS_THRESHOLD):
                        self._readers_started = True
                        self._start_readers()
            elif stat.S_ISLNK(mode):
                ent.kind, ent.size = SYMLINK, st.st_size
            else:
                ent.kind = (FIFO if stat.S_ISFIFO(mode) else CHR if stat.S_ISCHR(mode)
                            else BLK if stat.S_ISBLK(mode) else SOCK)
                ent.rdev = st.st_rdev
            idx = self.tree.append(ent, pending=pending)
            if big:
                self._on_big(fd, name, idx)
        self._on_dir(rel, dir_ino, files, names)

    def _reuse(self, e: Entry, p: Entry | None) -> bool:
        """Take a regular file's data from the parent's entry p when the file is unchanged
        since (same size, mtime, and the inode and ctime its capture vouched for)."""
        if (p is None or p.kind != FILE or p.size != e.size or p.mtime_ns != e.mtime_ns
                or p.ctime_ns != e.ctime_ns or p.ino != e.ino):
            return False
        if not (self.repo.has_chunk(p.pack) if p.pack
                else all(self.repo.has_chunk(cid) for cid in p.objects())):
            return False  # parent data went missing: read the file again
        e.chunks, e.pack, e.pack_off, e.pack_len = p.chunks, p.pack, p.pack_off, p.pack_len
        e.slices = p.slices
        return True


def _names(fd: int) -> list[bytes]:
    """The names in the directory open at fd, sorted: listed through its /proc/self/fd
    link (that very directory, whatever its path holds now), whose names come as bytes,
    not by scandir on the fd, which made a DirEntry and a str of each name and had it
    encoded back (fsutil.iter_names), once per entry of the walk, on its thread."""
    try:
        names = os.listdir(b"/proc/self/fd/%d" % fd)
    except OSError as err:
        fsutil.check_exhausted(err)
        raise
    names.sort()
    return names

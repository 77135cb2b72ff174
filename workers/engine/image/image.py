"""Image state (one large regular file or block device): capture and crash-safe restore.

Capture reads fixed blocks (1 MiB by default, block id = keyed BLAKE3 like any chunk);
all-zero blocks and the holes of a sparse file are recorded as absent, never stored. The
blocks go into packs (packwriter.py: each block its own frame, ~32 MiB a pack), so a
2 GiB image is ~64 PUTs on S3, not 2,048; ImageBody.slices records where each packed
block is. A block stored already (in a pack, or as an object of its own, as engines
before manifest version 4 stored every block) is not stored again.

Restore compares the current image block by block with the snapshot and writes only the
blocks that differ, through a redo journal `<parent>/.<base>.restore-journal`:
  1. every differing block is fetched (and verified against its id) and appended to the
     journal; then fsync, then a trailer (record count + b"DONE") and fsync again (the
     differing blocks are found first, by reading the current image, so their packs are
     read ahead with coalesced ranged GETs: packreader.py, packfetch.py);
  2. the records are applied in place (zero blocks: punch a hole in a file, zeros on a
     device), the file is truncated to the image size, fsync;
  3. the journal is deleted.
recover() re-applies a journal that has its trailer (idempotent) and discards one that
does not, so a killed restore leaves the old image or the new one, never a mix. Corrupt
data is detected in step 1, before the image is touched. A missing image is created
under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator

from .. import tuning
from ..blocks.pipeline import pipelined, read_blocks, write_blocks
from ..fs import fsutil, removal, statepath
from ..fs.statepath import split_state
from ..fs.syncpoint import sync_point
from ..model import RestoreResult, StateInvalid, TransientEngineError
from ..progress import Progress
from ..repository.manifest import ImageBody
from ..repository.packreader import PackCache
from ..repository.packwriter import TinyPacker
from ..repository.repository import Repository

J_MAGIC = b"SNAPJRN1"
J_REC = struct.Struct(">QIB")  # block index, length, kind (0 zero, 1 data)
J_TRAILER = struct.Struct(">Q4s")


def _open_image(path: str, flags: int) -> tuple[int, int, bool]:
    """(fd, size, is_block_device) of the image at path, opened with flags; refuses a
    symlink in any component of the path (statepath.open_path) and anything at the path but
    a regular file or a block device, never opening it (_reopen_image)."""
    try:
        pfd = statepath.open_path(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise StateInvalid(f"image {path} cannot be opened (symlinks are refused): "
                           f"{e.strerror}") from e
    return _reopen_image(pfd, path, flags)


def _reopen_image(pfd: int, path: str, flags: int) -> tuple[int, int, bool]:
    """The image an O_PATH descriptor pins, opened for I/O only once fstat shows it is a
    regular file or a block device (closes pfd). Opening the path itself opened whatever
    was there: on a fifo (an image's parent may be a tree its tenant controls) the open
    blocked the capture, the restore and recover() for good, and on a character device it
    ran the driver's open; the /proc/self/fd magic link reopens exactly the inode checked."""
    try:
        st = os.fstat(pfd)
        if stat.S_ISLNK(st.st_mode):
            raise StateInvalid(f"image {path} is a symlink (symlinks are refused)")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise StateInvalid(f"image {path} is neither a regular file nor a block device")
        proc = b"/proc/self/fd/%d" % pfd
        if stat.S_ISREG(st.st_mode):  # a lease: never a wait of lease-break-time
            try:
                fd = fsutil.open_unleased(proc, flags | fsutil.REOPEN_FLAGS)
            except OSError as e:
                if e.errno != errno.EWOULDBLOCK:
                    raise
                raise TransientEngineError(f"opening image {path} failed: {e.strerror}") from e
        else:  # no lease on a device; O_NONBLOCK is O_NDELAY to some drivers
            fd = os.open(proc, flags | fsutil.REOPEN_FLAGS)
    finally:
        os.close(pfd)
    if stat.S_ISREG(st.st_mode):
        return fd, st.st_size, False
    return fd, os.lseek(fd, 0, os.SEEK_END), True


def _blocks_with_data(fd: int, size: int, bs: int, blockdev: bool) -> Iterator[int]:
    """Indexes of blocks that may hold data (blocks entirely in holes are skipped)."""
    extents = [(0, size)] if blockdev else fsutil.data_extents(fd, size)
    last = -1
    for off, ln in extents:
        for i in range(max(off // bs, last + 1), (off + ln + bs - 1) // bs):
            last = i
            yield i


def capture_image(repo: Repository, path: str, parent: ImageBody | None,
                  progress: Progress) -> tuple[ImageBody, int, list[str], int]:
    """Returns (body, stored bytes, warnings, bytes read)."""
    bs = repo.config.block_size
    fd, size, blockdev = _open_image(path, os.O_RDONLY)
    warnings: list[str] = []
    try:
        sync = sync_point(fd)  # from here on any change moves ctime (see syncpoint.py)
        st = os.fstat(fd)
        progress.total = size
        if (parent is not None and not blockdev and parent.size == size
                and parent.block_size == bs
                and (parent.mtime_ns, parent.ctime_ns, parent.ino)
                == (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                and all(repo.has_chunk(c) for c in parent.objects())):
            progress.add(size)
            return ImageBody(size=size, block_size=bs, blocks=parent.blocks,
                             mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                             ino=st.st_ino, slices=parent.slices), 0, warnings, 0

        def ranges(cur: int) -> Iterator[tuple[int, int]]:
            n = size if blockdev else cur  # a block device's st_size is 0
            return ((i * bs, min(bs, n - i * bs))
                    for i in _blocks_with_data(fd, n, bs, blockdev))

        # read directly (no page-cache cost), zero blocks left out, hashed, compressed (on
        # the pipeline's threads), packed; the packs are stored by the packer's thread
        packer = TinyPacker(repo, tuning.TINY_PACK)
        try:
            res = read_blocks(fd, ranges, bs, packer.store_block, progress, skip_zero=True,
                              stable=not blockdev)
            packer.finish()
            blocks = sorted((off // bs, cid) for cid, off in res.blocks)
            slices = packer.slices_of([cid for _i, cid in blocks])
            stored = res.stored + packer.stored_bytes
        finally:
            packer.close()
        if res.changed:
            warnings.append(f"{path}: changed while being read "
                            f"{tuning.READ_RETRIES + 1} times; stored as last read")
        st = res.st
        if not blockdev:
            size = st.st_size
        body = ImageBody(size=size, block_size=bs, blocks=blocks, mtime_ns=st.st_mtime_ns,
                         ctime_ns=sync.recorded(st.st_ctime_ns), ino=st.st_ino, slices=slices)
        return body, stored, warnings, res.nread
    finally:
        os.close(fd)


def _journal_name(base: bytes) -> bytes:
    return b"." + base + b".restore-journal"


def _open_journal(parent_fd: int, jpath: bytes) -> int | None:
    """The journal, opened if it is a regular file a restore of ours can have written:
    this process's user's, mode 0600 (a fifo or a directory planted under its name is no
    journal of ours, and is never opened; nor is a file the tenant of the image's parent
    wrote: applied, it wrote the tenant's blocks into an image it may not write itself, a
    root-owned 0600 disk in its directory); None when there is none such."""
    try:
        fd, st = fsutil.open_regular_stat(jpath, parent_fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL, errno.ELOOP):
            return None
        raise
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        return None  # planted: removed with the other leftovers, never applied
    return fd


def _apply_journal(jfd: int, fd: int) -> int:
    """Apply a complete journal (open at jfd, closed here) to the image open at fd; returns
    bytes written, -1 for an incomplete journal. Idempotent."""
    with os.fdopen(jfd, "rb") as j:
        if j.read(8) != J_MAGIC:
            return -1
        size, bs, is_dev = struct.unpack(">QIB", j.read(13))
        j.seek(-J_TRAILER.size, os.SEEK_END)
        count, tag = J_TRAILER.unpack(j.read(J_TRAILER.size))
        if tag != b"DONE":
            return -1
        j.seek(21)
        written = 0
        for _ in range(count):
            i, ln, kind = J_REC.unpack(j.read(J_REC.size))
            if kind == 1:
                fsutil.write_full(fd, j.read(ln), i * bs)
                written += ln
            elif is_dev:
                fsutil.write_full(fd, bytes(ln), i * bs)
            else:
                fsutil.punch_hole(fd, i * bs, ln)
        if not is_dev:
            os.ftruncate(fd, size)
        os.fsync(fd)
    return written


def image_cleanup(parent_fd: int, base: bytes) -> None:
    jname = _journal_name(base)
    jfd = _open_journal(parent_fd, jname)
    if jfd is not None:
        try:
            pfd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            fd, _size, _dev = _reopen_image(pfd, os.fsdecode(base), os.O_WRONLY)
        except FileNotFoundError:
            os.close(jfd)  # no image to apply it to: discarded with the leftovers
        except BaseException:
            os.close(jfd)
            raise
        else:
            try:
                _apply_journal(jfd, fd)  # -1 (incomplete): simply discarded
            finally:
                os.close(fd)
    prefix = b"." + base + b".restore-"
    left = [n for n in fsutil.iter_names(parent_fd) if n.startswith(prefix)]
    for n in left:  # a file, or whatever was planted under such a name
        removal.remove_tree(parent_fd, n, set())
    if left:
        os.fsync(parent_fd)


def restore_image(repo: Repository, sid: int, body: ImageBody, path: str,
                  progress: Progress) -> RestoreResult:
    parent_path, base = split_state(path)
    bs = body.block_size
    want = {i: k for k, (i, _cid) in enumerate(body.blocks)}  # block -> its k in body.blocks
    progress.total = body.size
    parent_fd = statepath.open_path(parent_path)
    try:
        image_cleanup(parent_fd, base)
        try:
            os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return _create(repo, sid, body, parent_fd, base, progress)
        # read and written through one descriptor: the journal goes to the very inode the
        # blocks were compared on, not to whatever the path holds by then
        fd, cur_size, is_dev = _open_image(path, os.O_RDWR)
        if is_dev and cur_size < body.size:
            os.close(fd)
            raise StateInvalid(f"block device {path} is smaller than the snapshot image")
        jname = _journal_name(base)
        count = 0
        try:
            try:
                # read back through its own descriptor: the name is in the tenant's reach
                jfd = os.open(jname, (fsutil.CREATE_FLAGS & ~os.O_WRONLY) | os.O_RDWR, 0o600,
                              dir_fd=parent_fd)
                rfd = os.dup(jfd)
            except BaseException:
                os.close(fd)
                raise
            try:
                with os.fdopen(jfd, "wb") as j:
                    j.write(J_MAGIC + struct.pack(">QIB", body.size, bs, int(is_dev)))
                    todo = _differing(repo, body, want, fd, cur_size, is_dev, progress)
                    blocks = _Blocks(repo, sid, body)
                    try:
                        blocks.plan([k for _i, _ln, k in todo if k >= 0])

                        def fetch(rec: tuple[int, int, int]) -> tuple[int, int, bytes | None]:
                            i, ln, k = rec
                            return i, ln, None if k < 0 else blocks.read(k)

                        def journal(res: tuple[int, int, bytes | None]) -> None:
                            i, ln, new = res
                            if new is None:
                                j.write(J_REC.pack(i, ln, 0))
                            else:
                                j.write(J_REC.pack(i, len(new), 1))
                                j.write(new)

                        pipelined(todo, fetch, journal)  # fetched on every core, in order
                    finally:
                        blocks.close()
                    count = len(todo)
                    j.flush()
                    os.fsync(j.fileno())
                    j.write(J_TRAILER.pack(count, b"DONE"))
                    j.flush()
                    os.fsync(j.fileno())
            except BaseException:
                os.close(rfd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(jname, dir_fd=parent_fd)
                raise
            # complete and durable: if applying it fails, recovery applies it again
            os.lseek(rfd, 0, os.SEEK_SET)
            written = _apply_journal(rfd, fd)
        finally:
            os.close(fd)
        os.unlink(jname, dir_fd=parent_fd)
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)
    progress.finish()
    return RestoreResult(snapshot_id=sid, bytes_written=written, files_reused=0,
                         files_written=1 if count else 0)


def _differing(repo: Repository, body: ImageBody, want: dict[int, int], fd: int,
               cur_size: int, is_dev: bool, progress: Progress) -> list[tuple[int, int, int]]:
    """(block, length, its k in body.blocks or -1 for a zero block) of every block of the
    current image (open at fd) that differs from the snapshot's, holes read as zeros."""
    bs = body.block_size
    cur = set(_blocks_with_data(fd, cur_size, bs, is_dev))
    zero = bytes(bs)
    todo: list[tuple[int, int, int]] = []
    for i in range((body.size + bs - 1) // bs):
        ln = min(bs, body.size - i * bs)
        have: bytes | None = None
        if i in cur and i * bs < cur_size:
            data = fsutil.pread_full(fd, ln, i * bs)
            if len(data) < ln or data != zero[:ln]:
                have = repo.chunk_id(data) if len(data) == ln else b"?"
        progress.add(ln)
        progress.check()
        k = want.get(i)
        if have != (None if k is None else body.blocks[k][1]):
            todo.append((i, ln, -1 if k is None else k))
    return todo


def _create(repo: Repository, sid: int, body: ImageBody, parent_fd: int, base: bytes,
            progress: Progress) -> RestoreResult:
    tmp = b"." + base + b".restore-%d" % sid
    fd = os.open(tmp, fsutil.CREATE_FLAGS, 0o600, dir_fd=parent_fd)
    try:
        # Sized first: the block writes below then fill holes inside the file instead of
        # extending it (for O_DIRECT, extending writes serialize on the inode).
        os.ftruncate(fd, body.size)
        written = _write_blocks(repo, sid, body, fd, progress)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        os.fsync(parent_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=parent_fd)
        raise
    progress.finish()
    return RestoreResult(snapshot_id=sid, bytes_written=written, files_reused=0, files_written=1)


def _write_blocks(repo: Repository, sid: int, body: ImageBody, fd: int,
                  progress: Progress) -> int:
    """Fetch, verify and write every stored block, on every core (blocks/pipeline.py), the
    packs read ahead."""
    bs = body.block_size
    blocks = _Blocks(repo, sid, body)
    try:
        blocks.plan(range(len(body.blocks)))
        return write_blocks(fd, [(cid, i * bs) for i, cid in body.blocks], bs,
                            lambda k, _cid, buf: blocks.read_into(k, buf), progress)
    finally:
        blocks.close()


class _Blocks:
    """The verified bytes of an image's blocks, by their k in body.blocks: a packed one
    (body.slices) through a PackCache and its read-ahead, any other as an object of its
    own (an image captured before manifest version 4)."""

    def __init__(self, repo: Repository, sid: int, body: ImageBody) -> None:
        self.repo, self.sid, self.blocks = repo, sid, body.blocks
        self.sliced = {k: (pack, off, ln) for k, pack, off, ln in body.slices}
        self.packs = PackCache(repo, sid)

    def plan(self, ks: Iterable[int]) -> None:
        """These blocks will be read, in about this order: read their packs ahead, from a
        remote store (on file:// each block's frame is read on demand, as cheap as its
        object was: read-ahead held a pack read whole and decoded, 248 MiB peak RSS for a
        256 MiB image restore instead of 42 MiB, for no speed)."""
        if self.repo.backend.remote:
            self.packs.prefetch_members(
                [m for k in ks if (m := self.sliced.get(k)) is not None],
                tuning.IMAGE_FETCH_BYTES)

    def read(self, k: int) -> bytes:
        i, cid = self.blocks[k]
        hit = self.sliced.get(k)
        if hit is None:
            return self.repo.read_chunk_for(self.sid, cid)
        return self.packs.read_member(*hit, cid, b"block %d" % i)

    def read_into(self, k: int, buf: mmap.mmap) -> bytes | int:
        """read(k), or its length, its bytes put into buf (PackCache.read_member_into)."""
        i, cid = self.blocks[k]
        hit = self.sliced.get(k)
        if hit is None:
            return self.repo.read_chunk_for(self.sid, cid)
        return self.packs.read_member_into(*hit, cid, b"block %d" % i, buf)

    def close(self) -> None:
        self.packs.close()

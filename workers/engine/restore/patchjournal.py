"""The patch restore's undo journal, and undo(): putting back what an uncommitted patch
changed (see patch.py for the steps).

The work directory `<parent>/.<base>.restore-patch` holds the prepared new entries (`n<i>`),
the entries moved out of the tree (`o<i>`), `journal` (the operations, each with the inode
of its new entry, and the metadata of every kept directory as found; fsynced before the
first rename) and, once the patch is durable, `committed`. undo() rolls back an uncommitted
journal: in reverse order it moves back exactly the entries whose inode the journal names,
then puts the directories' metadata back. recovery.cleanup() runs it on every later
restore, capture and recover(), and patch.py at once when a patch fails. Nothing is
opened through a symlink: every directory is reached through O_NOFOLLOW fds from the state
root, and a name swapped by a tenant is moved, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os

import msgspec

from ..fs import fsutil
from .metadata import set_dir_meta
from .patchplan import CREATE, DELETE, DirState, Op

JOURNAL = b"journal"
COMMITTED = b"committed"


class Journal(msgspec.Struct, array_like=True):
    ops: list[Op]
    dirs: list[DirState]  # parents first


def work_name(base: bytes) -> bytes:
    return b"." + base + b".restore-patch"


def new_name(i: int) -> bytes:
    return b"n%d" % i


def old_name(i: int) -> bytes:
    return b"o%d" % i


def move_in(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> None:
    """Rename, never replacing an entry at dst (renameat2 NOREPLACE; on a filesystem without
    it, a plain rename after checking dst is free: the server is stopped meanwhile)."""
    try:
        fsutil.renameat2(src_dir, src, dst_dir, dst, fsutil.RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        if exists(dst, dst_dir):
            raise FileExistsError(errno.EEXIST, "entry appeared during the restore", dst) from e
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def exists(name: bytes, dfd: int) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


# A directory of the state that cannot be opened any more: removed, or made a file or a
# symlink (what a server started again after a killed patch may do to its own tree).
_GONE = frozenset((errno.ENOENT, errno.ENOTDIR, errno.ELOOP))


def _dir(fds: fsutil.Beneath, path: bytes) -> int | None:
    """The state's directory `path` for undo, or None when it is gone since the patch (or
    the journal names no path of the state): nothing can be put back there, and undo goes
    on with the rest. Raising instead failed every later capture, restore and recover()
    of the server for good (they all undo first)."""
    try:
        return fds.dir(path)
    except ValueError:
        return None  # an unsafe path (fsutil.split): no journal a patch wrote
    except OSError as e:
        if e.errno not in _GONE:
            raise
        return None


def _made_by_a_patch(wfd: int) -> bool:
    """Whether the work directory open at wfd can be one a patch made: ours (this process's
    user) and closed to everyone else (mode 0700), so no one else put its journal there.
    The state's parent may be its tenant's: a tenant who planted a work directory with a
    journal of its own had undo chown, chmod (setuid, setgid) and set xattrs (trusted.*,
    security.*: root's alone to set) on any directory of its state, as it named them. A
    tenant with this process's own user (host root) needs no journal for that."""
    st = os.fstat(wfd)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def undo(parent_fd: int, base: bytes) -> None:
    """Roll back an uncommitted patch (idempotent; a committed one needs nothing)."""
    try:
        wfd = os.open(work_name(base), fsutil.DIR_FLAGS, dir_fd=parent_fd)
    except (FileNotFoundError, NotADirectoryError):
        return  # none, or not a patch's (planted): removed with the other leftovers
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        return
    try:
        if not _made_by_a_patch(wfd):
            return  # planted: removed with the other leftovers, never acted on
        if exists(COMMITTED, wfd):
            return
        try:
            # never opened unless a regular file: a fifo planted under its name (the
            # state's parent may be its tenant's) blocked every later restore and capture
            jfd = fsutil.open_regular(JOURNAL, wfd)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ELOOP):
                raise
            return  # nothing was applied before the journal existed (or it is none)
        with os.fdopen(jfd, "rb") as f:
            try:
                journal = msgspec.msgpack.decode(f.read(), type=Journal)
            except msgspec.DecodeError:
                return  # torn: it was being written, so nothing was applied
        try:
            root_fd = os.open(base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno not in _GONE:
                raise
            return  # no state to put anything back into: the leftovers' removal takes it
        # the directories along the path at hand only (a patch may change one in each
        # of 200,000 directories: one descriptor each ran out of them, EMFILE)
        fds = fsutil.Beneath(root_fd)
        try:
            for i in reversed(range(len(journal.ops))):
                op = journal.ops[i]
                parent, _, name = op.path.rpartition(b"/")
                pfd = _dir(fds, parent)
                if pfd is None:
                    continue  # its directory is gone since (see _dir)
                if op.kind != DELETE:
                    try:
                        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    if st is not None and st.st_ino == op.ino:
                        os.rename(name, new_name(i), src_dir_fd=pfd, dst_dir_fd=wfd)
                if op.kind != CREATE and exists(old_name(i), wfd):
                    # the name taken since: what is there now stays
                    with contextlib.suppress(FileExistsError):
                        move_in(wfd, old_name(i), pfd, name)
            for d in reversed(journal.dirs):
                dfd = _dir(fds, d.path)
                if dfd is not None:
                    set_dir_meta(d, dfd)
        finally:
            fds.close()
            os.close(root_fd)
        os.fsync(parent_fd)
        fsutil.syncfs(f"/proc/self/fd/{parent_fd}")
        os.unlink(JOURNAL, dir_fd=wfd)
    finally:
        os.close(wfd)

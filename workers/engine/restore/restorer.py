"""Directory restore.

The new tree is built in a staging directory beside the state path
(`<parent>/.<base>.restore-<snapshot_id>`, same filesystem, mode 0700 while building),
every chunk is checked against its id while reading, metadata is applied (files: chown,
then chmod so setuid/setgid survive, then xattrs so security.capability survives, then
times; directories last, children first), one syncfs makes it durable, and
renameat2(RENAME_EXCHANGE) swaps it with the current tree atomically. The old tree, now
under the staging name, is removed. A crash at any point leaves either the old or the new
tree at the state path; everything named `.<base>.restore-*` is a leftover that
recovery.cleanup() removes (recover() and every restore call it first).

Where RENAME_EXCHANGE is not supported, a rename pair is used under a journal file
`.<base>.restore-journal` (naming the staging dir), written and fsynced before the first
rename: recovery rolls forward (staging -> state path) if the state path is missing.

Files already identical in the current tree are hard-linked into staging instead of being
rewritten (treewriter.py; copied instead for a live restore, so no inode a running process
has open ends up in the new tree): same relative path reached through O_NOFOLLOW directory fds
only, a regular file with one link, identical size/mode/owner/mtime/xattrs, and identical
content proven as reuse.py says. Nothing outside the state path is ever opened, and
removing the old tree never descends into a mount inside it.

When few entries differ, the tree is patched in place instead (patch.py, under an undo
journal). A big restore writes its files in worker processes (writerpool.py), and a
background syncfs keeps the final one, the durability point before the swap, short.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import tuning
from ..fs import fsutil, statepath
from ..fs.syncpoint import sync_point, wait_past
from ..model import RestoreResult, StateInvalid
from ..progress import Progress
from ..repository.lazyentries import LazyEntries
from ..repository.manifest import Entry
from ..repository.repository import Repository
from ..repository.treecheck import check_tree
from .metadata import set_dir_meta
from .recovery import cleanup, dispose
from .statecache import StateCache, WrittenRecord, record_tree
from .treewriter import TreeWriter

if TYPE_CHECKING:  # the writer processes' module: imported only by a restore that starts them
    from .writerpool import RestorePool


class Restorer:
    def __init__(self, repo: Repository, snapshot_id: int, entries: Sequence[Entry],
                 state_path: str,
                 progress: Progress, pool: RestorePool | None = None, *,
                 live: bool = False, captured_dev: int = 0,
                 started: int | None = None, host: str = "") -> None:
        self.started = started  # time.time_ns() when the restore began (its sync point's)
        self.pool = pool  # started early by the caller for a big restore into a new state
        # A live server (nothing stopped it) is patched in place only while no process has
        # a file it keeps open for writing (leases.py); else rebuilt, its files copied.
        self.live = live
        self.repo = repo
        self.sid = snapshot_id
        self.entries = entries
        self.parent_path, self.base = statepath.split_state(state_path)
        self.state_path = state_path
        self.progress = progress
        self.cache = StateCache(repo.backend, state_path, host)  # host: statecache.host_id
        # its hard links' targets, found by run()'s tree check (one pass over the entries)
        self.writer = TreeWriter(repo, snapshot_id, entries, progress, linked=set())
        self.check = self.writer.check
        # Header.dev, where its ctimes vouch (Header.ctimes_vouched); else 0
        self.check.captured_dev = captured_dev
        self.writer.copy_reused = live  # no inode the running server has open is kept

    def run(self) -> RestoreResult:
        w = self.writer
        # writers started early: a new state, whose entries are sorted out on this pass
        plan = None
        if self.pool is not None:
            from .freshplan import FreshPlan  # a new state's: a patch never loads it

            plan = FreshPlan(self.repo, self.entries[0])
        totals = check_tree(self.entries, self.sid, None if plan is None else plan.visit,
                            self.progress.stop_asked)
        self.progress.total = totals.size
        w.linked.update(totals.linked)
        try:
            parent_fd = statepath.open_path(self.parent_path)
        except OSError as e:
            raise StateInvalid(f"parent of the state path is unusable: {e}") from e
        try:
            cleanup(parent_fd, self.base, self.parent_path)
            cur_fd: int | None
            try:
                cur_fd = os.open(self.base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                cur_fd = None
            except OSError as e:
                raise StateInvalid(f"state path is not a directory (or is a symlink): {e}") from e
            # An empty current tree (a server made to be restored into) is a new state:
            # nothing to reuse or patch, its files all written by the worker processes.
            fresh = cur_fd is None or fsutil.is_empty_dir(cur_fd)
            # Before any file is trusted or proven: from here on every change to a file of
            # the state (its own filesystem) moves its ctime (see syncpoint.py and reuse.py).
            # A new state has no file to trust or prove: no sync point, whose syncfs wrote
            # out whatever else was dirty on the filesystem before the first file was
            # written (the check's default point vouches for nothing: a file a tenant puts
            # into the empty directory meanwhile is never reused).
            if cur_fd is not None and not fresh:
                self.check.sync = sync_point(cur_fd, since=self.started)
            # the record vouches for files of the current tree only: none, nothing to read
            if not fresh:
                self.check.known_dev, self.check.known = self.cache.load()
            self.cache.forget()  # the tree is about to change: the record would be stale
            if not fresh and cur_fd is not None:
                try:
                    patched = self._patched(parent_fd, cur_fd)
                except BaseException:
                    os.close(cur_fd)
                    with contextlib.suppress(OSError):
                        cleanup(parent_fd, self.base, self.parent_path)
                    raise
                if patched:
                    os.close(cur_fd)
                    self.progress.finish()
                    return self._result()
            # a rebuild's: a patch never loads them
            from .staging import Flusher, hierarchy_top, swap

            staging = b"." + self.base + b".restore-%d" % self.sid
            try:
                os.mkdir(staging, 0o700, dir_fd=parent_fd)
                st_fd = os.open(staging, fsutil.DIR_FLAGS, dir_fd=parent_fd)
                w.creating_in(st_fd)
                w.root_meta = False  # given below
                flusher = Flusher(parent_fd, self.progress)
                pool, self.pool = self.pool, None
                if pool is None and self.progress.total >= tuning.RESTORE_PROCESS_THRESHOLD:
                    from .writerpool import start_pool

                    pool = start_pool(self.repo, self.sid, self.state_path)
                try:
                    with hierarchy_top(st_fd):
                        if pool is not None and fresh:
                            w.build_fresh(st_fd, pool, plan)
                        else:
                            w.build(st_fd, cur_fd, self.entries, w.linked, pool)
                    # The staging root stays the worker's, 0700, until no change to a file
                    # written in it can keep the ctime recorded for it: its own owner and
                    # mode may let a tenant in (one owning the state's parent), and a
                    # change it made within the granule of that ctime (a second on ext4
                    # with 128-byte inodes, a tick before Linux 6.13) had the next restore
                    # keep the tenant's bytes as the snapshot's.
                    wait_past(w.written.newest)
                    set_dir_meta(self.entries[0], st_fd)
                finally:
                    if pool is not None:
                        pool.close(kill=True)
                    flusher.stop()
                    os.close(st_fd)
                # the durability point: through the parent's fd, not its path, which a
                # tenant holding a directory above may have swapped for a symlink since (the
                # sync would then flush another filesystem than the one swapped on)
                fsutil.syncfs_fd(parent_fd)
                # no change after the swap (a live server's) keeps a recorded ctime: past
                # them already (above)
                old = swap(parent_fd, staging, self.base, cur_fd is not None)
                if isinstance(self.entries, LazyEntries):
                    self.entries.release()  # written: only the record is left to make
            except BaseException:
                with contextlib.suppress(OSError):
                    cleanup(parent_fd, self.base, self.parent_path)
                raise
            finally:
                if cur_fd is not None:
                    os.close(cur_fd)
            # Committed. The old tree is garbage now: nothing about removing it (a tenant
            # still changing it, its depth, an immutable file) can fail the restore. A live
            # restore's new tree shares no inode with it (every kept file was copied), so
            # it is removed in the background (the janitor), while the server runs: on a
            # cold cache, unlinking a rootfs's 6,000 files took longer than restoring it.
            # Otherwise now: unlinking the old names of linked inodes moves their ctime,
            # which the record below must see.
            dispose(parent_fd, self.parent_path, self.base, old, background=w.copy_reused)
            # after the removal: unlinking old names changed the ctime of reused inodes
            new_fd = os.open(self.base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
            try:
                reused = record_tree(new_fd, w.reused, w.linked, self.check.digest)
                dev = os.fstat(new_fd).st_dev
            finally:
                os.close(new_fd)
            wait_past(max((c for _i, c, _d in reused.values()), default=0))  # as above
            self.cache.save_encoded(w.written.encode(reused, dev))
        finally:
            os.close(parent_fd)
        self.progress.finish()
        return self._result()

    @property
    def bytes_read(self) -> int:
        """Current-tree bytes read to prove files identical."""
        return self.check.bytes_read

    def _result(self) -> RestoreResult:
        w = self.writer
        return RestoreResult(snapshot_id=self.sid, bytes_written=w.bytes_written,
                             files_reused=w.files_reused, files_written=w.files_written)

    def _patched(self, parent_fd: int, cur_fd: int) -> bool:
        """Patch the current tree in place when few entries differ (see patch.py)."""
        # Imported here: a restore into a new state (empty, or no state path yet) never
        # patches, and these modules were 3.5-6 ms of its parent's start-up (-X importtime
        # of the restorer), while its writer processes wait for their shares.
        from .leases import LiveChange, LiveGuard
        from .patch import Patcher
        from .patchplan import Planner

        limit = max(tuning.PATCH_MIN, len(self.entries) // tuning.PATCH_FRACTION)
        mounts = statepath.mount_roots(os.path.join(self.parent_path, os.fsdecode(self.base)))
        entries = self.entries.listed() if isinstance(self.entries, LazyEntries) else self.entries
        guard = LiveGuard() if self.live else None
        counts = self.writer.bytes_written, self.writer.files_written
        try:
            try:
                plan = Planner(entries, limit, mounts, self.check, guard,
                               self.progress.stop_asked).run(cur_fd)
                if plan is None:
                    return False
                check = None
                if guard is not None:
                    changed = {op.path.rpartition(b"/")[0] for op in plan.ops}
                    changed.update(plan.fix_dirs)
                    check = lambda: guard.check(changed, plan.manifest_dirs)  # noqa: E731
                Patcher(self.writer, plan, self.parent_path, self.base, parent_fd, cur_fd,
                        check).run()
            except (LiveChange, OSError) as e:
                # Undone (the Patcher's own undo): rebuilt instead, a running server's files
                # copied (it changed its tree meanwhile: a name gone under a rename). A
                # stopped server's too: what the patch could not change in place (a file
                # of the state made immutable or append-only: EPERM renaming it away) the
                # rebuild leaves in the old tree, set aside (recovery.dispose), where the
                # failed patch had failed every attempt of the restore. Out of space: the
                # rebuild needs more (state_full).
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.writer.bytes_written, self.writer.files_written = counts
                self.writer.written = WrittenRecord(self.writer.linked)  # none is left
                cleanup(parent_fd, self.base, self.parent_path)  # its work directory
                return False
        finally:
            if guard is not None:
                guard.release()  # a waiting opener goes on, into the restored file
        self.progress.add(plan.reused_bytes)
        self.writer.files_reused = plan.reused
        record = {e.path: (ino, ctime, self.check.digest(e)) for e, ino, ctime in plan.kept_files}
        # A kept file's ctime is one its trust vouched for, its lease held until the check:
        # any change since shows. A new file is in place from its rename on, unleased: a
        # running server's write into it with its mtime put back, before this stat or
        # within its ctime's granule after, would be recorded as the snapshot's, and the
        # next restore (a stopped one too) would keep its bytes. A live patch's new files
        # are proven by content next time instead (a few files: a patch changes few).
        if guard is None:
            record.update(record_tree(cur_fd, plan.new_files(), self.writer.linked,
                                      self.check.digest))
        # the server may change a file once we return: not within a recorded ctime's granule
        wait_past(max((c for _i, c, _d in record.values()), default=0))
        self.cache.save(record, os.fstat(cur_fd).st_dev)
        return True

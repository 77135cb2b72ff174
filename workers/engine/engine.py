"""The engine facade: capture, restore, verify, delete, reclaim, list, recover.

Commit protocol: chunks are written (temp + rename, no fsync each), one syncfs barrier,
then the manifest snapshots/<id> is written durably; the manifest is the commit point, so
an interrupted capture is invisible and a rerun stores no chunk twice (content addressing
plus the set of stored ids loaded at start). See locks.py for capture/reclaim exclusion
on file://, and repository/s3reclaim.py for the fleet-wide protocol on s3://.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import blake3
import msgspec

from . import gcpause, tuning
from .model import (
    CaptureResult,
    CommittedSnapshot,
    EngineError,
    ProgressFn,
    ReclaimStats,
    RestoreResult,
    SnapshotMeta,
    SnapshotNotFound,
    StateFull,
    StateInvalid,
    StateSpec,
    StorageOptions,
    TransientEngineError,
    VerifyReport,
)
from .progress import Progress
from .repository import manifest
from .repository.backend import Backend, LocalBackend
from .repository.lazyentries import LazyEntries
from .repository.locks import FlockLock, RepoLock
from .repository.manifest import Header, ImageBody
from .repository.reclaim import reclaim_local
from .repository.repository import Repository
from .repository.verify import verify

if TYPE_CHECKING:
    from .capture.parent import ParentCursor
    from .restore.writerpool import RestorePool


def _state_full(state: StateSpec, header: Header, err: OSError) -> StateFull:
    """ENOSPC/EDQUOT while a restore wrote beside the state: nothing was swapped in (a
    failed restore rolls back), so the state is as it was."""
    try:
        st = os.statvfs(os.path.dirname(os.path.normpath(state.path)))
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    return StateFull(f"the filesystem holding {state.path} is full ({err.strerror}): "
                     f"{free:,} bytes free, the restore needs up to {header.size_bytes:,} "
                     "bytes (the snapshot's size) beside the current state, which is untouched")


# What the zygote imports for the reader and writer processes (readerpool's and
# writerpool's _MODULE and what writerproc imports at its start; tests/engine/test_zygote.py)
WORKER_MODULES = ("workers.engine.capture.readerproc", "workers.engine.restore.writerproc",
                  "workers.engine.restore.treewriter")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Engine:
    def __init__(self, storage_url: str, options: StorageOptions | None = None) -> None:
        self.storage_url = storage_url
        self.options = options or StorageOptions()
        self.backend: Backend
        self.lock: RepoLock
        if storage_url.startswith("s3://"):
            from .repository.s3backend import S3Backend
            from .repository.s3locks import S3Locks
            from .workerproc import zygote

            # before the S3 client's first request (its runtime's threads would not survive
            # the fork): reader and writer processes are forks of it from then on
            zygote.start(WORKER_MODULES)
            s3 = S3Backend.from_url(storage_url, self.options)
            s3.check()  # a clear error naming the bucket now, not at the first capture
            locks = S3Locks(s3, stale=self.options.lock_stale, settle=self.options.lock_settle)
            s3.before_commit = locks.check_held  # a capture that lost its lock never commits
            self.backend, self.lock = s3, locks
            # this host's own locks (one restore per state) stay local files
            import tempfile  # only here: its imports (random, shutil...) cost ~5 ms a process

            self.local_dir = self.options.cache_dir or os.path.join(
                tempfile.gettempdir(), f"snapshots-{os.getuid()}",
                blake3.blake3(storage_url.encode()).hexdigest()[:16])
        else:
            local = LocalBackend.from_url(storage_url)
            self.backend, self.local_dir = local, local.root
            self.lock = FlockLock(os.path.join(local.root, "locks", "repo.lock"))
        self.repo = Repository(self.backend)
        # bytes of file data read from the state by the last capture (or directory restore,
        # to prove current files identical): lets tests and benchmarks observe skipped reads
        self.last_bytes_read = 0

    # --- capture ----------------------------------------------------------------------
    def capture(self, meta: SnapshotMeta, state: StateSpec, *, progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None) -> CaptureResult:
        done = self._committed_result(meta.snapshot_id)
        if done is not None:
            return done
        prog = Progress(progress, should_stop)
        if state.kind == "directory":
            self.recover(state)  # never capture the mix a killed patch restore left
        with self.lock.shared():
            # A delivery that committed before this lock was taken is in the listing the
            # parent is picked from: its header is read only then (a fresh capture's second
            # GET of its own manifest, a 404, was one request of ~20 on S3). One the
            # listing missed (a store whose LIST lags its writes) still wins: the manifest
            # is created once (put_manifest), and this capture answers its snapshot.
            listed = self.repo.listed_manifests()
            if any(sid == meta.snapshot_id for sid, _v in listed):
                done = self._committed_result(meta.snapshot_id)
                if done is not None:
                    return done
            # A Repository per capture: its set of stored ids and list of written objects
            # are per-run state, so concurrent captures on one Engine do not mix them.
            repo = Repository(self.backend, self.repo.config)
            repo.load_known()
            parent_id = self._parent_id(meta, listed)
            if state.kind == "directory":
                from .capture.archiver import Archiver  # each operation imports only what it uses

                arch = Archiver(repo, state.path, self._dir_parent(repo, parent_id), prog)
                arch.run()
                prog.check()
                encoded, size, files = arch.body()
                pieces = arch.tree.pieces
                stored, warnings = arch.stored_bytes, arch.warnings
                dev = arch.root_dev
                self.last_bytes_read = arch.bytes_read
            elif state.kind == "image":
                from .image.image import capture_image

                parent: ImageBody | None = None
                if parent_id is not None:
                    with contextlib.suppress(EngineError):  # deleted meanwhile or unreadable
                        parent_header, pbody = repo.get_manifest(parent_id)
                        repo.durable = manifest.chunk_ids(pbody)
                        if parent_header.ctimes_vouched and isinstance(pbody, ImageBody):
                            parent = pbody  # else its ctimes may not stand for its bytes
                ibody, stored, warnings, nread = capture_image(repo, state.path, parent, prog)
                size, files, dev = ibody.size, 1, 0
                self.last_bytes_read = nread
                prog.check()
                encoded = [manifest.encode_body(ibody)]
                pieces = []
            else:
                raise StateInvalid(f"unknown state kind {state.kind!r}")
            header = Header(meta=meta, state_kind=state.kind, size_bytes=size,
                            # the manifest is written by this capture too: counted
                            stored_bytes=stored + sum(map(len, encoded)), files=files,
                            warnings=warnings,
                            completed_at=_now(), ctimes_vouched=True, pieces=pieces,
                            dev=dev)
            if not repo.put_manifest(header, encoded):
                # another delivery of this capture committed first: its snapshot is the one
                done = self._committed_result(meta.snapshot_id)
                if done is None:  # deleted at once: nothing of ours stands either
                    raise SnapshotNotFound(f"snapshot {meta.snapshot_id} was committed by "
                                           "another delivery and deleted")
                prog.finish()
                return done
        prog.finish()
        return self._result(header)

    @staticmethod
    def _result(h: Header) -> CaptureResult:
        return CaptureResult(snapshot_id=h.meta.snapshot_id, size_bytes=h.size_bytes,
                             stored_bytes=h.stored_bytes, files=h.files,
                             warnings=list(h.warnings), completed_at=h.completed_at)

    def _committed_result(self, snapshot_id: int) -> CaptureResult | None:
        try:
            return self._result(self.repo.get_header(snapshot_id))
        except SnapshotNotFound:
            return None

    def _parent_id(self, meta: SnapshotMeta, listed: list[tuple[int, str]]) -> int | None:
        """Newest committed snapshot of the same server (by completion time, then id)
        among those listed (Repository.listed_manifests)."""
        best: tuple[str, int] | None = None
        for h in self._headers(listed):
            m = h.meta
            if m.server_id == meta.server_id and m.snapshot_id != meta.snapshot_id:
                key = (h.completed_at, m.snapshot_id)
                if best is None or key > best:
                    best = key
        return None if best is None else best[1]

    @staticmethod
    def _dir_parent(repo: Repository, parent_id: int | None) -> ParentCursor:
        """The parent of a directory capture, its entries left encoded and decoded as the
        walk passes them (capture/parent.py); none if it was deleted meanwhile, is
        unreadable or not a directory's: the capture is then a full one."""
        from .capture.parent import ParentCursor

        if parent_id is not None:
            try:
                header, pieces = repo.get_manifest_pieces(parent_id)
            except EngineError:
                pass
            else:
                return ParentCursor(pieces, vouched=header.ctimes_vouched, dev=header.dev)
        return ParentCursor([], vouched=False)

    def _headers(self, manifests: list[tuple[int, str]] | None = None) -> list[Header]:
        out = []
        for sid, listed in self.repo.listed_manifests() if manifests is None else manifests:
            try:
                out.append(self.repo.get_header(sid, listed))
            except EngineError:
                continue  # deleted while listing, or unreadable: not a committed snapshot
        return out

    # --- restore ----------------------------------------------------------------------
    def restore(self, snapshot_id: int, state: StateSpec, *,
                progress: ProgressFn | None = None, live: bool = False,
                should_stop: Callable[[], bool] | None = None) -> RestoreResult:
        """Make the state equal to the snapshot. `live`: the server runs during the restore
        (nothing stops it), so a directory is patched in place only under read leases on
        every file it keeps, else rebuilt and swapped in with those files copied
        (restore/leases.py): a process still writing keeps writing into the old tree.
        should_stop (polled as progress is): once true, Cancelled before the state is
        changed (the staging tree removed), or none if the swap was reached already."""
        started = time.time_ns()  # the sync point waits for the clock tick from here
        prog = Progress(progress, should_stop)
        with self.lock.shared(), self._state_lock(state):
            local = isinstance(self.backend, LocalBackend)
            pool = self._early_pool(snapshot_id, state) if local else None
            try:
                raw = self.repo.get_manifest_raw(snapshot_id)
                # On a remote repository the writer processes start once the manifest is
                # read (its header decides: no header GET); they are sent their shares'
                # entries, so none reads the manifest itself.
                if not local:
                    pool = self._early_pool(snapshot_id, state, raw)
                header, body = self.repo.decode_tree(snapshot_id, raw)
                del raw
                if header.state_kind != state.kind:
                    raise StateInvalid(f"snapshot {snapshot_id} holds {_a(header.state_kind)} "
                                       f"state, not {_a(state.kind)}")
                try:
                    return self._restore(snapshot_id, header, body, state, prog, pool, live,
                                         started)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise _state_full(state, header, e) from e
                    raise
            finally:
                if pool is not None:
                    pool.close(kill=True)  # unused (or already closed by the restore)

    def _restore(self, snapshot_id: int, header: Header,
                 body: ImageBody | LazyEntries, state: StateSpec,
                 prog: Progress, pool: RestorePool | None, live: bool,
                 started: int) -> RestoreResult:
        if isinstance(body, ImageBody):
            from .image.image import restore_image

            return restore_image(self.repo, snapshot_id, body, state.path, prog)
        from .restore.restorer import Restorer
        from .restore.statecache import host_id

        # on S3 several hosts may each have a state at this path: each its own record
        host = "" if isinstance(self.backend, LocalBackend) else host_id(self.local_dir)
        restorer = Restorer(self.repo, snapshot_id, body, state.path, prog, pool,
                            live=live,
                            captured_dev=header.dev if header.ctimes_vouched else 0,
                            started=started,
                            host=host)
        try:
            # What a restore makes (records, batches, shares) is no cyclic garbage, and the
            # collector walked every entry's lists again and again for nothing: 10k-file
            # S3 restore, 30 collections, 7-40 ms of the parent's time (gcpause.py)
            with gcpause.paused():
                return restorer.run()
        finally:
            self.last_bytes_read = restorer.bytes_read

    @contextlib.contextmanager
    def _state_lock(self, state: StateSpec) -> Iterator[None]:
        """One restore or recovery at a time per state (see locks.py)."""
        digest = blake3.blake3(os.fsencode(os.path.normpath(state.path))).hexdigest()[:32]
        lock = FlockLock(os.path.join(self.local_dir, "locks", f"state-{digest}.lock"))
        with lock.exclusive(wait=False) as got:
            if not got:
                raise TransientEngineError(f"another restore of {state.path} is still running")
            yield

    def _early_pool(self, snapshot_id: int, state: StateSpec,
                    raw: bytes | None = None) -> RestorePool | None:
        """A big directory restore into a new state (no state path yet, or an empty
        directory: a server made to be restored into) starts its worker processes first,
        so their start-up overlaps reading (local) or decoding (raw: the manifest as read
        from a remote repository, no header GET) the manifest: nothing to reuse, no patch."""
        from .fs.statepath import empty_dir_at

        if state.kind != "directory" or (os.path.lexists(state.path)
                                         and not empty_dir_at(state.path)):
            return None
        try:
            header = (self.repo.get_header(snapshot_id) if raw is None
                      else manifest.decode_header(raw))
        except (EngineError, ValueError, msgspec.DecodeError):
            return None  # get_manifest / decode_manifest say what is wrong
        if header.state_kind != "directory" or header.size_bytes < tuning.RESTORE_PROCESS_THRESHOLD:
            return None
        from .restore.writerpool import start_pool  # only a restore that starts them

        return start_pool(self.repo, snapshot_id, state.path)

    def recover(self, state: StateSpec) -> None:
        from .fs.statepath import open_path, split_state

        parent, base = split_state(state.path)
        try:
            pfd = open_path(parent)
        except FileNotFoundError:
            return
        try:
            with self._state_lock(state):
                if state.kind == "image":
                    from .image.image import image_cleanup

                    image_cleanup(pfd, base)
                else:
                    from .restore.recovery import cleanup

                    cleanup(pfd, base, parent)
        finally:
            os.close(pfd)

    # --- integrity --------------------------------------------------------------------
    def verify(self, snapshot_id: int) -> VerifyReport:
        return verify(self.repo, snapshot_id)

    # --- delete and reclaim -----------------------------------------------------------
    def delete(self, snapshot_id: int) -> None:
        self.repo.delete_manifest(snapshot_id)

    def reclaim(self, *, wait: bool = False) -> ReclaimStats:
        if isinstance(self.backend, LocalBackend):
            stats = reclaim_local(self.repo, self.backend, self.lock, wait=wait)
        else:
            from .repository.s3backend import S3Backend
            from .repository.s3locks import S3Locks
            from .repository.s3reclaim import reclaim

            assert isinstance(self.backend, S3Backend) and isinstance(self.lock, S3Locks)
            stats = reclaim(self.repo, self.backend, self.lock, wait=wait,
                            margin=self.options.reclaim_margin)
        if not stats.skipped_locked:
            from .restore import statecache

            shared = not isinstance(self.backend, LocalBackend)
            for key, _size, _mtime in list(self.backend.list(statecache.STATES_PREFIX)):
                if statecache.obsolete(key, shared):
                    self.backend.delete(key)
        return stats

    # --- catalog ----------------------------------------------------------------------
    def snapshot_ids(self) -> list[int]:
        """The ids of every committed snapshot (one LIST; no manifest is read)."""
        return self.repo.manifest_ids()

    def list_snapshots(self) -> list[CommittedSnapshot]:
        return [h.committed() for h in self._headers()]

    def get_snapshot(self, snapshot_id: int) -> CommittedSnapshot | None:
        try:
            return self.repo.get_header(snapshot_id).committed()
        except SnapshotNotFound:
            return None

    def writable(self) -> bool:
        return self.backend.writable()


def _a(kind: str) -> str:
    """'an image', 'a directory': a state kind in a sentence."""
    return ("an " if kind[:1] in "aeiou" else "a ") + kind

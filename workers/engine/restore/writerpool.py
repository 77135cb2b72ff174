"""Restore worker processes (parent side); see writerproc.py for why and the protocol."""

from __future__ import annotations

import errno
import logging
import selectors
import socket
from array import array
from collections.abc import Callable

import msgspec

from .. import tuning
from ..model import SnapshotCorrupt, TransientEngineError
from ..repository.packformat import Layout
from ..repository.repository import Repository
from ..workerproc import frames
from ..workerproc.process import start_workers
from .messages import CUT, GO, Cut, End, Failed, Setup, Share, WriterMessage, Written, Wrote

_MODULE = "workers.engine.restore.writerproc"  # what its processes run

_decode = msgspec.msgpack.Decoder(WriterMessage).decode
Done = Callable[[int, int, int], None]  # entry index, ino, ctime_ns


class _Run:
    """A worker's current share, as the parent follows it."""

    def __init__(self, share: array[int]) -> None:
        # manifest indexes, cut short when a cut took its rest; an array (8 bytes each):
        # as a list of ints (36 bytes each) a 100k restore's parent held +3.4 MiB
        self.share = share
        self.done = 0  # of them reported written
        self.busy = True  # until its End


class RestorePool:
    """Started as early as possible (the workers' start-up and manifest loading overlap the
    parent's), then given the staging directory and the files, split into shares."""

    def __init__(self, repo: Repository, snapshot_id: int, state_path: str, n: int) -> None:
        where, options = repo.backend.location()
        setup = msgspec.msgpack.encode(Setup(where, snapshot_id, state_path, options,
                                             msgspec.msgpack.encode(repo.config)))
        self.bytes_written = 0
        self.steals = 0  # shares cut and handed to a worker that had finished its own
        self._steal_min = (tuning.RESTORE_STEAL_MIN if repo.backend.remote
                           else tuning.RESTORE_STEAL_MIN_LOCAL)
        self.workers = start_workers(_MODULE, setup, n)
        self._runs: list[_Run] = []
        # worker -> (the run a CUT sent to it was for, the worker that gets what it cuts)
        self._cuts: dict[int, tuple[_Run, int]] = {}
        self._hungry: list[int] = []  # workers done with their share, no cut pending for them
        self._enc = msgspec.msgpack.Encoder()
        self._owner: tuple[int, int] | None = None
        self._raw: Callable[[int], msgspec.Raw] = lambda i: msgspec.Raw(b"")
        self.offered = False  # the first shares were sent (offer())

    def offer(self, shares: list[array[int]], owner: tuple[int, int] | None,
              raw: Callable[[int], msgspec.Raw]) -> None:
        """Send each worker its first share (entries' msgpack: raw(i) is entry i's): it
        decodes them and starts reading its packs ahead (S3: its first GETs) while the
        parent is still making the directories they go into; run() has them write it.
        Once, before run()."""
        self._enc, self._owner, self._raw = msgspec.msgpack.Encoder(), owner, raw
        self._runs = [_Run(share) for share in shares]
        self._cuts, self._hungry = {}, []
        for w, run in zip(self.workers, self._runs, strict=True):
            try:
                frames.send(w.res, self._enc.encode(Share(owner, run.share.tolist(),
                                                          [raw(i) for i in run.share])))
            except frames.PEER_GONE as e:
                raise TransientEngineError("a restore worker process died") from e
        self.offered = True

    def run(self, st_fd: int, progress: Callable[[int], None], poll: Callable[[], None],
            done: Done) -> None:
        """Have the workers write the shares offer() sent them into st_fd (its tree of
        directories made by now); returns when all did.

        A worker that finished its share takes over the second half of what is left of
        the busiest one's (a cut, tuning.RESTORE_STEAL_MIN files at least; from file://
        RESTORE_STEAL_MIN_LOCAL): the shares are split by an estimate of their cost, and
        the same work can cost one process twice what it costs the other (here: a
        10,000-file restore's first half took 0.8 s of CPU, its second 0.4 s, every file
        create 5x slower where ext4 searched a fuller inode group; other work on the
        machine does the same), so a fixed split left one
        core idle for up to half the restore."""
        assert self.offered, "offer() the shares first"
        for w in self.workers:
            try:
                socket.send_fds(w.req, [GO], [st_fd])
            except frames.PEER_GONE as e:
                raise TransientEngineError("a restore worker process died") from e
        sel = selectors.DefaultSelector()
        try:
            for i, w in enumerate(self.workers):
                sel.register(w.res, selectors.EVENT_READ, i)
            while self._cuts or any(r.busy for r in self._runs):
                for key, _ev in sel.select(timeout=0.25):
                    w = self.workers[key.data]
                    try:
                        data = w.res.recv(1 << 20)
                    except frames.PEER_GONE:
                        data = b""
                    if not data:
                        raise TransientEngineError("a restore worker process died")
                    for frame in w.frames.feed(data):
                        self._handle(key.data, _decode(frame), progress, done)
                poll()
        finally:
            sel.close()

    def _handle(self, i: int, msg: WriterMessage, progress: Callable[[int], None],
                done: Done) -> None:
        """Act on one message of worker i."""
        run = self._runs[i]
        match msg:
            case Wrote():
                progress(msg.nbytes)
            case Written():
                for idx, ino, ctime in msg.files:
                    done(idx, ino, ctime)
                run.done += len(msg.files)
                self.bytes_written += msg.nbytes
            case End():
                run.busy = False
                self._hungry.append(i)
                self._feed()
            case Cut():
                # The run the CUT was sent for: a worker answers CUTs in the order sent, and
                # one sent after its End (or before it was given another share) is answered
                # with its end: nothing taken.
                cut, thief = self._cuts.pop(i)
                rest = cut.share[msg.at:]
                del cut.share[msg.at:]
                if rest:
                    self._give(thief, rest, msg.layouts)
                else:
                    self._hungry.append(thief)
                self._feed()
            case Failed(kind="corrupt"):
                raise SnapshotCorrupt(msg.message)
            case Failed(kind="os"):
                raise OSError(msg.errno or errno.EIO, msg.message)
            case Failed():
                raise TransientEngineError(f"a restore worker failed: {msg.message}")

    def _feed(self) -> None:
        """Each worker without work asks for a cut (_steal_for). Called whenever a worker
        runs out of work and whenever a cut is answered: with 3 or more workers, the answer
        frees its victim, or makes a new share, that another waiting worker can cut."""
        for thief in list(self._hungry):
            self._steal_for(thief)

    def _steal_for(self, thief: int) -> None:
        """Ask the busiest other worker with no cut pending for the second half of what
        it has left, for thief (no longer waiting then)."""
        left, victim = max(((len(r.share) - r.done, v) for v, r in enumerate(self._runs)
                            if v != thief and r.busy and v not in self._cuts),
                           default=(0, -1))
        if left < self._steal_min:
            return
        run = self._runs[victim]
        self._cuts[victim] = (run, thief)
        self._hungry.remove(thief)
        try:
            self.workers[victim].req.send(CUT + (run.done + left // 2).to_bytes(8, "big"))
        except frames.PEER_GONE as e:
            raise TransientEngineError("a restore worker process died") from e
        self.steals += 1

    def _give(self, i: int, share: array[int], layouts: list[tuple[bytes, Layout]]) -> None:
        self._runs[i] = _Run(share)
        w = self.workers[i]
        try:
            w.req.send(GO)
            frames.send(w.res, self._enc.encode(Share(self._owner, share.tolist(),
                                                      [self._raw(j) for j in share], layouts)))
        except frames.PEER_GONE as e:
            raise TransientEngineError("a restore worker process died") from e

    def close(self, *, kill: bool) -> None:
        """Stop the workers (idempotent)."""
        for w in self.workers:
            w.close(kill=kill)
        self.workers = []


def start_pool(repo: Repository, snapshot_id: int, state_path: str) -> RestorePool | None:
    """Restore worker processes reading the same repository (local or s3://), or None
    (threads then). On S3 too: a restore of small files in threads was bound by the GIL
    (10k files: 5.6 s writing after 0.6 s of GETs, against 2.5 s from file:// with
    processes), while each process reads its share's packs ahead (writerproc.py). Each
    is sent its share's entries with its share: none reads the manifest."""
    if tuning.RESTORE_PROCESSES < 1:
        return None
    try:
        return RestorePool(repo, snapshot_id, state_path, tuning.RESTORE_PROCESSES)
    except OSError as err:  # cannot start processes here: threads do the same work
        logging.getLogger(__name__).warning(
            "restore worker processes unavailable (%s); using threads", err)
        return None

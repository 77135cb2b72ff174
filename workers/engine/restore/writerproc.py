"""Restore worker process (child side), started by writerpool with two socket fds.

Writing a tree of small files is mostly per-file work in Python (create, decode, verify,
write, metadata) that one GIL serialises. A big restore into a new state therefore splits
its files between worker processes: the parent sends each worker its share, a
contiguous run of manifest indexes and those entries' msgpack (each decoded as its turn
comes; the worker holds its share only, never the whole manifest: a million entries
decoded would be ~700 bytes each), and the worker starts reading its packs ahead (on
S3 its first GETs) while the parent creates every directory in its private staging
directory; then a GO (over a SOCK_SEQPACKET socket, with the staging directory's fd by
SCM_RIGHTS) has it write the files.
The worker opens the same repository (a local root, or the s3:// URL with the parent's
StorageOptions and config, so it reads no config), creates each file beneath that fd
(O_EXCL|O_NOFOLLOW, every directory on the way opened without following a symlink:
fsutil.Beneath; a tenant root in its container may reach the staging directory) and
writes it exactly as the thread path does
(TreeWriter.write_file: every chunk checked against its id). It answers over a SOCK_STREAM
socket with the typed messages of messages.py, one per frame: Wrote (progress), Written
(a batch of finished files), then End, or Failed and it stops. Every few files it looks
for a cut of its share (a writer that finished takes over the rest: writerpool.py), and
after End it waits for another share or the end. It dies with its parent
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import select
import socket
from typing import TYPE_CHECKING

import msgspec

from .. import gcpause, tuning
from ..fs import fsutil
from ..model import SnapshotCorrupt
from ..progress import Progress
from ..repository import manifest
from ..repository.backend import LocalBackend, open_backend
from ..repository.repository import Config, Repository
from ..workerproc import child, frames
from .messages import CUT, GO, Cut, End, Failed, Setup, Share, WriterMessage, Written, Wrote

if TYPE_CHECKING:
    from ..repository.packformat import Layout
    from .treewriter import TreeWriter

_encode = msgspec.msgpack.Encoder().encode
_CUT_POLL = 16  # files written between two looks for a cut (one non-blocking recv)


def _send(res: socket.socket, msg: WriterMessage) -> None:
    frames.send(res, _encode(msg))


def main() -> None:
    child.die_with_parent()
    from .treewriter import TreeWriter  # after the death pact: imports take a while

    req, res = child.sockets()
    setup = msgspec.msgpack.decode(frames.recv(res), type=Setup)
    backend = open_backend(setup.storage, setup.options)
    config = msgspec.msgpack.decode(setup.config, type=Config) if setup.config else None
    repo = Repository(backend, config)
    local = isinstance(backend, LocalBackend)
    sent = [0]

    def report(done: int, _total: int) -> None:
        _send(res, Wrote(done - sent[0]))
        sent[0] = done

    w = TreeWriter(repo, setup.snapshot_id, [], Progress(report))  # files of its share only
    w.written.keep = False  # the parent keeps the record
    # This process creates only the files of its shares, beneath the 0700 staging
    # directory: each is created with its final permission bits (TreeWriter.create_mode),
    # which the umask would cut.
    os.umask(0)
    w.modes_at_create = True
    # The first share comes before its GO: its packs are read ahead (S3: the first GETs
    # are on their way) while the parent still makes the directories.
    share = _first_share(req, res)
    if share is None:
        return  # the parent closed the channel: nothing to do
    if not local:
        _read_ahead(w, share)
    msg, fds, _flags, _addr = socket.recv_fds(req, 16, 1)
    if not msg or not fds:
        w.packs.close()
        return  # the parent closed the channel: nothing to do
    st_fd = fds[0]
    try:
        first = True
        while msg:
            if msg == GO:
                if not first:
                    share = msgspec.msgpack.decode(frames.recv(res), type=Share)  # any size
                # no cyclic garbage made here either: 42 collections, 5-27 ms a writer
                with gcpause.paused():
                    wrote = _write_share(w, share, st_fd, req, res, local, ahead=first)
                first = False
                if not wrote:
                    while req.recv(16):  # failed (reported): until the parent, having
                        pass  # read our last frames, closes the channel (or is gone)
                    return
                _send(res, End())
            elif msg.startswith(CUT):  # it came after the share's end: nothing left
                _send(res, Cut(len(share.indexes)))
            msg = req.recv(16)  # until the parent closes the channel, or sends more
    finally:
        os.close(st_fd)
        w.packs.close()


def _layouts(w: TreeWriter, share: Share, at: int) -> list[tuple[bytes, Layout]]:
    """The frame tables this writer knows of the packs its share's files from `at` on are
    read from (for the writer that takes them over)."""
    packs: set[bytes] = set()
    for raw in share.entries[at:]:
        e = manifest.entry(raw)
        if e.pack:
            packs.add(e.pack)
        packs.update(pack for _i, pack, _o, _n in e.slices)
    return w.packs.known_layouts(packs)


def _first_share(req: socket.socket, res: socket.socket) -> Share | None:
    """The first share (on the result socket), or None when the parent closed the
    request socket first (a restore that failed before it sent one)."""
    while True:
        ready, _w, _x = select.select([req, res], [], [])
        if res in ready:
            return msgspec.msgpack.decode(frames.recv(res), type=Share)  # any size
        if not req.recv(16):
            return None


def _read_ahead(w: TreeWriter, share: Share) -> None:
    """Every read is a request: the share's packs are read ahead, a few GETs at once, as
    the thread path does (a local pack is read on demand, a pread per member)."""
    w.packs.seed_layouts(share.layouts)
    w.prefetch(manifest.entry(raw) for raw in share.entries)


def _write_share(w: TreeWriter, share: Share, st_fd: int, req: socket.socket,
                 res: socket.socket, local: bool, *, ahead: bool = False) -> bool:
    """Write the share's files, up to a cut the parent asks for meanwhile; False when it
    failed (Failed sent) or the parent closed the channel. ahead: its packs are being
    read ahead already (_read_ahead)."""
    w.assume_owner(share.owner)
    end = len(share.indexes)
    if not local and not ahead:
        _read_ahead(w, share)
    batch: list[tuple[int, int, int]] = []
    before = w.bytes_written  # not 0: a writer that takes over a cut has written a share
    idx = pos = -1
    dirs = fsutil.Beneath(st_fd)
    in_dir: bytes | None = None  # the directory the last file was created in: dfd
    dfd = st_fd
    try:
        for pos in range(len(share.indexes)):
            if pos >= end:
                break
            if pos % _CUT_POLL == 0:
                try:
                    ask = req.recv(16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
                else:
                    if not ask:
                        return False
                    # the parent asks from the files reported (up to a batch behind): the
                    # second half of what is really left, if that is less
                    end = max(pos, min(end, max(int.from_bytes(ask[len(CUT):], "big"),
                                                pos + (end - pos) // 2)))
                    given = end < len(share.indexes)  # a rest the thief will read
                    _send(res, Cut(end, _layouts(w, share, end) if given else []))
                    if pos >= end:
                        break
            idx, e = share.indexes[pos], manifest.entry(share.entries[pos])
            parent, _, name = e.path.rpartition(b"/")
            if parent != in_dir:  # a share's files come directory by directory
                dfd, in_dir = dirs.dir(parent), parent  # never through a symlink (Beneath)
            w.write_file(None, b"", e, os.open(name, fsutil.CREATE_FLAGS, w.create_mode(e),
                                               dir_fd=dfd))
            ino, ctime = w.written.last
            batch.append((idx, ino, ctime))
            if len(batch) >= tuning.WRITER_BATCH:
                _send(res, Written(batch, w.bytes_written - before))
                batch, before = [], w.bytes_written
        _send(res, Written(batch, w.bytes_written - before))
        return True
    except SnapshotCorrupt as e:
        _send(res, Failed(idx, "corrupt", str(e)))
    except OSError as e:
        _send(res, Failed(idx, "os", str(e), e.errno or 0))
    except Exception as e:  # reported to the parent, which raises it
        _send(res, Failed(idx, "other", repr(e)))
    finally:
        dirs.close()
        w.packs.close()
    return False

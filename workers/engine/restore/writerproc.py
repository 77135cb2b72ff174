"""Restore worker process (child side), started by writerpool with two socket fds.

Writing a tree of small files is mostly per-file work in Python (create, decode, verify,
write, metadata) that one GIL serialises. A big restore into a new state therefore splits
its files between worker processes: once the parent has created every directory in its
private staging directory, it sends each worker (over a SOCK_SEQPACKET socket, with the
staging directory's fd by SCM_RIGHTS) its share: a contiguous run of manifest indexes.
The worker loads the same manifest from the repository, creates each file by its path
under that fd (O_EXCL|O_NOFOLLOW; every directory on the way is one the parent just made
in its 0700 staging directory) and writes it exactly as the thread path does
(TreeWriter.write_file: every chunk checked against its id). It answers over a SOCK_STREAM
socket in length-prefixed msgpack frames: ("p", bytes) progress, ("done", [[idx, ino,
ctime], ...], bytes) in batches, then ("end",), or ("err", idx, kind, message) and stops.
It dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

import msgspec

from ..fs import fsutil
from ..model import SnapshotCorrupt
from ..progress import Progress
from ..repository.backend import LocalBackend
from ..repository.manifest import DirBody
from ..repository.repository import Repository
from ..workerproc.frames import recv_frame, send_frame
from .messages import Setup, Share

PR_SET_PDEATHSIG = 1
BATCH = 64  # files per "done" frame


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the closed request socket still ends the worker
    if os.getppid() == 1:
        os._exit(1)  # the parent died before prctl took effect


def main() -> None:
    _die_with_parent()
    from .treewriter import TreeWriter  # after the death pact: imports take a while

    req = socket.socket(fileno=int(sys.argv[-2]))
    res = socket.socket(fileno=int(sys.argv[-1]))
    setup = msgspec.msgpack.decode(recv_frame(res), type=Setup)
    repo = Repository(LocalBackend(setup.storage))
    _h, body = repo.get_manifest(setup.snapshot_id)
    assert isinstance(body, DirBody)
    entries = body.entries
    sent = [0]

    def report(done: int, _total: int) -> None:
        send_frame(res, ("p", done - sent[0]))
        sent[0] = done

    w = TreeWriter(repo, setup.snapshot_id, entries, Progress(report))
    msg, fds, _flags, _addr = socket.recv_fds(req, 16, 1)
    if not msg or not fds:
        return  # the parent closed the channel: nothing to do
    st_fd = fds[0]
    share = msgspec.msgpack.decode(recv_frame(res), type=Share)  # a stream: any size
    w.assume_owner(share.owner)
    batch: list[tuple[int, int, int]] = []
    before = 0
    idx = -1
    try:
        for idx in share.indexes:
            e = entries[idx]
            w.write_file(None, b"", e, os.open(e.path, fsutil.CREATE_FLAGS, 0o600, dir_fd=st_fd))
            _e, ino, ctime = w.written[e.path]
            batch.append((idx, ino, ctime))
            if len(batch) >= BATCH:
                send_frame(res, ("done", batch, w.bytes_written - before))
                batch, before = [], w.bytes_written
        send_frame(res, ("done", batch, w.bytes_written - before))
        send_frame(res, ("end",))
    except SnapshotCorrupt as e:
        send_frame(res, ("err", idx, "corrupt", str(e)))
    except OSError as e:
        send_frame(res, ("err", idx, "os", [e.errno or 0, str(e)]))
    except Exception as e:  # reported to the parent, which raises it
        send_frame(res, ("err", idx, "other", repr(e)))
    finally:
        os.close(st_fd)
    req.recv(1)  # until the parent closes the channel, having read our last frames

"""Restore worker process (child side), started by restorepool with two socket fds.

Writing a tree of small files is mostly per-file work in Python (create, decode, verify,
write, metadata) that one GIL serialises. A big restore therefore hands files to worker
processes: the parent sends, over a SOCK_SEQPACKET socket with SCM_RIGHTS, an entry index
and either the staging directory fd to create the file in (by name, O_EXCL|O_NOFOLLOW) or
the fd of a file it created itself (a hard-link primary). The worker loads the same
manifest from the repository, writes the file exactly as the thread path does
(Restorer._file: every chunk checked against its id) and answers, over a SOCK_STREAM
socket in length-prefixed msgpack frames, ("p", bytes) progress, ("done", idx, ino,
ctime) or ("err", idx, kind, message). A worker only ever touches fds its parent opened
in its private staging directory, and dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

import msgspec

from .backend import LocalBackend
from .manifest import DirBody
from .model import SnapshotCorrupt
from .procworker import recv_frame, send_frame
from .progress import Progress
from .repository import Repository

PR_SET_PDEATHSIG = 1


class Setup(msgspec.Struct, array_like=True):
    storage: str  # root of the local repository
    snapshot_id: int
    state_path: str


class Request(msgspec.Struct, array_like=True):
    idx: int
    name: bytes  # created in the directory fd sent along, or b"": the fd is the file
    owner: tuple[int, int] | None  # what new files get where they are created


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
    from .restorer import Restorer  # after the death pact: imports take a while

    req = socket.socket(fileno=int(sys.argv[-2]))
    res = socket.socket(fileno=int(sys.argv[-1]))
    setup = msgspec.msgpack.decode(recv_frame(res), type=Setup)
    repo = Repository(LocalBackend(setup.storage))
    _h, body = repo.get_manifest(setup.snapshot_id)
    assert isinstance(body, DirBody)
    sent = [0]

    def report(done: int, _total: int) -> None:
        send_frame(res, ("p", done - sent[0]))
        sent[0] = done

    r = Restorer(repo, setup.snapshot_id, body.entries, setup.state_path, Progress(report))
    decode = msgspec.msgpack.Decoder(Request).decode
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(req, 1 << 16, 1)
        if not msg:
            return  # the parent closed the channel: done
        rq = decode(msg)
        r.assume_owner(rq.owner)
        fd = fds[0]
        before = r.bytes_written
        try:
            if rq.name:  # fd is the directory to create it in
                r.write_file(fd, rq.name, body.entries[rq.idx], None)
            else:  # fd is the file, closed by write_file
                r.write_file(None, b"", body.entries[rq.idx], fd)
            ino, ctime = r.written[body.entries[rq.idx].path]
            send_frame(res, ("done", rq.idx, ino, ctime, r.bytes_written - before))
        except SnapshotCorrupt as e:
            send_frame(res, ("err", rq.idx, "corrupt", str(e)))
        except OSError as e:
            send_frame(res, ("err", rq.idx, "os", [e.errno or 0, str(e)]))
        except Exception as e:  # reported to the parent, which raises it
            send_frame(res, ("err", rq.idx, "other", repr(e)))
        finally:
            if rq.name:
                os.close(fd)

"""Capture worker process (child side), started by readerpool with two socket fds.

Python threads share one GIL, so hashing + compressing a root filesystem of small files
cannot use both cores from one process. The capture therefore hands batches of files to
worker processes that open, read, chunk, hash and compress them, and stream back (over a
SOCK_STREAM socket, the typed messages of messages.py, one per frame) the chunk lists and
the encoded chunks that are new to them. A batch is a Request: up to REQUEST_FILES names of
one directory, sent with that directory's fd (SCM_RIGHTS over a SOCK_SEQPACKET socket),
which the parent opened beneath the state's root without following a symlink and checked
against the walk's inode. The worker opens each name only through fsutil.open_regular on
that fd (O_PATH | O_NOFOLLOW, fstat, reopen of that inode via /proc/self/fd): never a
symlink followed, never a device or fifo opened; it takes no other path from anywhere. One
message per batch each way, not one per file (100,000 small files: 99,050 sendmsg calls
and as many reader wake-ups were the parent's largest cost).
The parent stays the only writer of the repository: it deduplicates exactly, counts stored
bytes and turns ENOSPC into StorageFull.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import socket
from array import array
from collections import deque
from collections.abc import Callable

import blake3
import msgspec
import zstandard
from pyfastcdc import FastCDC

from .. import tuning
from ..fs import fsutil
from ..repository.chunker import iter_chunks
from ..repository.repository import compressor, encode_payload
from ..workerproc import child, frames
from .messages import (
    REQUEST_MAX,
    Blobs,
    Done,
    Failed,
    FileResult,
    Gone,
    PackedChunks,
    ReaderMessage,
    Request,
    Results,
    Setup,
    StoredChunks,
)

_encoder = msgspec.msgpack.Encoder()
_out = bytearray()  # one frame being sent: its length, then the message encoded after it


def _send(res: socket.socket, msg: ReaderMessage) -> None:
    """One frame (frames.py), encoded into a buffer behind room for its length: a result
    frame carries ~256 KiB of small files' bytes, which frames.send copied once more to
    put the length in front (a reader's memcpy was ~10 % of its instructions)."""
    _encoder.encode_into(msg, _out, frames.FRAME.size)
    frames.FRAME.pack_into(_out, 0, len(_out) - frames.FRAME.size)
    res.sendall(_out)
    if len(_out) > 1 << 20:
        _out.clear()  # a bigger file's chunks (up to READER_BATCH): not held between frames


def _process(idx: int, fd: int, st: os.stat_result, setup: Setup, known: set[bytes],
             cdc: FastCDC, zc: zstandard.ZstdCompressor, res: socket.socket, first: int = 0,
             nread_before: int = 0) -> Done | Gone:
    """One open regular file (st: its fstat as opened) read, re-read while it changes;
    from attempt `first` on (_whole made the first, reading nread_before bytes)."""
    blobs: StoredChunks = []
    packed: PackedChunks = []
    pending = raw = 0
    nread_total = nread_before
    same = True
    for attempt in range(first, tuning.READ_RETRIES + 1):
        chunks: list[tuple[bytes, int]] = []
        nread = [0]
        small = st.st_size <= tuning.INLINE_MAX
        pieces: list[tuple[bytes, bytes, int]] = []
        fixed = setup.block_size if st.st_size >= setup.big_file else 0  # chunker.fixed_block
        whole = 0 < st.st_size <= min(setup.chunk_min, tuning.INLINE_MAX) and (
            st.st_blocks * 512 >= st.st_size)
        if whole:
            # one chunk, and all its blocks allocated, so no hole to skip: what iter_chunks
            # gives, without its SEEK_DATA/SEEK_HOLE calls and generators (most files)
            body = fsutil.pread_full(fd, st.st_size, 0)
            nread[0] = len(body)
            raw += len(body)
            if body:
                cid = blake3.blake3(body, key=setup.key).digest()
                chunks.append((cid, 0))
                pieces.append((cid, body, 0))
        for data, off in () if whole else iter_chunks(fd, st.st_size, cdc, setup.chunk_min,
                                                       nread, fixed):
            cid = blake3.blake3(data, key=setup.key).digest()
            chunks.append((cid, off))
            raw += len(data)
            if small:  # one chunk: goes into the capture's tiny pack; several: stored below
                pieces.append((cid, bytes(data), off))
                continue
            if cid not in known:
                known.add(cid)
                if len(data) <= tuning.INLINE_MAX:  # small: into the parent's tiny pack, raw
                    packed.append((cid, bytes(data)))
                    pending += len(data)
                else:
                    payload = encode_payload(zc, data)
                    blobs.append((cid, payload))
                    pending += len(payload)
            if pending >= tuning.READER_BATCH or raw >= tuning.READER_BATCH:
                _send(res, Blobs(idx, blobs, raw, packed))
                blobs, packed, pending, raw = [], [], 0, 0
        tiny = b""
        if len(pieces) == 1:
            tiny = pieces[0][1]  # the parent packs all small files of the capture together
        else:
            for cid, data, _off in pieces:
                if cid not in known:
                    known.add(cid)
                    packed.append((cid, data))
        nread_total += nread[0]
        xattrs = fsutil.read_xattrs(fd)  # a change to them moves ctime: seen just below
        st2 = os.fstat(fd)
        same = (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if same or attempt == tuning.READ_RETRIES:
            break
        st = st2
    info = (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns, st2.st_ino, st2.st_mode,
            st2.st_uid, st2.st_gid)
    return Done(idx, blobs, raw, chunks, info, nread_total, not same, tiny, packed, xattrs)


def _whole(idx: int, fd: int, st: os.stat_result, key: bytes) -> Done | tuple[
        os.stat_result, int]:
    """Most files, on a short path (a reader's per-file Python was ~40 % of its CPU): one
    chunk whose blocks are all allocated (no hole to skip: what _process's iter_chunks
    would give, without its SEEK_DATA/SEEK_HOLE calls and generators), read with one
    pread, unchanged while read. Else (its fstat now, bytes read): it changed while read,
    and _process reads it again from its second attempt on."""
    size = st.st_size
    body = os.pread(fd, size, 0)
    if len(body) != size:
        return os.fstat(fd), len(body)  # shorter now
    xattrs = fsutil.read_xattrs(fd)  # a change to them moves ctime: seen just below
    st2 = os.fstat(fd)
    if st2.st_size != size or st2.st_mtime_ns != st.st_mtime_ns or (
            st2.st_ctime_ns != st.st_ctime_ns):
        return st2, size
    return Done(idx, [], size, [(blake3.blake3(body, key=key).digest(), 0)],
                (size, st2.st_mtime_ns, st2.st_ctime_ns, st2.st_ino, st2.st_mode, st2.st_uid,
                 st2.st_gid), size, False, body, [], xattrs)


def _open(names: list[bytes], sizes: list[int],
          dfd: int) -> list[tuple[int, os.stat_result] | OSError]:
    """Each name's fd (fsutil.open_regular beneath dfd), or why it could not be opened;
    each announced to the kernel (WILLNEED) so the batch's reads overlap on a cold disk.
    Once a file is held under another process's lease past tuning.LEASE_WAIT (the capture
    fails), the others are tried once each: a tenant holding many is not a wait for each."""
    out: list[tuple[int, os.stat_result] | OSError] = []
    prefetch = tuning.PREFETCH_MAX
    wait: float | None = None
    for name, size in zip(names, sizes, strict=True):
        if not name or b"/" in name or name in (b".", b".."):  # one component, never more
            out.append(OSError(0, f"not a file name: {name!r}"))
            continue
        try:
            fd, st = fsutil.open_regular_stat(name, dfd, wait)
        except OSError as err:
            if err.errno == errno.EWOULDBLOCK:
                wait = 0
            out.append(err)
            continue
        out.append((fd, st))
        if size:
            try:  # noqa: SIM105 (contextlib.suppress: an object and two calls per file)
                os.posix_fadvise(fd, 0, min(size, prefetch), os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # advice only
    return out


Opened = list[tuple[int, os.stat_result] | OSError]
_CLOSED_FD = OSError(0, "closed")  # in an Opened list: read and closed (made once, not per file)


def _batch(req: Request, opened: Opened, setup: Setup, known: set[bytes], cdc: FastCDC,
           zc: zstandard.ZstdCompressor, res: socket.socket) -> None:
    """One request, its files opened (_open): read and answered in Results frames of
    about READER_RESULTS bytes."""
    out: list[FileResult] = []
    pending = 0
    key, limit = setup.key, tuning.READER_RESULTS
    # one chunk, read whole (chunker: a file up to chunk_min is never cut)
    whole_max = min(setup.chunk_min, tuning.INLINE_MAX)
    try:
        for k, (idx, got) in enumerate(zip(req.idxs, opened, strict=True)):
            if isinstance(got, OSError):  # out of descriptors or memory, a lease: not gone
                out.append(Failed(idx, got.strerror or str(got)) if got.errno in fsutil.NOT_GONE
                           else Gone(idx, f"vanished or replaced during capture ({got})"))
                continue
            r: FileResult
            fd, st = got
            try:
                if 0 < st.st_size <= whole_max and st.st_blocks * 512 >= st.st_size:
                    w = _whole(idx, fd, st, key)
                    if isinstance(w, Done):
                        r = w
                    else:  # changed while read: read again (its second attempt on)
                        r = _process(idx, fd, w[0], setup, known, cdc, zc, res, 1, w[1])
                else:
                    r = _process(idx, fd, st, setup, known, cdc, zc, res)
            except OSError as e:
                r = Failed(idx, f"{e.strerror or e}")
            finally:
                os.close(fd)
                opened[k] = _CLOSED_FD
            out.append(r)
            if type(r) is Done:
                pending += len(r.tiny)
                if r.blobs or r.packed:
                    pending += sum(len(p) for _c, p in r.blobs) + sum(
                        len(d) for _c, d in r.packed)
                if pending >= limit:
                    _send(res, Results(out, False))
                    out, pending = [], 0
    finally:
        _close(opened)
    _send(res, Results(out, True))


def main() -> None:
    # Nothing a reader makes is cyclic garbage; the collector would only walk its set of
    # known ids again and again.
    gc.disable()
    req, res = child.sockets()
    # Room for several result frames on their way: the parent takes them in between the
    # directories it walks, and a reader whose frame does not fit waits in sendall
    # (100k small files: half of each reader's time with the default ~200 KiB). The kernel
    # caps it at net.core.wmem_max.
    with contextlib.suppress(OSError):
        res.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, tuning.READER_SOCKET_BUFFER)
    setup = msgspec.msgpack.decode(frames.recv(res), type=Setup)
    known = {setup.known[i : i + 32] for i in range(0, len(setup.known), 32)}
    cdc = FastCDC(setup.chunk_avg, min_size=setup.chunk_min, max_size=setup.chunk_max)
    zc = compressor(setup.level, setup.hash_log)
    decode = msgspec.msgpack.Decoder(Request).decode
    # Every request already queued on the socket (up to READER_WINDOW) is taken in and
    # its files opened and announced (WILLNEED) before the first is read: on a cold disk
    # a request is often a directory of a few files, and the reads of one at a time left
    # the disk's queue nearly empty (the parent keeps the window full).
    queued: deque[tuple[Request, Opened]] = deque()
    try:
        while True:
            got = _receive(req, decode, block=not queued)
            if got is not None:
                if got[0] is _CLOSED:
                    return  # the parent closed the channel: done
                if got[1] is None:
                    _send(res, Results([Failed(i, "no directory descriptor received")
                                        for i in got[0].idxs], True))
                else:
                    queued.append(_take(got[0], got[1]))
                continue  # take in what else is queued first
            request, opened = queued.popleft()
            _batch(request, opened, setup, known, cdc, zc, res)
    finally:
        for _r, opened in queued:
            _close(opened)


_CLOSED = Request([], [], [])  # what _receive gives once the parent closed the channel


def _receive(req: socket.socket, decode: Callable[[bytes], Request],
             block: bool) -> tuple[Request, int | None] | None:
    """The next request and its directory fd (None: none came with it); (_CLOSED, None)
    once the parent closed the channel; None when not `block` and nothing is queued."""
    fds = array("i")
    try:  # recvmsg, not socket.recv_fds: Python 3.11's ignores its flags (MSG_DONTWAIT)
        msg, anc, _flags, _addr = req.recvmsg(REQUEST_MAX, socket.CMSG_LEN(fds.itemsize),
                                              0 if block else socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not msg:
        for fd in fds:
            os.close(fd)
        return _CLOSED, None
    for extra in fds[1:]:
        os.close(extra)
    return decode(msg), (fds[0] if fds else None)


def _take(request: Request, dfd: int) -> tuple[Request, Opened]:
    """A request's files opened beneath its directory fd, which is closed then."""
    try:
        return request, _open(request.names, request.sizes, dfd)
    finally:
        os.close(dfd)


def _close(opened: Opened) -> None:
    for got in opened:
        if not isinstance(got, OSError):
            os.close(got[0])


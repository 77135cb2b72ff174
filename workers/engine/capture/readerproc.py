"""Capture worker process (child side), started by readerpool with two socket fds.

Python threads share one GIL, so hashing + compressing a root filesystem of small files
cannot use both cores from one process. The capture therefore hands already opened file
descriptors (SCM_RIGHTS over a SOCK_SEQPACKET socket) to worker processes that read,
chunk, hash and compress, and stream back (over a SOCK_STREAM socket, the typed messages
of messages.py, one per frame) the chunk list and the encoded chunks that are new to them.
The parent stays the only writer of the repository: it deduplicates exactly, counts stored bytes and
turns ENOSPC into StorageFull. A worker never opens a path itself, so the parent's
symlink-safe opening rules hold unchanged.
"""

from __future__ import annotations

import os
import socket
import stat

import blake3
import msgspec
import zstandard
from pyfastcdc import FastCDC

from .. import tuning
from ..repository.chunker import iter_chunks
from ..repository.repository import encode_payload
from ..workerproc import child, frames
from .messages import (
    REQ,
    Blobs,
    Done,
    Failed,
    Gone,
    PackedChunks,
    ReaderMessage,
    Setup,
    StoredChunks,
)

_encode = msgspec.msgpack.Encoder().encode


def _send(res: socket.socket, msg: ReaderMessage) -> None:
    frames.send(res, _encode(msg))


def _process(idx: int, fd: int, setup: Setup, known: set[bytes], cdc: FastCDC,
             zc: zstandard.ZstdCompressor, res: socket.socket) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        _send(res, Gone(idx, "replaced by a non-regular file during capture"))
        return
    blobs: StoredChunks = []
    packed: PackedChunks = []
    pending = raw = 0
    nread_total = 0
    same = True
    for attempt in range(tuning.READ_RETRIES + 1):
        chunks: list[tuple[bytes, int]] = []
        nread = [0]
        small = st.st_size <= tuning.INLINE_MAX
        pieces: list[tuple[bytes, bytes, int]] = []
        fixed = setup.block_size if st.st_size >= setup.big_file else 0  # chunker.fixed_block
        for data, off in iter_chunks(fd, st.st_size, cdc, setup.chunk_min, nread, fixed):
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
        st2 = os.fstat(fd)
        same = (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if same or attempt == tuning.READ_RETRIES:
            break
        st = st2
    info = (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns, st2.st_ino, st2.st_mode,
            st2.st_uid, st2.st_gid)
    _send(res, Done(idx, blobs, raw, chunks, info, nread_total, not same, tiny, packed))


def main() -> None:
    req, res = child.sockets()
    setup = msgspec.msgpack.decode(frames.recv(res), type=Setup)
    known = {setup.known[i : i + 32] for i in range(0, len(setup.known), 32)}
    cdc = FastCDC(setup.chunk_avg, min_size=setup.chunk_min, max_size=setup.chunk_max)
    zc = zstandard.ZstdCompressor(level=setup.level)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(req, REQ.size, 1)
        if not msg:
            return  # the parent closed the channel: done
        (idx,) = REQ.unpack(msg)
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            _send(res, Failed(idx, "no file descriptor received"))
            continue
        try:
            _process(idx, fds[0], setup, known, cdc, zc, res)
        except OSError as e:
            _send(res, Failed(idx, f"{e.strerror or e}"))
        finally:
            os.close(fds[0])


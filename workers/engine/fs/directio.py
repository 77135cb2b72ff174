"""O_DIRECT reads and writes of aligned blocks, for images.

Measured on this VM (300 MiB, cold cache): a buffered read costs 0.44 s of kernel CPU
(page-cache insertion and copy) where an O_DIRECT read costs 0.01 s and finishes in a
third of the time; a buffered write + fsync takes 0.85 s where O_DIRECT + fsync takes
0.28 s. Images are read and written in large aligned blocks, exactly the case O_DIRECT
suits; everything unaligned (a partial last block, odd block sizes) and filesystems that
refuse O_DIRECT (tmpfs) fall back to the buffered fd. O_DIRECT does not make data durable
by itself: callers still fsync. Reads stay coherent with other writers: the kernel writes
back a dirty page-cache range before it reads it directly.
"""

from __future__ import annotations

import errno
import mmap
import os

ALIGN = 4096  # covers 512-byte and 4 KiB logical sector sizes
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def reopen_direct(fd: int, flags: int) -> int | None:
    """A second fd on the same open file with O_DIRECT (through /proc: no name lookup, so
    nothing can be swapped in), or None where the filesystem or platform refuses it."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | _O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def aligned(offset: int, length: int) -> bool:
    return offset % ALIGN == 0 and length % ALIGN == 0


def buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer (anonymous mmap), as O_DIRECT needs."""
    return mmap.mmap(-1, max(ALIGN, -(-size // ALIGN) * ALIGN))


def pread(direct: int | None, fd: int, buf: mmap.mmap, length: int,
          offset: int) -> memoryview:
    """Read up to length bytes at offset into buf; returns the view of what was read (short
    only at end of file). Direct when offset is aligned; the read length is rounded up to
    the alignment, which O_DIRECT allows at end of file."""
    view = memoryview(buf)
    got = 0
    if direct is not None and offset % ALIGN == 0:
        want = -(-length // ALIGN) * ALIGN
        try:
            while got < length:
                n = os.preadv(direct, [view[got:want]], offset + got)
                if n <= 0:
                    break
                got += n
                if got % ALIGN:
                    break  # end of file reached mid-sector
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            got = 0  # this file or device refuses it after all: read it buffered
        else:
            return view[:min(got, length)]
    while got < length:
        n = os.preadv(fd, [view[got:length]], offset + got)
        if n <= 0:
            break
        got += n
    return view[:got]


def pread_any(direct: int | None, fd: int, buf: mmap.mmap, length: int,
              offset: int) -> memoryview:
    """pread() at any offset: the aligned range around [offset, offset + length) is read
    into buf (at least length + 2 * ALIGN bytes); returns the view of those bytes (short
    only at end of file)."""
    head = offset % ALIGN
    return pread(direct, fd, buf, head + length, offset - head)[head:]


def pwrite(direct: int | None, fd: int, buf: mmap.mmap, data: bytes | memoryview,
           offset: int) -> None:
    """Write all of data at offset: directly (through buf) when offset and length are
    aligned, else through the buffered fd."""
    n = len(data)
    if direct is not None and aligned(offset, n) and n <= len(buf):
        memoryview(buf)[:n] = data
        write_buffer(direct, fd, buf, n, offset)
        return
    _write_buffered(fd, memoryview(data), offset)


def write_buffer(direct: int | None, fd: int, buf: mmap.mmap, n: int, offset: int) -> None:
    """Write the first n bytes of buf at offset (what pwrite does once it copied its data
    there): directly when offset and length are aligned, else through the buffered fd."""
    view = memoryview(buf)[:n]
    done = 0
    if direct is not None and aligned(offset, n):
        try:
            while done < n:
                done += os.pwrite(direct, view[done:], offset + done)
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    _write_buffered(fd, view[done:], offset + done)


def _write_buffered(fd: int, view: memoryview, offset: int) -> None:
    while view:
        w = os.pwrite(fd, view, offset)
        view = view[w:]
        offset += w

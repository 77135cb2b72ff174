"""Trusted record of what a restore left in a server's state, to skip re-reading it.

Restore may reuse a current file only when its content is proven identical to the
snapshot's. Hashing the whole current tree costs as much as rewriting it, so identity is
first established without reading, from facts a tenant cannot forge:

* the inode is the one the snapshot captured: (st_ino, st_ctime_ns) equal the manifest
  entry's (ctime is set by the kernel on every change and cannot be set by utime); or
* the inode is one a previous restore left there: after each restore the engine records,
  per regular file, (st_ino, st_ctime_ns, digest of the chunk list it holds) in the
  repository (`states/<hash of state path>-<host id>`, out of the tenant's reach; per
  host, as two hosts of one S3 repository may each have a state at one path).

Anything else is verified by chunking and hashing it. A missing, stale or unreadable
record only costs speed: every use re-checks ino and ctime against a live fstat.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterable

import blake3
import msgspec

from ..fs import fsutil
from ..repository.backend import Backend
from ..repository.manifest import FILE, Entry

Record = dict[bytes, tuple[int, int, bytes]]  # path -> (ino, ctime_ns, content digest)
# The st_dev of the recorded files, kept in the record under the one path no regular file
# has (b"", the root directory's) as (dev, 0, b""): an (ino, ctime) vouches for an inode of
# that filesystem only (reuse.py). A record without it (written before) vouches for none.
_DEV_PATH = b""


def content_digest(e: Entry) -> bytes:
    """What the file holds, as a short value: its size, chunk list and xattrs (a single
    chunk's id, which is a keyed hash of its bytes, is used as is: most files are one
    chunk and have no xattrs). The xattrs are in it so that a record's match vouches for
    them too: setxattr moves ctime, so an inode whose (ino, ctime) still match holds the
    xattrs the restore that recorded it wrote, and the patch keeps it without reading any."""
    if len(e.chunks) == 1 and not e.xattrs:
        cid, off = e.chunks[0]
        return cid + struct.pack(">QQ", e.size, off)
    h = blake3.blake3(struct.pack(">Q", e.size))
    for cid, off in e.chunks:
        h.update(cid + struct.pack(">Q", off))
    for name, value in e.xattrs:
        raw = name.encode()
        h.update(struct.pack(">II", len(raw), len(value)) + raw + value)
    return h.digest(16)


HOST_ID_FILE = "host-id"


def host_id(local_dir: str) -> str:
    """This host's id for its records in a shared (S3) repository: a random one kept in its
    local directory (made once; concurrent first callers agree, the first link wins). A
    host whose directory cannot be written gets a new one each time: its records only miss."""
    path = os.path.join(local_dir, HOST_ID_FILE)
    for _ in range(2):
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                got = f.read(64).strip().decode("ascii", "replace")
            if len(got) == 32 and all(c in "0123456789abcdef" for c in got):
                return got
        new = os.urandom(16).hex()
        try:
            os.makedirs(local_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{new[:8]}"
            with open(tmp, "xb") as f:
                f.write(new.encode())
            try:
                os.link(tmp, path)  # never replaces another's id
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError:
            return new
    return new


STATES_PREFIX = "states/"


def obsolete(key: str, shared: bool) -> bool:
    """A record no engine of this version reads (StateCache.key): of an older format
    (states/<hash> and states/<hash>-2: no "-3"), or, in a shared (S3) repository, keyed
    by the path alone (before records were per host). Nothing else ever deletes them
    (the reclaim does, Engine.reclaim): a million-file state's record is ~90 MB."""
    parts = key.rsplit("/", 1)[-1].split("-")
    return parts[-1] != "3" or (shared and len(parts) != 3)


class StateCache:
    def __init__(self, backend: Backend, state_path: str, host: str = "") -> None:
        """host: host_id() where several hosts share the repository (S3), "" where one
        host has it (file://)."""
        self.backend = backend
        digest = blake3.blake3(os.fsencode(os.path.normpath(state_path))).hexdigest()[:32]
        # "-3": records written since restores take a sync point and whose digest covers
        # the xattrs (older ones are ignored: one restore proves by content again); an S3
        # host's own key (records keyed by the path alone are ignored: one restore proves)
        self.key = (f"{STATES_PREFIX}{digest}-{host}-3" if host
                    else f"{STATES_PREFIX}{digest}-3")

    def load(self) -> tuple[int, Record]:
        """(st_dev of the recorded files, the record); (0, {}) if there is none."""
        try:
            record = msgspec.msgpack.decode(self.backend.get(self.key),
                                            type=dict[bytes, tuple[int, int, bytes]])
        except (OSError, msgspec.DecodeError):
            return 0, {}
        return record.pop(_DEV_PATH, (0, 0, b""))[0], record

    def save(self, record: Record, dev: int) -> None:
        """Save the record of files on device `dev` (which it is given as an item)."""
        record[_DEV_PATH] = (dev, 0, b"")
        self.save_encoded(msgspec.msgpack.encode(record))

    def save_encoded(self, data: bytes) -> None:
        """A record already encoded (WrittenRecord.encode)."""
        with contextlib.suppress(OSError):  # only an optimisation
            self.backend.put(self.key, data)

    def forget(self) -> None:
        self.backend.delete(self.key)


_encode = msgspec.msgpack.Encoder().encode


class WrittenRecord:
    """The record's part a restore writes itself: path -> (ino, ctime, digest) of each file
    as it was written, skipping `skip` (the targets of hard links), kept as the msgpack of
    a map's items (~90 bytes a file, not a ~310-byte dict item of a million-file restore).
    `keep` False (a restore worker process, whose parent keeps the record): only `last`.
    Not thread-safe: its writers hold a lock."""

    def __init__(self, skip: set[bytes]) -> None:
        self.skip = skip
        self.keep = True
        self.last = (0, 0)  # (ino, ctime) of the file added last
        self.newest = 0  # the latest ctime added (syncpoint.wait_past before the swap)
        self._items = bytearray()
        self._count = 0

    def add(self, e: Entry, ino: int, ctime: int) -> None:
        self.last = (ino, ctime)
        self.newest = max(self.newest, ctime)
        if self.keep and e.path not in self.skip:
            self._items += _encode(e.path)
            self._items += _encode((ino, ctime, content_digest(e)))
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def encode(self, more: Record, dev: int) -> bytes:
        """The record as StateCache.save(record, dev) encodes it, its items then more's
        (which, like dict.update, win where a path is in both; `more` is given the dev)."""
        more[_DEV_PATH] = (dev, 0, b"")
        n = self._count + len(more)
        head = (bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n) if n < 1 << 16
                else b"\xdf" + struct.pack(">I", n))
        tail = _encode(more)
        tail = tail[1 if len(more) < 16 else 3 if len(more) < 1 << 16 else 5:]  # its items
        return b"".join((head, self._items, tail))


def record_tree(root_fd: int, entries: Iterable[Entry], linked: set[bytes],
                digest: Callable[[Entry], bytes] = content_digest) -> Record:
    """(ino, ctime) of the regular files now in the tree, as the manifest describes them."""
    out: Record = {}
    dir_path: bytes | None = None
    dfd = -1
    try:
        for e in entries:
            if e.kind != FILE or e.path in linked:
                continue
            parent, _, name = e.path.rpartition(b"/")
            if parent != dir_path:
                if dfd >= 0:
                    os.close(dfd)
                    dfd = -1
                dir_path = parent
                try:
                    dfd = fsutil.open_dir_beneath(root_fd, fsutil.split(parent))
                except OSError:
                    continue
            if dfd < 0:
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink == 1 and st.st_size == e.size and st.st_mtime_ns == e.mtime_ns:
                out[e.path] = (st.st_ino, st.st_ctime_ns, digest(e))
    finally:
        if dfd >= 0:
            os.close(dfd)
    return out

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.support import rgw
from tests.support.seaweed import S3_BUCKET, SeaweedProcess
from workers.engine import Engine, SnapshotMeta, StateSpec
from workers.engine.model import StorageOptions
from workers.engine.repository import packformat
from workers.engine.repository.backend import LocalBackend
from workers.engine.repository.manifest import Entry
from workers.engine.repository.repository import chunk_key

MetaFn = Callable[..., SnapshotMeta]
# A test module that holds for both repositories says: pytestmark = BOTH_BACKENDS. The
# s3:// one is SeaweedFS; with SNAPSHOTS_TEST_RGW=1 also Ceph RGW (tests/support/rgw.py).
BOTH_BACKENDS = pytest.mark.parametrize("backend_kind", [
    "file", "s3", pytest.param("rgw", marks=pytest.mark.skipif(
        rgw.available() is not None, reason=str(rgw.available())))], indirect=True)
RGW_BUCKET = rgw.BUCKET


def make_meta(snapshot_id: int, server_id: int = 1) -> SnapshotMeta:
    return SnapshotMeta(snapshot_id=snapshot_id, server_id=server_id, server_name="web-01",
                        account="acme", name=f"snap-{snapshot_id}", description=None,
                        created_at="2026-01-01T00:00:00Z")


def dir_state(path: Path | str) -> StateSpec:
    return StateSpec(kind="directory", path=str(path))


@pytest.fixture
def backend_kind(request: pytest.FixtureRequest) -> str:
    """"file" unless a module parametrizes it: pytestmark = BOTH_BACKENDS."""
    return str(getattr(request, "param", "file"))


@pytest.fixture
def storage_options(backend_kind: str, tmp_path: Path,
                    request: pytest.FixtureRequest) -> StorageOptions | None:
    if backend_kind == "file":
        return None
    store: SeaweedProcess | rgw.RgwProcess = request.getfixturevalue(
        "rgw_server" if backend_kind == "rgw" else "seaweed")
    return store.options(cache_dir=str(tmp_path / "host-cache"), lock_settle=0.05)


@pytest.fixture
def repo_url(backend_kind: str, tmp_path: Path) -> str:
    if backend_kind == "file":
        return f"file://{tmp_path / 'repo'}"
    return f"s3://{RGW_BUCKET if backend_kind == 'rgw' else S3_BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture
def open_engine(repo_url: str, storage_options: StorageOptions | None) -> Callable[[], Engine]:
    """A new Engine on the test's repository (as another process would open it)."""
    return lambda: Engine(repo_url, storage_options)


@pytest.fixture
def engine(open_engine: Callable[[], Engine]) -> Engine:
    return open_engine()


def repo_dir(engine: Engine) -> Path:
    """The directory of a file:// repository (tests that reach into its files)."""
    assert isinstance(engine.backend, LocalBackend)
    return Path(engine.backend.root)


def record_barriers(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> list[object]:
    """Record the keys argument of every durability barrier the engine's backend runs."""
    seen: list[object] = []
    orig = engine.backend.barrier

    def barrier(keys: Sequence[str] | None) -> None:
        seen.append(None if keys is None else list(keys))
        orig(keys)

    monkeypatch.setattr(engine.backend, "barrier", barrier)
    return seen


def posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """Kernel xattr form of a POSIX ACL: version 2, then (tag u16, perm u16, id u32)."""
    return struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident & 0xFFFFFFFF) for tag, perm, ident in entries)


def build_full_tree(root: Path) -> None:
    """A tree holding every kind of entry the engine must preserve."""
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("web-01\n")
    (root / "empty-dir").mkdir()
    (root / "empty-file").touch()
    big = os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(2 << 20)
    (root / "big.bin").write_bytes(big)
    (root / "dup.bin").write_bytes(big)  # deduplicated against big.bin
    sparse = root / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"data in the middle" * 1000)
        f.seek((64 << 20) - 5)
        f.write(b"tail!")
    suid = root / "suid"
    suid.write_bytes(b"#!/bin/sh\n")
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    sgid = root / "shared"
    sgid.mkdir()
    os.chown(sgid, 1234, 5678)
    os.chmod(sgid, 0o2775)
    sticky = root / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    owned = root / "tmp" / "owned"
    owned.write_text("mine")
    os.chown(owned, 1001, 1002)
    os.chmod(owned, 0o640)
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("etc/hostname", root / "rel-link")
    os.symlink("missing", root / "dangling")
    os.lchown(root / "rel-link", 1001, 1001)
    (root / "hl-a").write_text("linked content")
    os.link(root / "hl-a", root / "etc" / "hl-b")
    os.link(root / "hl-a", root / "shared" / "hl-c")
    os.mkfifo(root / "fifo", 0o620)
    os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "loop9", 0o660 | 0o060000, os.makedev(7, 9))
    weird = os.path.join(os.fsencode(root), b"caf\xe9-\xff\xfe")
    with open(weird, "wb") as f:
        f.write(b"latin-1 name")
    os.mkdir(os.path.join(os.fsencode(root), b"dir-\x80"))
    os.setxattr(root / "etc" / "hostname", "user.comment", b"hello")
    os.setxattr(root / "etc" / "hostname", "trusted.secret", b"\x00\x01binary")
    os.setxattr(root / "shared", "user.dir", b"on a dir")
    os.setxattr(root / "abs-link", "trusted.onlink", b"symlink xattr", follow_symlinks=False)
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-m", "u:1001:rwx", str(root / "shared")], check=True)
        subprocess.run(["setfacl", "-d", "-m", "g:1002:rx", str(root / "shared")], check=True)
    else:  # no acl tools: write the POSIX ACL xattr the kernel understands directly
        os.setxattr(root / "tmp" / "owned", "system.posix_acl_access", posix_acl(
            [(0x01, 6, -1), (0x02, 7, 1001), (0x04, 4, -1), (0x10, 7, -1), (0x20, 0, -1)]))
        os.setxattr(root / "shared", "system.posix_acl_default", posix_acl(
            [(0x01, 7, -1), (0x04, 5, -1), (0x08, 5, 1002), (0x10, 5, -1), (0x20, 5, -1)]))
    # mtimes with odd nanoseconds, set last (children first) so they are not disturbed
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda q: -len(q.parts))):
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_987_654_321 + i),
                 follow_symlinks=False)
    os.utime(root, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))


def stored_at(engine: Engine, e: Entry, i: int = 0) -> tuple[bytes, int]:
    """(id of the object holding chunk i of entry e, an offset inside that chunk's stored
    bytes): a pack's, or (written by earlier versions) a chunk object's own."""
    if e.pack:
        pack, off, ln = e.pack, e.pack_off, e.pack_len
    else:
        found = next((s for s in e.slices if s[0] == i), None)
        if found is None:
            cid = e.chunks[i][0]
            return cid, (engine.backend.stat(chunk_key(cid)) or 0) // 2
        _i, pack, off, ln = found
    head = engine.backend.get_head(chunk_key(pack), packformat.HEADER_MAX)
    lay = packformat.pack_layout(head)
    f = lay.frames[packformat.span(lay, off, max(ln, 1))[0]]
    return pack, (f.start + f.end) // 2

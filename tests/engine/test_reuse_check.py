"""The one check both restores rely on: "this current file is the snapshot's" (reuse.py).

Every case runs against real files the way a tenant would prepare them: a symlink where a
file was, a second hard link, forged mtimes, changed xattrs, content changed behind
unchanged metadata. The last tests show the rebuild and the patch take the same decision.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from workers.engine import Engine
from workers.engine.fs import fsutil
from workers.engine.fs.syncpoint import sync_point
from workers.engine.repository.manifest import Entry
from workers.engine.restore.reuse import ReuseCheck
from workers.engine.restore.statecache import content_digest

from .conftest import dir_state, make_meta
from .treecmp import assert_same


@pytest.fixture
def captured(engine: Engine, tmp_path: Path) -> tuple[Path, Entry]:
    """srv/f captured as snapshot 1, and its manifest entry."""
    src = tmp_path / "srv"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(50_000))
    os.setxattr(src / "f", "user.tag", b"one")
    engine.capture(make_meta(1), dir_state(src))
    _h, body = engine.repo.get_manifest(1)
    entry = next(e for e in body.entries if e.path == b"f")  # type: ignore[union-attr]
    return src, entry


def _check(engine: Engine, directory: Path) -> ReuseCheck:
    """A ReuseCheck as a restore sets it up: after its sync point, trusting a manifest whose
    ctimes vouch for content (every capture since sync points were introduced)."""
    check = ReuseCheck(engine.repo)
    fd = os.open(directory, fsutil.DIR_FLAGS)
    try:
        check.sync = sync_point(fd)
        check.captured_dev = check.known_dev = os.fstat(fd).st_dev  # all on one filesystem
    finally:
        os.close(fd)
    return check


def _decide(check: ReuseCheck, directory: Path, e: Entry, links: int = 1) -> str:
    """'none' (no candidate), 'trusted', 'hashed' or 'different'."""
    dfd = os.open(directory, fsutil.DIR_FLAGS)
    try:
        cand = check.candidate(dfd, b"f", e, links=links)
    finally:
        os.close(dfd)
    if cand is None:
        return "none"
    fd, st = cand
    try:
        if check.trusted(st, e):
            return "trusted"
        return "hashed" if check.proven_by_content(fd, st, e) else "different"
    finally:
        os.close(fd)


def _forge(path: Path, e: Entry) -> None:
    """Give path the entry's mtime (what a tenant can always do)."""
    os.utime(path, ns=(e.mtime_ns, e.mtime_ns))


def test_the_captured_inode_is_trusted_without_reading(engine: Engine,
                                                       captured: tuple[Path, Entry]) -> None:
    src, e = captured
    check = _check(engine, src)
    assert _decide(check, src, e) == "trusted"
    assert check.bytes_read == 0


def test_a_copy_is_proven_by_hashing(engine: Engine, captured: tuple[Path, Entry],
                                     tmp_path: Path) -> None:
    src, e = captured
    cur = tmp_path / "cur"
    cur.mkdir()
    shutil.copyfile(src / "f", cur / "f")
    os.chmod(cur / "f", e.mode & 0o7777)
    os.setxattr(cur / "f", "user.tag", b"one")
    _forge(cur / "f", e)
    check = _check(engine, cur)
    assert _decide(check, cur, e) == "hashed"
    assert check.bytes_read == e.size


def test_content_changed_behind_forged_metadata_is_different(
        engine: Engine, captured: tuple[Path, Entry]) -> None:
    src, e = captured
    with open(src / "f", "r+b") as f:
        first = f.read(1)
        f.seek(0)  # another first byte (b"X" left 1 in 256 random files as they were)
        f.write(bytes([first[0] ^ 0xFF]))  # same size; ctime moves: no longer trusted
    _forge(src / "f", e)
    assert _decide(_check(engine, src), src, e) == "different"


@pytest.mark.parametrize("change", ["symlink", "mode", "size", "xattr", "fifo"])
def test_anything_but_the_same_regular_file_is_no_candidate(
        engine: Engine, captured: tuple[Path, Entry], tmp_path: Path, change: str) -> None:
    src, e = captured
    f = src / "f"
    if change == "symlink":  # to an identical file outside the state: never followed
        outside = tmp_path / "outside"
        shutil.copy2(f, outside)
        os.setxattr(outside, "user.tag", b"one")
        f.unlink()
        f.symlink_to(outside)
    elif change == "mode":
        os.chmod(f, 0o4755)
    elif change == "size":
        with open(f, "ab") as out:
            out.write(b"more")
    elif change == "xattr":
        os.setxattr(f, "user.tag", b"two")
    else:
        f.unlink()
        os.mkfifo(f)
    if change != "symlink":
        _forge(f, e)
    assert _decide(_check(engine, src), src, e) == "none"


def test_the_link_count_is_the_callers(engine: Engine, captured: tuple[Path, Entry],
                                       tmp_path: Path) -> None:
    """The rebuild links the inode itself into staging: one link only (another name would
    carry its later changes into the restored tree). The patch keeps a hard-link group in
    place: the group's size."""
    src, e = captured
    os.link(src / "f", tmp_path / "second-name")
    check = _check(engine, src)
    assert _decide(check, src, e) == "none"
    # the extra link moved the inode's ctime: no longer trusted, but proven by hashing
    assert _decide(check, src, e, links=2) == "hashed"
    assert _decide(check, src, e, links=3) == "none"


def test_a_ctime_that_moves_while_hashing_is_no_proof(engine: Engine,
                                                      captured: tuple[Path, Entry]) -> None:
    src, e = captured
    with open(src / "f", "r+b") as f:
        f.write(f.read(1))  # same bytes, but the ctime moves: not trusted any more
    _forge(src / "f", e)
    check = _check(engine, src)
    dfd = os.open(src, fsutil.DIR_FLAGS)
    try:
        cand = check.candidate(dfd, b"f", e)
    finally:
        os.close(dfd)
    assert cand is not None
    fd, st = cand
    try:
        os.chmod(src / "f", 0o600)  # between the check of metadata and the hash
        os.chmod(src / "f", e.mode & 0o7777)
        assert not check.proven_by_content(fd, st, e)
    finally:
        os.close(fd)


def test_the_previous_restores_record_vouches_for_content_only(
        engine: Engine, captured: tuple[Path, Entry], tmp_path: Path) -> None:
    src, e = captured
    cur = tmp_path / "cur"
    cur.mkdir()
    shutil.copy2(src / "f", cur / "f")
    st = os.stat(cur / "f")
    check = _check(engine, cur)
    check.known = {b"f": (st.st_ino, st.st_ctime_ns, content_digest(e))}
    assert _decide(check, cur, e) == "trusted"
    check.known = {b"f": (st.st_ino, st.st_ctime_ns, b"another file's digest")}
    assert _decide(check, cur, e) == "hashed"
    # a record of the right content does not make other xattrs the snapshot's
    os.setxattr(cur / "f", "user.tag", b"two")
    st = os.stat(cur / "f")
    check = _check(engine, cur)
    check.known = {b"f": (st.st_ino, st.st_ctime_ns, content_digest(e))}
    assert _decide(check, cur, e) == "none"


def test_trusted_in_place_from_the_lstat_alone(
        engine: Engine, captured: tuple[Path, Entry], tmp_path: Path) -> None:
    """The patch's fast path keeps a file on its lstat (no open, no xattr read) only where
    the inode itself is trusted; a record made for other xattrs does not match."""
    src, e = captured
    check = _check(engine, src)
    assert check.trusted_in_place(os.lstat(src / "f"), e)  # the captured inode, unchanged
    assert not check.trusted_in_place(os.lstat(src / "f"), e, links=2)
    os.setxattr(src / "f", "user.tag", b"two")  # moves ctime: no longer the captured inode
    assert not check.trusted_in_place(os.lstat(src / "f"), e)
    cur = tmp_path / "cur"
    cur.mkdir()
    shutil.copy2(src / "f", cur / "f")
    os.setxattr(cur / "f", "user.tag", b"one")
    os.utime(cur / "f", ns=(e.mtime_ns, e.mtime_ns))
    st = os.lstat(cur / "f")
    check = _check(engine, cur)
    assert not check.trusted_in_place(st, e)  # not the captured inode, no record
    check.known = {b"f": (st.st_ino, st.st_ctime_ns, content_digest(e))}
    assert check.trusted_in_place(st, e)
    other = msgspec.structs.replace(e, xattrs=[("user.tag", b"two")])
    check.known = {b"f": (st.st_ino, st.st_ctime_ns, content_digest(other))}
    assert not check.trusted_in_place(st, e)  # the record vouched for other xattrs
    assert content_digest(other) != content_digest(e)


@pytest.mark.parametrize("live", [False, True], ids=["patch", "rebuild"])
def test_both_restores_rewrite_a_file_whose_xattrs_another_snapshot_set(
        engine: Engine, tmp_path: Path, live: bool) -> None:
    """Snapshot 2 differs from 1 only in one file's xattr. Restoring 1, then 2, must give 2:
    the record restore 1 left vouches for the file's content, not for its xattrs (the patch
    path once kept such a file as it was)."""
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}").write_bytes(os.urandom(2000 + i))
    os.setxattr(src / "f07", "user.tag", b"one")
    engine.capture(make_meta(1), dir_state(src))
    os.setxattr(src / "f07", "user.tag", b"two")  # moves the ctime only, not the mtime
    engine.capture(make_meta(2), dir_state(src))
    cur = tmp_path / "cur"
    engine.restore(1, dir_state(cur))
    assert os.getxattr(cur / "f07", "user.tag") == b"one"
    result = engine.restore(2, dir_state(cur), live=live)
    assert_same(src, cur)
    assert result.files_written == 1

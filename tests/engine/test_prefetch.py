"""A cold walk's metadata warmed ahead of it (fs/prefetch.py): started only once the
walk is slow, it lists directories beneath the root only (never a symlink's target, never a
FIFO opened), holds a bounded number of descriptors, and leaves neither a thread nor a
descriptor behind; the capture is the same with it."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from tests.engine.conftest import build_full_tree, dir_state, make_meta
from tests.engine.treecmp import describe
from workers.engine import Engine, tuning
from workers.engine.fs import prefetch, statepath


def _hostile(root: Path, outside: Path) -> None:
    for d in ("a/b/c", "d", "e/f"):
        (root / d).mkdir(parents=True)
        for i in range(40):
            (root / d / f"f{i}").write_bytes(b"x" * i)
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "d" / "out").symlink_to(outside)  # a directory's symlink: never listed
    os.mkfifo(root / "e" / "fifo")  # never opened (an open would block)


def _fds() -> set[tuple[str, str]]:
    """This process's descriptors with what each points at: a test checks that none is new
    after, not that the count is equal (another test's leftovers, such as a retired zygote's
    sockets, may be closed by a thread meanwhile: 29 before, 24 after, once in CI)."""
    held: set[tuple[str, str]] = set()
    for fd in os.listdir("/proc/self/fd"):
        # the listing's own descriptor, or one closed meanwhile, is gone by now
        with contextlib.suppress(OSError):
            held.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return held


def test_the_prefetch_lists_only_the_directories_beneath_the_root(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root, outside = tmp_path / "srv", tmp_path / "outside"
    _hostile(root, outside)
    listed: list[int] = []
    flags: list[int] = []
    real_scandir, real_open = os.scandir, os.open

    def scandir(fd: int) -> object:
        listed.append(os.fstat(fd).st_ino)
        return real_scandir(fd)

    def open_(name: str, fl: int, *a: object, **kw: object) -> int:
        flags.append(fl)
        return real_open(name, fl, *a, **kw)  # type: ignore[arg-type]

    before = _fds()
    root_fd = statepath.open_path(str(root))
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", open_)
    try:
        p = prefetch.MetadataPrefetch(root_fd, os.fstat(root_fd).st_dev)
        p.start()
        for t in p._threads:  # every directory listed: the threads end by themselves
            t.join(10)
        p.stop()
    finally:
        os.close(root_fd)
    dirs = {root, *(root / d for d in ("a", "a/b", "a/b/c", "d", "e", "e/f"))}
    assert sorted(listed) == sorted(d.stat().st_ino for d in dirs)
    assert outside.stat().st_ino not in listed
    assert flags and all(f & os.O_NOFOLLOW and f & os.O_DIRECTORY for f in flags)
    assert _fds() <= before
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]


def test_the_prefetch_holds_at_most_its_descriptors(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "srv"
    for i in range(50):
        (root / f"d{i}" / "sub").mkdir(parents=True)
    monkeypatch.setattr(tuning, "PREFETCH_FDS", 5)
    monkeypatch.setattr(tuning, "PREFETCH_THREADS", 1)
    root_fd = statepath.open_path(str(root))
    try:
        p = prefetch.MetadataPrefetch(root_fd, os.fstat(root_fd).st_dev)
        p.start()
        p._threads[0].join(10)
        p.stop()
        assert p._open == 0
    finally:
        os.close(root_fd)


def test_the_prefetch_lists_directories_in_the_walks_order(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Depth first, names sorted, as tree.py walks: what the walk needs next is warmed
    next (breadth first, the threads warmed the top of a big tree while the walk waited on
    the directories below)."""
    root = tmp_path / "srv"
    order = ["", "a", "a/c", "a/c/q", "a/z", "b", "b/x", "b/y"]
    for d in ("b/y", "b/x", "a/z", "a/c/q"):
        (root / d).mkdir(parents=True)
        (root / d / "f").write_bytes(b"x")
    listed: list[int] = []
    real_scandir = os.scandir

    def scandir(fd: int) -> object:
        listed.append(os.fstat(fd).st_ino)
        return real_scandir(fd)

    monkeypatch.setattr(tuning, "PREFETCH_THREADS", 1)
    root_fd = statepath.open_path(str(root))
    monkeypatch.setattr(os, "scandir", scandir)
    try:
        p = prefetch.MetadataPrefetch(root_fd, os.fstat(root_fd).st_dev)
        p.start()
        p._threads[0].join(10)
        p.stop()
    finally:
        os.close(root_fd)
    assert listed == [(root / d).stat().st_ino for d in order]


@pytest.mark.parametrize("cold_us", [0, 10**9])
def test_a_capture_with_and_without_the_prefetch_is_the_same(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, cold_us: int) -> None:
    """cold_us 0: every walk counts as slow, so the prefetch starts after the first window;
    10**9: never (a warm walk)."""
    src = tmp_path / "srv"
    build_full_tree(src)
    _hostile(src / "hostile", tmp_path / "outside")
    monkeypatch.setattr(tuning, "PREFETCH_COLD_US", cold_us)
    monkeypatch.setattr(tuning, "PREFETCH_WINDOW", 8)
    started: list[bool] = []
    orig = prefetch.MetadataPrefetch.start

    def start(self: prefetch.MetadataPrefetch) -> None:
        started.append(True)
        orig(self)

    monkeypatch.setattr(prefetch.MetadataPrefetch, "start", start)
    before = _fds()
    res = engine.capture(make_meta(1), dir_state(src))
    assert bool(started) == (cold_us == 0)
    assert _fds() <= before
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    assert describe(dst) == describe(src) and res.files > 0

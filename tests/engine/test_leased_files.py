"""A process of the server holding a file lease (fcntl F_SETLEASE) never stalls a worker.

A process that owns a file (no capability needed) can take a write lease on it; a plain
open(2) of the file by anyone else then waits until the holder releases it, or until
/proc/sys/fs/lease-break-time (45 s by default) passes: per file, a tenant that ignores the
break signal held a capture that long for each file it leased. Here the holder is a real
process of another user (uid 1000) that ignores SIGIO, or one that releases on the break.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from workers.engine import Engine, StateSpec, TransientEngineError, tuning

from .conftest import dir_state, make_meta
from .tenant import Tenant
from .treecmp import describe

# Opens each file (as root, then gives up root: a tenant owning them), takes a write lease
# on each; "ignore": SIGIO ignored (the kernel's break signal, F_SETSIG 0), the leases kept;
# "release": each lease released when its break is signalled, as a cooperative holder does.
_LEASE_HOLDER = r"""
import fcntl, os, signal, sys
mode, uid, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
fds = [os.open(p, os.O_RDWR) for p in paths]
os.setgid(uid)
os.setuid(uid)

def release(signum, frame):
    for fd in fds:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)

signal.signal(signal.SIGIO, signal.SIG_IGN if mode == "ignore" else release)
for fd in fds:
    fcntl.fcntl(fd, fcntl.F_SETSIG, 0)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("ready", flush=True)
for line in sys.stdin:
    # while a break is pending F_GETLEASE says what the lease is broken to (F_RDLCK here)
    held = [fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_UNLCK for fd in fds]
    print("held" if all(held) else "released" if not any(held) else "some", flush=True)
"""
TENANT = 1000
BOUND = 5.0  # seconds: lease-break-time is 45 s


def lease_holder(mode: str, paths: list[Path]) -> Tenant:
    for p in paths:
        os.chown(p, TENANT, TENANT)
    t = Tenant(_LEASE_HOLDER, mode, str(TENANT), *paths)
    assert t.line() == "ready"
    return t


@pytest.fixture(autouse=True)
def _leases() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a tenant of another uid)")
    if Path("/proc/sys/fs/leases-enable").read_text().strip() != "1":
        pytest.skip("file leases are disabled (fs.leases-enable=0)")


def _tree(src: Path, big: bool) -> list[Path]:
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_text(f"file {i}\n")
    if big:  # read in blocks by the big-file thread, opened as the walk meets it
        with open(src / "disk.img", "wb") as f:
            f.truncate(64 << 20)  # Config.big_file: sparse, nothing to read
        return [src / "disk.img"]
    return [src / f"f{i}" for i in (3, 7, 11, 12, 13, 14)]


@pytest.mark.parametrize("how", ["threads", "reader-processes", "big-file"])
def test_a_lease_held_on_a_file_fails_the_capture_soon_naming_it(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD",
                        0 if how == "reader-processes" else 1 << 40)
    src = tmp_path / "srv"
    leased = _tree(src, how == "big-file")
    holder = lease_holder("ignore", leased)
    try:
        t0 = time.monotonic()
        with pytest.raises(TransientEngineError) as err:
            engine.capture(make_meta(1), dir_state(src))
        took = time.monotonic() - t0
        assert holder.send("still?") == "held"  # broken only by lease-break-time
    finally:
        holder.close()
    # several leased files are not a wait for each (one reader batch holds them all)
    assert took < BOUND, took
    msg = str(err.value)
    assert any(f"reading {p.name} failed" in msg for p in leased), msg
    assert "lease" in msg, msg
    assert engine.get_snapshot(1) is None  # nothing committed without the file


@pytest.mark.parametrize("how", ["threads", "reader-processes", "big-file"])
def test_a_lease_released_on_its_break_is_captured(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD",
                        0 if how == "reader-processes" else 1 << 40)
    src = tmp_path / "srv"
    leased = _tree(src, how == "big-file")
    holder = lease_holder("release", leased)
    try:
        t0 = time.monotonic()
        result = engine.capture(make_meta(1), dir_state(src))
        took = time.monotonic() - t0
        assert holder.send("still?") == "released"  # the capture's open broke them
    finally:
        holder.close()
    assert took < BOUND, took
    assert result.files == len(list(src.iterdir())) and not result.warnings
    ref = describe(src)
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    assert describe(dst) == ref


@pytest.mark.parametrize("live", [False, True], ids=["stopped", "live"])
def test_a_restore_rewrites_a_leased_file_instead_of_waiting_to_prove_it(
        engine: Engine, tmp_path: Path, live: bool) -> None:
    src = tmp_path / "srv"
    leased = _tree(src, False)
    for p in leased:
        os.chown(p, TENANT, TENANT)
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    for p in leased:  # the same bytes written again: its ctime moved, so it must be proven
        st = p.stat()
        p.write_text(p.read_text())
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    holder = lease_holder("ignore", leased)
    try:
        t0 = time.monotonic()
        result = engine.restore(1, dir_state(src), live=live)
        took = time.monotonic() - t0
    finally:
        holder.close()
    assert took < BOUND, took
    assert describe(src) == ref
    assert result.files_written >= len(leased)  # unproven: written from the snapshot


@pytest.mark.parametrize("op", ["capture", "restore"])
def test_a_lease_held_on_an_image_fails_its_operation_soon_naming_it(
        engine: Engine, tmp_path: Path, op: str) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    spec = StateSpec(kind="image", path=str(image))
    if op == "restore":
        engine.capture(make_meta(1), spec)
    holder = lease_holder("ignore", [image])
    try:
        t0 = time.monotonic()
        with pytest.raises(TransientEngineError, match=f"image {image} failed: .*lease"):
            if op == "capture":
                engine.capture(make_meta(1), spec)
            else:
                engine.restore(1, spec)
        took = time.monotonic() - t0
    finally:
        holder.close()
    assert took < BOUND, took

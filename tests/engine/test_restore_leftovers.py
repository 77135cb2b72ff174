"""Issue 9, item 3: a restore that swapped the new tree in has succeeded, whatever removing
the old tree runs into, and what an earlier attempt left never blocks the next one."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from workers.engine import Engine, tuning
from workers.engine.fs import removal

from .conftest import dir_state, make_meta
from .tenant import dir_swapper
from .treecmp import describe

DEEP = 5000


def _leftovers(state: Path) -> list[str]:
    return sorted(n for n in os.listdir(state.parent) if n.startswith(f".{state.name}.restore-"))


def _wait_no_leftovers(state: Path, timeout: float = 60.0) -> None:
    """The old tree goes at once, or soon, in the background (a live restore's always:
    a 5,000-deep one took 2-10 s on the shared 2-core machine)."""
    deadline = time.monotonic() + timeout
    while _leftovers(state) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _leftovers(state) == []


def _nest(root: Path, depth: int) -> None:
    """root/d/d/.../d, depth levels (far beyond PATH_MAX), built through directory fds."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"bottom")
    finally:
        os.close(fd)


def test_restore_succeeds_while_a_tenant_swaps_old_dirs_for_symlinks(
        engine: Engine, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("never removed")
    src = tmp_path / "srv"
    names = [f"d{i}" for i in range(40)]
    for n in names:
        (src / "w" / n).mkdir(parents=True)
        for j in range(20):
            (src / "w" / n / f"f{j}").write_text("x")
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    before_outside = describe(outside)
    for attempt in range(6):
        (src / "w" / "new").write_text("forces a rebuild")
        # its working directory is w/ of the tree that the restore swaps out and removes
        racer = dir_swapper(src / "w", outside, names)
        try:
            engine.restore(1, dir_state(src), live=True)
        finally:
            racer.close()
        # restored files are linked from the old tree until it is gone
        _wait_no_leftovers(src)
        assert describe(src) == ref, attempt
        assert describe(outside) == before_outside


def test_restore_removes_a_5000_deep_tree_added_after_the_snapshot(
        engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "keep").write_text("kept")
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    try:
        for _ in range(2):  # and again: nothing an earlier restore left blocks the next
            (src / "deep").mkdir()
            _nest(src / "deep", DEEP)
            engine.restore(1, dir_state(src), live=True)
            assert describe(src) == ref
            _wait_no_leftovers(src)
    finally:  # never leave a tree pytest's own (recursive) clean-up cannot remove
        subprocess.run(["rm", "-rf", str(src), *(str(tmp_path / n) for n in _leftovers(src))],
                       check=False)


def test_a_leftover_that_cannot_be_removed_never_blocks_the_next_restore(
        engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "f").write_text("v1")
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    # what an earlier attempt at this very restore left, holding an immutable file
    stuck = tmp_path / ".srv.restore-1"
    stuck.mkdir()
    (stuck / "pinned").write_text("immutable")
    if subprocess.run(["chattr", "+i", str(stuck / "pinned")], capture_output=True).returncode:
        (stuck / "pinned").unlink()  # no chattr here: a plain leftover then
    try:
        for _ in range(2):
            (src / "f").write_text("v2")
            engine.restore(1, dir_state(src), live=True)
            assert describe(src) == ref
            engine.restore(1, dir_state(src))
            assert describe(src) == ref
        # set aside under a name of its own, for the janitor
        [aside] = tmp_path.glob(".srv.restore-trash-*")
        assert (aside / "pinned").exists() or not (stuck / "pinned").exists()
    finally:
        for pinned in tmp_path.glob(".srv.restore-*/pinned"):
            subprocess.run(["chattr", "-i", str(pinned)], capture_output=True)


def no_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every restore a rebuild: a live one too (which patches when no process writes)."""
    monkeypatch.setattr(tuning, "PATCH_MIN", 0)
    monkeypatch.setattr(tuning, "PATCH_FRACTION", 1 << 40)


def test_a_live_restore_leaves_its_old_tree_to_the_janitor_and_returns(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    no_patch(monkeypatch)
    src = tmp_path / "srv"
    (src / "d").mkdir(parents=True)
    for i in range(50):
        (src / "d" / f"f{i}").write_text(f"file {i}")
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    (src / "extra").write_text("not in the snapshot")
    release = threading.Event()
    orig = removal._remove_by_path
    in_janitor: list[str] = []

    def held(parent_path: str, name: bytes) -> bool:
        # The janitor is the process's: an earlier test's tree it still retries (the
        # immutable leftover above: retries 1, 2, 5... s apart) came here too under load
        # and was counted as this one's. Only this test's trees are held and counted.
        if parent_path != str(tmp_path):
            return orig(parent_path, name)
        in_janitor.append(threading.current_thread().name)
        assert release.wait(30)
        return orig(parent_path, name)

    monkeypatch.setattr(removal, "_remove_by_path", held)
    engine.restore(1, dir_state(src), live=True)
    assert describe(src) == ref  # restored, while the old tree is still being removed
    [aside] = _leftovers(src)
    assert aside.startswith(".srv.restore-trash-")
    assert (tmp_path / aside / "extra").read_text() == "not in the snapshot"
    release.set()
    _wait_no_leftovers(src)
    assert in_janitor == ["janitor"]
    # a restore that is not live (nothing runs the server) removes it before returning:
    # the record of the restored inodes' ctimes must come after their old names are gone
    (src / "extra").write_text("again")
    for i in range(20):
        (src / "d" / f"f{i}").write_text("changed")  # enough to rebuild, not patch
    engine.restore(1, dir_state(src))
    assert describe(src) == ref and _leftovers(src) == []


def test_the_next_restore_frees_the_space_of_an_old_tree_the_janitor_still_holds(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    no_patch(monkeypatch)
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    release = threading.Event()
    orig = removal._remove_by_path

    def held(parent_path: str, name: bytes) -> bool:
        release.wait(30)
        return orig(parent_path, name)

    try:
        src = small / "srv"
        src.mkdir()
        (src / "data").write_bytes(os.urandom(3 << 20))
        engine.capture(make_meta(1), dir_state(src))
        a = describe(src)
        (src / "data").write_bytes(os.urandom(3 << 20))
        engine.capture(make_meta(2), dir_state(src))
        monkeypatch.setattr(removal, "_remove_by_path", held)
        engine.restore(1, dir_state(src), live=True)  # its old tree (3 MiB) left aside
        assert len(_leftovers(src)) == 1
        # 3 MiB current + 3 MiB old + 3 MiB staging would not fit in 8 MiB: the restore
        # removes the old tree first, though the janitor has it
        engine.restore(2, dir_state(src), live=True)
        engine.restore(1, dir_state(src), live=True)
        assert describe(src) == a
    finally:
        release.set()  # the janitor then finds the trees gone
        for _ in range(100):
            if subprocess.run(["umount", str(small)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)

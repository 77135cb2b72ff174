"""An (ino, ctime) pair names an inode of one filesystem only: a file on another device
with the captured (or recorded) ino and ctime is not the captured file. A tenant can make
one: a clone of the state's filesystem image, its bytes changed offline (no inode touched),
mounted where the state is. Neither a restore (reuse.py) nor the next capture may take
such a file for unchanged.

Each test makes small ext4 images on loop devices (root, and skipped where that cannot be
done); the original stays mounted while its clone is, so the two devices differ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from workers.engine import Engine

from .conftest import dir_state, make_meta

Mount = Callable[[Path, str], Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """mount(image, name): the ext4 image (made if missing) mounted at tmp_path/name."""
    mounted: list[Path] = []

    def mount_image(img: Path, name: str) -> Path:
        if not img.exists():
            with open(img, "wb") as f:
                f.truncate(32 << 20)
            if subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(img)],
                              capture_output=True).returncode:
                pytest.skip("cannot make an ext4 image here")
        point = tmp_path / name
        point.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-o", "loop", str(img), str(point)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a loop device here")
        mounted.append(point)
        return point

    try:
        yield mount_image
    finally:
        for point in reversed(mounted):  # the stacked one first
            subprocess.run(["umount", "-l", str(point)], check=False)


def _clone(point: Path, img: Path, clone: Path, data: bytes, other: bytes) -> None:
    """clone: a copy of the filesystem mounted at point (from its image img, frozen while
    copied), where the block holding `data` holds `other`: no inode of it changed."""
    if subprocess.run(["fsfreeze", "-f", str(point)], capture_output=True).returncode:
        pytest.skip("cannot freeze a filesystem here")
    try:
        shutil.copyfile(img, clone)
    finally:
        subprocess.run(["fsfreeze", "-u", str(point)], check=True)
    raw = clone.read_bytes()
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0
    with open(clone, "r+b") as f:
        f.seek(at)
        f.write(other)


@pytest.mark.parametrize("live", [False, True], ids=["stopped", "live"])
def test_a_restore_does_not_trust_the_captured_inode_on_another_device(
        engine: Engine, tmp_path: Path, mount: Mount, live: bool) -> None:
    data, other = os.urandom(4000), os.urandom(4000)
    a = mount(tmp_path / "a.img", "a")
    (a / "state").mkdir()
    (a / "state" / "f").write_bytes(data)
    engine.capture(make_meta(1), dir_state(a / "state"))
    _clone(a, tmp_path / "a.img", tmp_path / "b.img", data, other)
    b = mount(tmp_path / "b.img", "b")
    st_a, st_b = os.stat(a / "state" / "f"), os.stat(b / "state" / "f")
    assert (st_a.st_ino, st_a.st_ctime_ns) == (st_b.st_ino, st_b.st_ctime_ns)
    assert st_a.st_dev != st_b.st_dev
    assert (b / "state" / "f").read_bytes() == other

    engine.restore(1, dir_state(b / "state"), live=live)
    assert (b / "state" / "f").read_bytes() == data
    assert engine.last_bytes_read == len(data)  # proven different by reading it


def test_a_restore_does_not_trust_its_record_on_another_device(
        engine: Engine, tmp_path: Path, mount: Mount) -> None:
    """The previous restore's record (statecache.py) names inodes of the filesystem it
    wrote: another mounted at the state path since holds none of them."""
    data, other = os.urandom(4000), os.urandom(4000)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(data)
    engine.capture(make_meta(1), dir_state(src))
    point = mount(tmp_path / "b.img", "point")
    state = point / "state"
    engine.restore(1, dir_state(state))
    engine.restore(1, dir_state(state))
    assert engine.last_bytes_read == 0  # its record trusted: the same filesystem
    recorded = os.stat(state / "f")
    _clone(point, tmp_path / "b.img", tmp_path / "c.img", data, other)
    mount(tmp_path / "c.img", "point")  # over the first: the state path is another device's
    now = os.stat(state / "f")
    assert (now.st_ino, now.st_ctime_ns) == (recorded.st_ino, recorded.st_ctime_ns)
    assert now.st_dev != recorded.st_dev

    engine.restore(1, dir_state(state))
    assert (state / "f").read_bytes() == data


def test_a_capture_reads_a_file_whose_inode_is_another_devices(
        engine: Engine, tmp_path: Path, mount: Mount) -> None:
    """The parent's inodes were its filesystem's: a capture of a state moved onto another
    takes no file from it for being unchanged."""
    data, other = os.urandom(4000), os.urandom(4000)
    a = mount(tmp_path / "a.img", "a")
    (a / "state").mkdir()
    (a / "state" / "f").write_bytes(data)
    engine.capture(make_meta(1), dir_state(a / "state"))
    engine.capture(make_meta(2), dir_state(a / "state"))
    assert engine.last_bytes_read == 0  # unchanged since its parent
    _clone(a, tmp_path / "a.img", tmp_path / "b.img", data, other)
    b = mount(tmp_path / "b.img", "b")

    engine.capture(make_meta(3), dir_state(b / "state"))
    assert engine.last_bytes_read == len(other)
    out = tmp_path / "out"
    engine.restore(3, dir_state(out))
    assert (out / "f").read_bytes() == other

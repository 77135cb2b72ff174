"""A restore's trusted record (statecache.py) must not vouch for a file changed in the
clock tick its restore wrote it in: a change within one timestamp granule keeps the ctime
(here a filesystem of whole-second timestamps, ext4 with 128-byte inodes; on kernels before
6.13 any filesystem within one coarse tick), so a record of that ctime would have the next
restore keep the changed file as the snapshot's."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.engine import Engine

from .conftest import dir_state, make_meta


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    img, mnt = tmp_path / "fs.img", tmp_path / "coarse"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(img)], capture_output=True)
    if made.returncode or subprocess.run(["mount", "-o", "loop", str(img), str(mnt)],
                                         capture_output=True).returncode:
        pytest.skip("cannot make and mount an ext4 with 128-byte inodes here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_file_changed_in_the_granule_its_restore_wrote_it_is_rewritten_next_time(
        engine: Engine, coarse_fs: Path) -> None:
    src = coarse_fs / "src"
    src.mkdir()
    (src / "config.txt").write_bytes(b"snapshot\n")
    engine.capture(make_meta(1), dir_state(src))
    state, target = coarse_fs / "state", coarse_fs / "state" / "config.txt"
    for _attempt in range(3):
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        engine.restore(1, dir_state(state), live=True)
        returned = time.time_ns()
        before = os.stat(target)
        # the running server rewrites the file at once: same size, its mtime put back
        with open(target, "r+b") as f:
            f.write(b"tampered\n")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        if (os.stat(target).st_ctime_ns == before.st_ctime_ns  # within the granule
                or returned >= before.st_ctime_ns + 10**9):  # returned past it: cannot be
            break
        # else the change crossed into the next second by chance: again
    engine.restore(1, dir_state(state))
    assert target.read_bytes() == b"snapshot\n"

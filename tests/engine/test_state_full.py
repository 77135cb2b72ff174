"""Issue 9, item 4: a restore onto a full state filesystem fails at once with
`state_full`, naming the free and the needed space, and the old state stays intact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.engine import Engine, StateFull

from .conftest import dir_state, make_meta
from .treecmp import describe


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs to hold the server's state (needs root)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


@pytest.mark.parametrize("live", [False, True], ids=["stopped", "live"])
def test_restore_onto_a_full_state_filesystem_fails_with_state_full(
        engine: Engine, small_fs: Path, live: bool) -> None:
    src = small_fs / "srv"
    src.mkdir()
    (src / "config").write_text("v1\n")
    (src / "data.bin").write_bytes(os.urandom(10 << 20))
    engine.capture(make_meta(1), dir_state(src))
    (src / "data.bin").write_bytes(os.urandom(10 << 20))  # 10 MiB new + 10 MiB old > 16
    before = describe(src)
    started = time.monotonic()
    with pytest.raises(StateFull) as info:
        engine.restore(1, dir_state(src), live=live)
    assert time.monotonic() - started < 10
    assert info.value.code == "state_full"
    msg = str(info.value)
    free, need = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) bytes", msg)[:2])
    assert 0 <= free < 16 << 20 and need >= 10 << 20, msg
    assert describe(src) == before  # the old state, intact
    assert sorted(os.listdir(small_fs)) == ["srv"]  # and nothing left beside it

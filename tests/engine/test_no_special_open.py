"""Issue 9, item 4: no device node or fifo a tenant plants is ever opened for I/O: a file
is opened O_PATH | O_NOFOLLOW, its type checked on that descriptor, and only then that
same inode reopened for reading (through /proc/self/fd). The proof is a real process
blocked in open(fifo, O_WRONLY): any open of the fifo for reading would release it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from workers.engine import Engine, tuning

from .conftest import dir_state, make_meta
from .tenant import fifo_swapper, fifo_writer
from .treecmp import describe


@pytest.mark.parametrize("live", [False, True], ids=["stopped", "live"])
def test_restore_never_opens_a_fifo_planted_where_a_file_was(
        engine: Engine, tmp_path: Path, live: bool) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_text(f"file {i}")
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    st = os.stat(src / "f7")
    (src / "f7").unlink()
    os.mkfifo(src / "f7")
    os.utime(src / "f7", ns=(st.st_atime_ns, st.st_mtime_ns))
    writer = fifo_writer(src / "f7")  # blocked until someone opens the fifo to read
    try:
        engine.restore(1, dir_state(src), live=live)
        assert describe(src) == ref
        time.sleep(0.2)
        assert writer.proc.poll() is None, "the planted fifo was opened"
    finally:
        writer.close()


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "reader-processes"])
def test_capture_never_opens_a_fifo_swapped_in_for_a_file(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: bool) -> None:
    # reader processes open the files themselves, beneath the directory fd they are sent
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0 if processes else 1 << 40)
    src = tmp_path / "srv"
    src.mkdir()
    names = [f"f{i}" for i in range(8)]
    for n in names:
        (src / n).write_text(f"content of {n}")
        os.mkfifo(src / f"{n}.fifo")
    writers = [fifo_writer(src / f"{n}.fifo") for n in names]
    swapper = fifo_swapper(src, names)  # file <-> fifo at each name, as fast as it can
    try:
        for i in range(1, 21):
            engine.capture(make_meta(i), dir_state(src))
        time.sleep(0.2)
        assert [w.proc.poll() for w in writers] == [None] * len(writers), \
            "a fifo was opened for reading"
    finally:
        swapper.close()
        for w in writers:
            w.close()

"""Issue 9, item 4: a live restore (power driver `none`) never puts into the restored tree
an inode that a process of the running server still has open or mapped.

The rebuild used to hard-link unchanged files into the new tree, so a process that kept
one open for writing went on writing into the restored state after the swap."""

from __future__ import annotations

import os
from pathlib import Path

from workers.engine import Engine

from .conftest import dir_state, make_meta
from .tenant import fd_writer, mmap_writer
from .treecmp import describe


def test_a_process_writing_after_a_live_restore_never_changes_the_restored_tree(
        engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    (src / "db").mkdir(parents=True)
    (src / "db" / "log").write_bytes(os.urandom(64 << 10))  # held open for writing
    (src / "db" / "region").write_bytes(os.urandom(64 << 10))  # mapped shared, writable
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(10_000))
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    (src / "f3").write_text("changed: forces a restore")
    log, region = fd_writer(src / "db" / "log"), mmap_writer(src / "db" / "region")
    try:
        r = engine.restore(1, dir_state(src), live=True)
        assert describe(src) == ref
        # the running server goes on writing through what it had open before the swap
        assert log.send("0 written-after-the-restore") == "ok"
        assert region.send("0 stored-after-the-restore") == "ok"
    finally:
        log.close()
        region.close()
    assert describe(src) == ref
    assert r.files_written == 1  # the others were copied from the verified current files
    assert r.files_reused == 21

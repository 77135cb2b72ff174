"""Issue 9, item 4: an entry that vanishes while the capture looks at it is recorded as
gone, as one that vanished before the walk.

A real process creates and deletes files all the time; where the window is too narrow to
hit on demand, the test does the tenant's move at the exact step (a real unlink of a real
file between the walk's lstat and the next look), never by faking a result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from workers.engine import Engine
from workers.engine.fs import fsutil

from .conftest import dir_state, make_meta
from .tenant import Tenant

_CHURN = r"""
import os, sys
os.chdir(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    n = "c%d" % (i % 50)
    try:
        open(n, "w").close()
        os.symlink("c0", n + ".l")
        os.unlink(n)
        os.unlink(n + ".l")
    except OSError:
        pass
    i += 1
"""


def test_a_file_vanishing_before_its_xattrs_are_read_is_recorded_gone(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "stays").write_text("here")
    (src / "goes").write_text("soon gone")
    os.symlink("stays", src / "link-goes")
    real, real_open = fsutil.read_xattrs, fsutil.open_regular

    def tenant_deletes_first(target: int | bytes) -> list[tuple[str, bytes]]:
        if isinstance(target, bytes) and target.endswith(b"/link-goes"):
            os.unlink(target)  # the tenant's unlink, between the walk's lstat and this read
        return real(target)

    def tenant_deletes_before_open(name: bytes, dir_fd: int) -> int:
        if name == b"goes":  # a file's xattrs are read with its data, on the fd it reads
            os.unlink(name, dir_fd=dir_fd)
        return real_open(name, dir_fd)

    monkeypatch.setattr(fsutil, "read_xattrs", tenant_deletes_first)
    monkeypatch.setattr(fsutil, "open_regular", tenant_deletes_before_open)
    res = engine.capture(make_meta(1), dir_state(src))
    monkeypatch.undo()
    assert [w for w in res.warnings if w.startswith("goes: vanished")], res.warnings
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert sorted(os.listdir(out)) == ["stays"]


def test_a_symlink_vanishing_before_readlink_is_recorded_gone(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "stays").write_text("here")
    os.symlink("stays", src / "link")
    real_readlink = os.readlink

    def tenant_deletes_first(path: Any, *, dir_fd: int | None = None) -> Any:
        if path == b"link" and dir_fd is not None:
            os.unlink(path, dir_fd=dir_fd)
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "readlink", tenant_deletes_first)
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.undo()
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert sorted(os.listdir(out)) == ["stays"]


def test_captures_survive_files_created_and_deleted_all_the_time(
        engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "stable").write_text("always there")
    churn = Tenant(_CHURN, src)
    assert churn.line() == "ready"
    try:
        for i in range(1, 16):
            engine.capture(make_meta(i), dir_state(src))
    finally:
        churn.close()


def test_warnings_name_a_path_that_is_not_utf8_in_json_storable_text(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """A snapshot's warnings are stored as JSON: a name that is not UTF-8 is shown with
    backslash escapes (os.fsdecode's surrogates could not be encoded, so the capture's
    completion failed, and every later capture of the server with it)."""
    src = tmp_path / "srv"
    src.mkdir()
    (src / "stays").write_text("here")
    with open(os.path.join(os.fsencode(src), b"goes\xff\n"), "w") as f:
        f.write("soon gone")
    real_open = fsutil.open_regular

    def tenant_deletes_before_open(name: bytes, dir_fd: int) -> int:
        if name == b"goes\xff\n":
            os.unlink(name, dir_fd=dir_fd)
        return real_open(name, dir_fd)

    monkeypatch.setattr(fsutil, "open_regular", tenant_deletes_before_open)
    res = engine.capture(make_meta(1), dir_state(src))
    monkeypatch.undo()
    [warning] = [w for w in res.warnings if "vanished" in w]
    assert warning.startswith("goes\\xff\n: vanished"), warning
    assert msgspec.json.decode(msgspec.json.encode(res.warnings)) == res.warnings

"""A restore into a new state: no state path yet, or an empty directory (a server made to
be restored into, as `POST /snapshots/{id}/restore/` with another server's id does). Both
start the writer processes before the manifest is read and leave every file to them, and
the special entries are made on a thread of the parent while they write."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine, tuning
from workers.engine.repository.repository import Repository
from workers.engine.restore import metadata, treewriter, writerpool

from .conftest import dir_state, make_meta
from .treecmp import assert_same


def _source(src: Path) -> None:
    for d in range(6):
        sub = src / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(20):
            (sub / f"f{i}").write_bytes(os.urandom(100 + 37 * i))
        os.symlink(f"f{d}", sub / "link")
        os.mkfifo(sub / "fifo")
    os.link(src / "d0" / "f1", src / "hard")
    os.chmod(src / "d2", 0o750)


def _spied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the restore did, in order: 'pool' (writers started), 'manifest' (read),
    'fresh' (build_fresh) or 'build' (the rebuild that looks for files to reuse)."""
    seen: list[str] = []
    start, fresh, build = writerpool.start_pool, treewriter.TreeWriter.build_fresh, \
        treewriter.TreeWriter.build
    read = Repository.get_manifest_raw

    def start_pool(*a: Any) -> Any:
        seen.append("pool")
        return start(*a)

    def build_fresh(self: Any, *a: Any) -> None:
        seen.append("fresh")
        fresh(self, *a)

    def build_any(self: Any, *a: Any) -> None:
        seen.append("build")
        build(self, *a)

    def get_manifest_raw(self: Any, *a: Any) -> bytes:
        seen.append("manifest")
        return read(self, *a)

    monkeypatch.setattr(Repository, "get_manifest_raw", get_manifest_raw)
    monkeypatch.setattr(writerpool, "start_pool", start_pool)
    monkeypatch.setattr(treewriter.TreeWriter, "build_fresh", build_fresh)
    monkeypatch.setattr(treewriter.TreeWriter, "build", build_any)
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    return seen


@pytest.mark.parametrize("target", ["missing", "empty"])
def test_a_restore_into_a_new_or_empty_state_starts_the_writers_first_and_writes_it_all(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, target: str) -> None:
    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    if target == "empty":
        dst.mkdir()
    seen = _spied(monkeypatch)
    got = engine.restore(1, dir_state(dst), live=True)
    # before: into an empty directory, the writers started after the manifest was read
    # and the rebuild looked for files to reuse in it (none)
    assert seen == ["pool", "manifest", "fresh"]
    assert got.files_written == 6 * 20 + 0 and got.files_reused == 0
    assert_same(src, dst)
    assert [n for n in os.listdir(tmp_path) if ".restore-" in n] == []


def test_a_state_with_anything_in_it_is_not_taken_for_a_new_one(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink("d0", dst / "d0")  # one dangling name is enough: the tree is looked at
    seen = _spied(monkeypatch)
    engine.restore(1, dir_state(dst), live=True)
    assert seen == ["manifest", "pool", "build"]
    assert_same(src, dst)


def test_a_special_entry_that_cannot_be_made_fails_the_restore_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """The symlinks and fifos are made on a thread while the writers write: its error is
    the restore's, the staging tree goes, the empty state stays as it was."""
    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    make_special = metadata.make_special
    made: list[bytes] = []

    def fails_at_the_third(dfd: int, name: bytes, e: Any) -> None:
        if len(made) == 2:
            raise OSError(errno.EPERM, "Operation not permitted", name)
        made.append(name)
        make_special(dfd, name, e)

    monkeypatch.setattr(treewriter, "make_special", fails_at_the_third)
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    with pytest.raises(OSError) as err:
        engine.restore(1, dir_state(dst), live=True)
    assert err.value.errno == errno.EPERM
    assert os.listdir(dst) == []
    assert [n for n in os.listdir(tmp_path) if ".restore-" in n] == []

"""A tenant that is root in its container reaches the restore's staging directory.

The staging tree is built beside the state (`.<base>.restore-<id>`, mode 0700), and when
the state lies in a tree the tenant controls (a data directory inside a container's root
filesystem) a tenant with CAP_DAC_OVERRIDE (root in a container without a user namespace)
can enter it and swap a directory the restore made for a symlink to a host directory. The
restore then fails (its staging removed, the state as it was), and nothing is ever
created, linked or changed through that symlink. Each test makes the swap at the moment
the restore next uses the directory (a tenant racing in a loop hits it sooner or later).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine, tuning
from workers.engine.restore import metadata, treewriter

from .conftest import dir_state, make_meta


def _tenant_swaps(st_fd: int, name: bytes, host: Path) -> None:
    """Staging's `name` moved aside and a symlink to a host directory put in its place."""
    os.rename(name, name + b".moved", src_dir_fd=st_fd, dst_dir_fd=st_fd)
    os.symlink(os.fsencode(host), name, dir_fd=st_fd)


def _fails(restore: Callable[[], object]) -> bool:
    try:
        restore()
    except OSError:
        return True
    return False


def _snapshot(engine: Engine, src: Path) -> None:
    (src / "a" / "sub").mkdir(parents=True)
    (src / "a" / "cron").write_text("* * * * * root /tmp/pwn\n")
    (src / "a" / "sub" / "x").write_text("x")
    os.link(src / "a" / "cron", src / "linked")  # a hard link whose target lies in a/
    os.chmod(src / "a" / "sub", 0o777)
    engine.capture(make_meta(1), dir_state(src))


def _host(tmp_path: Path) -> tuple[Path, Any]:
    host = tmp_path / "host-etc"
    (host / "sub").mkdir(parents=True)
    (host / "shadow").write_text("root:x")
    os.chmod(host / "sub", 0o755)

    def unchanged() -> None:
        assert sorted(os.listdir(host)) == ["shadow", "sub"]
        assert stat.S_IMODE(os.stat(host / "sub").st_mode) == 0o755
        assert os.listdir(host / "sub") == []
        assert os.stat(host / "shadow").st_nlink == 1
    return host, unchanged


def test_the_writer_processes_never_create_a_file_through_a_swapped_staging_dir(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    _snapshot(engine, tmp_path / "src")
    host, unchanged = _host(tmp_path)
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)  # a new state: build_fresh
    write_shares = treewriter.TreeWriter._write_shares

    def swapped_first(self: treewriter.TreeWriter, st_fd: int, *a: Any) -> None:
        _tenant_swaps(st_fd, b"a", host)
        write_shares(self, st_fd, *a)

    monkeypatch.setattr(treewriter.TreeWriter, "_write_shares", swapped_first)
    failed = _fails(lambda: engine.restore(1, dir_state(tmp_path / "new")))
    unchanged()  # before: a/cron created in the host's directory, sub/ made 0777
    assert failed
    assert not (tmp_path / "new").exists()
    assert [n for n in os.listdir(tmp_path) if ".restore-" in n] == []


def test_a_rebuild_never_links_nor_chmods_through_a_swapped_staging_dir(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    os.makedirs(src)
    os.mkfifo(src / "b-fifo")  # created between a/'s entries and the hard link `linked`
    _snapshot(engine, src)
    host, _unchanged = _host(tmp_path)
    (host / "cron").write_text("host's")  # what a link through the symlink would take
    (src / "extra").write_text("one change: a rebuild (below), not a no-op")
    before = sorted(os.listdir(src))
    make_special, finish_dirs = metadata.make_special, metadata.finish_dirs

    def special_then_swap(dfd: int, name: bytes, e: Any) -> None:
        make_special(dfd, name, e)
        _tenant_swaps(dfd, b"a", host)  # before the link to a/cron is made

    def swapped_first(st_fd: int, dirs: Any, **k: Any) -> None:
        _tenant_swaps(st_fd, b"a", host)  # before the directories' metadata
        finish_dirs(st_fd, dirs, **k)

    for name, swapping in (("make_special", special_then_swap), ("finish_dirs", swapped_first)):
        with monkeypatch.context() as m:
            m.setattr(treewriter, name, swapping)
            m.setattr(tuning, "PATCH_MIN", 0)  # a rebuild (in process: live)
            m.setattr(tuning, "PATCH_FRACTION", 1 << 40)
            failed = _fails(lambda: engine.restore(1, dir_state(src), live=True))
        # before: the host's cron hard-linked into the state as `linked`; sub/ made 0777
        assert (host / "cron").read_text() == "host's" and os.stat(host / "cron").st_nlink == 1
        assert sorted(os.listdir(host)) == ["cron", "shadow", "sub"], name
        assert stat.S_IMODE(os.stat(host / "sub").st_mode) == 0o755, name
        assert failed, name
        assert sorted(os.listdir(src)) == before, name  # the state as it was
        assert [n for n in os.listdir(tmp_path) if ".restore-" in n] == [], name
